//! Core-only routing latency and thread scaling (no Python in the loop), and the cost of
//! long prompts against a full index (what hashing takes of it).
//! `cargo bench -p llmlb-core --bench route` (`-- long` for the long-prompt groups only)

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use llmlb_core::hashing::{chain_hash_bytes, chain_hash_tokens, HASH_SEED};
use llmlb_core::{NodeSpec, Outcome, Prompt, RouteRequest, Router, RouterConfig};

const BLOCK: usize = 64;

/// Deterministic pseudo-random text (xorshift) so runs are repeatable.
fn text(seed: &mut u64, blocks: usize) -> String {
    (0..blocks * BLOCK)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (b'a' + (*seed % 26) as u8) as char
        })
        .collect()
}

/// A router with `nodes` nodes and ~100k prefix entries, plus query prompts.
fn setup(nodes: usize) -> (Router, Vec<String>) {
    let config = RouterConfig {
        prefix_cache_size: 200_000,
        ..RouterConfig::default()
    };
    let router = Router::new(config).unwrap();
    for i in 0..nodes {
        router
            .upsert_node(NodeSpec::new(&format!("node-{i}"), "http://127.0.0.1"))
            .unwrap();
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15;
    let system = text(&mut seed, 2);
    let prefilled: Vec<String> = (0..10_000)
        .map(|_| format!("{system}{}", text(&mut seed, 10)))
        .collect();
    for prompt in &prefilled {
        let d = router.route(&RouteRequest::text(prompt)).unwrap();
        router
            .complete(&d.request_id, Outcome::Ok, None, 0, 0)
            .unwrap();
    }
    let queries = (0..2_000)
        .map(|i| {
            format!(
                "{}{}",
                prefilled[(i * 7919) % prefilled.len()],
                text(&mut seed, 2)
            )
        })
        .collect();
    (router, queries)
}

fn route_and_complete(router: &Router, prompt: &str) {
    route_prompt_and_complete(router, Prompt::Text(prompt));
}

fn route_prompt_and_complete(router: &Router, prompt: Prompt<'_>) {
    let mut request = RouteRequest::text("");
    request.prompt = prompt;
    let d = router.route(&request).unwrap();
    router
        .complete(&d.request_id, Outcome::Ok, None, 0, 0)
        .unwrap();
    black_box(d);
}

fn bench_latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_and_complete");
    for nodes in [8, 64, 512] {
        let (router, queries) = setup(nodes);
        let mut i = 0;
        group.bench_with_input(BenchmarkId::from_parameter(nodes), &nodes, |b, _| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                route_and_complete(&router, &queries[i]);
            })
        });
    }
    group.finish();
}

/// Operations per second summed over `threads` threads running `op` for 1.5 s.
fn rate(threads: usize, op: impl Fn(usize, u64) + Sync) -> f64 {
    let started = Instant::now();
    let total: u64 = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let op = &op;
                scope.spawn(move || {
                    let mut done = 0u64;
                    let deadline = Instant::now() + Duration::from_millis(1500);
                    while Instant::now() < deadline {
                        op(t, done);
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    total as f64 / started.elapsed().as_secs_f64()
}

/// Thread scaling of route+complete, next to the scaling of a share-nothing job (hashing
/// a private buffer) measured the same way: on a shared or busy machine the second is
/// the ceiling the first can reach. Printed, since criterion measures one thread.
fn bench_threads(_c: &mut Criterion) {
    let (router, queries) = setup(64);
    let buffers: Vec<Vec<u8>> = (0..4).map(|t| vec![t as u8; 4096]).collect();
    let (mut route_one, mut ideal_one) = (0.0, 0.0);
    for threads in [1, 2, 4] {
        let routed = rate(threads, |t, i| {
            route_and_complete(&router, &queries[(t * 997 + i as usize) % queries.len()])
        });
        let ideal = rate(threads, |t, i| {
            black_box(xxhash_rust::xxh3::xxh3_64_with_seed(&buffers[t], i));
        });
        if threads == 1 {
            (route_one, ideal_one) = (routed, ideal);
        }
        println!(
            "threads/{threads}: {routed:.0} route+complete/s (x{:.2}); share-nothing job x{:.2} \
             (64 nodes, 100k entries)",
            routed / route_one,
            ideal / ideal_one
        );
    }
}

/// 64 nodes and an index filled to its 1M-block capacity by random chains of 32 to 4096
/// blocks, so new prompts also pay for eviction.
fn full_index() -> Router {
    let router = Router::new(RouterConfig::default()).unwrap();
    for i in 0..64 {
        router
            .upsert_node(NodeSpec::new(&format!("node-{i}"), "http://127.0.0.1"))
            .unwrap();
    }
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut entries = 0;
    while entries < 990_000 {
        let blocks = 32 << (next() % 8);
        let hashes: Vec<u64> = (0..blocks).map(|_| next()).collect();
        let prompt_tokens = blocks as u32 * 16;
        route_prompt_and_complete(
            &router,
            Prompt::Hashes {
                hashes: &hashes,
                prompt_tokens,
            },
        );
        entries += blocks;
    }
    router
}

fn bench_long_prompts(c: &mut Criterion) {
    let router = full_index();
    let mut group = c.benchmark_group("long");
    group.sample_size(30);
    for tokens in [512usize, 32_768, 131_072] {
        let mut seed = tokens as u64 | 1;
        let text = text(&mut seed, tokens / 16);
        let mut ids: Vec<u32> = text.bytes().map(u32::from).take(tokens).collect();
        group.bench_function(BenchmarkId::new("hash_text", tokens), |b| {
            b.iter(|| chain_hash_bytes(black_box(text.as_bytes()), 64, HASH_SEED))
        });
        group.bench_function(BenchmarkId::new("hash_tokens", tokens), |b| {
            b.iter(|| chain_hash_tokens(black_box(&ids), 16, HASH_SEED))
        });
        route_and_complete(&router, &text);
        group.bench_function(BenchmarkId::new("route_text_repeated", tokens), |b| {
            b.iter(|| route_and_complete(&router, &text))
        });
        let mut fresh = 0u32;
        group.bench_function(BenchmarkId::new("route_tokens_new", tokens), |b| {
            b.iter(|| {
                fresh += 1;
                ids[0] = fresh; // every chain hash new
                route_prompt_and_complete(&router, Prompt::Tokens(&ids));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_latency, bench_threads, bench_long_prompts);
criterion_main!(benches);
