//! Integration tests of the `Router` façade through the public Rust API.

use std::sync::Arc;
use std::thread;

use llmlb_core::hashing::{chain_hash_bytes, chain_hash_tokens, HASH_SEED};
use llmlb_core::{
    BreakerState, Clock, CoreError, GpuMetrics, NodeSpec, Outcome, PolicyKind, Prompt, Reason,
    RouteDecision, RouteRequest, Router, RouterConfig,
};

fn router(nodes: &[&str], config: RouterConfig) -> Router {
    let router = Router::with_clock(config, Clock::manual()).unwrap();
    for id in nodes {
        assert!(router
            .upsert_node(NodeSpec::new(id, &format!("{id}:8000")))
            .unwrap());
    }
    router
}

fn with_policy(name: &str) -> RouterConfig {
    RouterConfig {
        policy: name.parse().unwrap(),
        ..RouterConfig::default()
    }
}

fn route_with_id(router: &Router, prompt: Prompt<'_>, id: &str) -> RouteDecision {
    router
        .route(&RouteRequest {
            prompt,
            request_id: Some(id.to_owned()),
            expected_output_tokens: None,
            model: None,
            adapter: None,
            exclude: &[],
            policy: None,
        })
        .unwrap()
}

fn in_flight(router: &Router) -> Vec<(String, u32)> {
    router
        .node_statuses()
        .into_iter()
        .map(|s| (s.spec.id.to_string(), s.in_flight))
        .collect()
}

/// Values computed by Python's `xxhash` package (`tests/model.py`), so both sides agree.
#[test]
fn hashes_match_python_xxhash() {
    assert_eq!(HASH_SEED, u64::from_be_bytes(*b"\0\0\0llmlb"));
    assert_eq!(
        chain_hash_bytes(b"aaaabbbbcccc", 4, HASH_SEED),
        [0xbba2a2a11430dd31, 0xbf484457b3218b36, 0x6044b1e27e90cf29]
    );
    assert_eq!(
        chain_hash_tokens(&[1, 258, 3, 4], 2, HASH_SEED),
        [0x4b0ba9e75d6693cb, 0x9e21111d67a7b9f6]
    );
}

#[test]
fn route_counts_and_complete_releases_once() {
    let router = router(&["a", "b"], with_policy("least_request"));
    let first = route_with_id(&router, Prompt::Text("hello"), "r1");
    let second = route_with_id(&router, Prompt::Empty, "r2");
    assert_ne!(
        first.node_id, second.node_id,
        "least_request spreads the load"
    );
    assert_eq!(router.in_flight_total(), 2);
    router.set_time_s(1.5).unwrap();
    let done = router
        .complete("r1", Outcome::Ok, Some(0.1), 5, 7)
        .unwrap()
        .unwrap();
    assert_eq!(
        (done.node_id.clone(), done.outcome),
        (first.node_id, Outcome::Ok)
    );
    assert_eq!(done.duration_s, 1.5);
    assert!(router
        .complete("r1", Outcome::Ok, None, 0, 0)
        .unwrap()
        .is_none());
    assert!(router
        .complete("nope", Outcome::Ok, None, 0, 0)
        .unwrap()
        .is_none());
    assert_eq!(router.in_flight_total(), 1);
    let window = router.window_summary(&done.node_id).unwrap();
    assert_eq!((window.completed, window.ok, window.tokens_out), (1, 1, 7));
    let err = router.route(&RouteRequest {
        request_id: Some("r2".into()),
        ..RouteRequest::text("dup")
    });
    assert!(matches!(err, Err(CoreError::DuplicateRequest(id)) if id == "r2"));
}

#[test]
fn requests_never_completed_expire() {
    let config = RouterConfig {
        request_ttl_s: 10.0,
        ..RouterConfig::default()
    };
    let router = router(&["a"], config);
    route_with_id(&router, Prompt::Empty, "old");
    router.set_time_s(4.0).unwrap();
    route_with_id(&router, Prompt::Empty, "young");
    router.set_time_s(11.0).unwrap();
    let expired = router.expire_stale();
    assert_eq!(expired.len(), 1);
    assert_eq!(
        (expired[0].request_id.as_str(), expired[0].outcome),
        ("old", Outcome::Expired)
    );
    assert_eq!(router.in_flight_request_ids("a").unwrap(), ["young"]);
    router.set_time_s(30.0).unwrap();
    route_with_id(&router, Prompt::Empty, "new"); // route sweeps by itself
    assert_eq!(router.in_flight_request_ids("a").unwrap(), ["new"]);
    assert_eq!(router.node_statuses()[0].consecutive_failures, 2);
}

#[test]
fn breaker_open_is_skipped_and_half_open_lets_one_probe_through() {
    let router = router(&["a", "b", "c"], with_policy("round_robin"));
    router.set_breaker_state("b", BreakerState::Open).unwrap();
    let ids: Vec<(String, Reason)> = (0..3)
        .map(|i| {
            let d = route_with_id(&router, Prompt::Empty, &format!("r{i}"));
            (d.node_id.to_string(), d.reason)
        })
        .collect();
    assert_eq!(
        ids,
        [
            ("a".to_owned(), Reason::RoundRobin),
            ("c".to_owned(), Reason::BreakerOpenSkipped),
            ("c".to_owned(), Reason::RoundRobin),
        ]
    );

    router.set_breaker_state("a", BreakerState::Open).unwrap();
    router.set_breaker_state("c", BreakerState::Open).unwrap();
    let previous = router
        .set_breaker_state("b", BreakerState::HalfOpen)
        .unwrap();
    assert_eq!(previous, BreakerState::Open);
    let probe = route_with_id(&router, Prompt::Empty, "probe");
    assert_eq!(&*probe.node_id, "b");
    let refused = router.route(&RouteRequest::text("second"));
    assert!(
        matches!(refused, Err(CoreError::NoAvailableNode(m)) if m.contains("half_open_probe_in_use"))
    );
    let done = router
        .complete("probe", Outcome::Error, None, 0, 0)
        .unwrap()
        .unwrap();
    assert!(done.was_probe);
}

#[test]
fn half_open_admits_as_many_probes_as_set() {
    let router = router(&["a"], with_policy("round_robin"));
    router
        .set_breaker_state_with_probes("a", BreakerState::HalfOpen, 3)
        .unwrap();
    let probes: Vec<bool> = (0..3)
        .map(|i| {
            route_with_id(&router, Prompt::Empty, &format!("p{i}"));
            let done = router.complete(&format!("p{i}"), Outcome::Ok, None, 0, 0);
            done.unwrap().unwrap().was_probe
        })
        .collect();
    assert_eq!(probes, [true, true, true]);
    assert!(router.route(&RouteRequest::text("fourth")).is_err());
    // A new half-open period counts its probes afresh.
    router
        .set_breaker_state_with_probes("a", BreakerState::HalfOpen, 2)
        .unwrap();
    route_with_id(&router, Prompt::Empty, "q0");
    route_with_id(&router, Prompt::Empty, "q1");
    assert!(router.route(&RouteRequest::text("q2")).is_err());
}

#[test]
fn prefix_is_matched_and_forgotten_with_its_node() {
    let config = RouterConfig {
        char_block_size: 4,
        ..with_policy("prefix_aware")
    };
    let router = router(&["a", "b"], config);
    let first = route_with_id(&router, Prompt::Text("aaaabbbbcc"), "r1");
    assert_eq!(
        (first.matched_blocks, first.reason),
        (0, Reason::FallbackLeastRequest)
    );
    let hit = route_with_id(&router, Prompt::Text("aaaabbbbdddd"), "r2");
    assert_eq!((hit.matched_blocks, hit.reason), (2, Reason::PrefixHit));
    assert_eq!(hit.node_id, first.node_id);
    assert_eq!(router.index_stats().entries, 3);

    let holder = first.node_id.to_string();
    let mut on_holder = router.remove_node(&holder).unwrap();
    on_holder.sort();
    assert_eq!(on_holder, ["r1", "r2"]);
    assert_eq!(router.index_stats().entries, 0);
    let after = route_with_id(&router, Prompt::Text("aaaabbbb"), "r3");
    assert_eq!(after.matched_blocks, 0);
    assert!(matches!(
        router.remove_node(&holder),
        Err(CoreError::UnknownNode(_))
    ));
}

fn kv_report(usage: f64, waiting: f64) -> GpuMetrics {
    GpuMetrics {
        kv_cache_usage: Some(usage),
        num_requests_waiting: Some(waiting),
        ..GpuMetrics::default()
    }
}

#[test]
fn a_full_kv_cache_alone_skips_nothing() {
    let router = router(&["a", "b"], with_policy("gpu_aware"));
    router.update_metrics("a", kv_report(0.99, 0.0)).unwrap();
    router.update_metrics("a", kv_report(0.99, 0.0)).unwrap();
    let d = route_with_id(&router, Prompt::Empty, "r");
    assert!(d.candidates().iter().all(|c| c.skipped.is_none()));
}

#[test]
fn nodes_that_cannot_admit_are_skipped_unless_all_are() {
    let router = router(&["a", "b"], with_policy("gpu_aware"));
    // Full, and its waiting queue grew since the report before.
    router.update_metrics("a", kv_report(0.99, 1.0)).unwrap();
    router.update_metrics("a", kv_report(0.99, 4.0)).unwrap();
    for i in 0..3 {
        let d = route_with_id(&router, Prompt::Empty, &format!("r{i}"));
        assert_eq!(&*d.node_id, "b");
    }
    router.update_metrics("b", kv_report(0.99, 1.0)).unwrap();
    router.update_metrics("b", kv_report(0.99, 2.0)).unwrap();
    let d = route_with_id(&router, Prompt::Empty, "both");
    assert_eq!(d.reason, Reason::AllSaturated);
    // Past the metrics TTL the reports are unknown, not trusted.
    router.set_time_s(6.0).unwrap();
    let d = route_with_id(&router, Prompt::Empty, "stale");
    assert_eq!(d.reason, Reason::GpuAware);
    assert!(d.candidates().iter().all(|c| c.skipped.is_none()));
}

#[test]
fn without_a_kv_figure_full_gpu_memory_skips() {
    let router = router(&["a", "b"], with_policy("gpu_aware"));
    let full = GpuMetrics {
        gpu_memory_used_bytes: Some(79e9),
        gpu_memory_total_bytes: Some(80e9),
        ..GpuMetrics::default()
    };
    router.update_metrics("a", full).unwrap();
    let d = route_with_id(&router, Prompt::Empty, "r");
    assert_eq!(&*d.node_id, "b");
}

#[test]
fn bad_metrics_are_refused() {
    let router = router(&["a"], RouterConfig::default());
    let nan = GpuMetrics {
        sm_utilization: Some(f64::NAN),
        ..GpuMetrics::default()
    };
    assert!(
        matches!(router.update_metrics("a", nan), Err(CoreError::InvalidInput(m)) if m.contains("sm_utilization"))
    );
    assert!(matches!(
        router.update_metrics("zz", GpuMetrics::default()),
        Err(CoreError::UnknownNode(_))
    ));
    let empty = Router::new(RouterConfig::default()).unwrap();
    assert!(matches!(
        empty.route(&RouteRequest::text("x")),
        Err(CoreError::NoAvailableNode(_))
    ));
}

/// Regression: a zero load weight times an overflowed engine load made a NaN score,
/// and NaN won the argmin whenever it came first.
#[test]
fn a_nan_score_never_wins() {
    let mut config = RouterConfig::default();
    let llmlb = "llmlb".parse().unwrap();
    config.policies.set(llmlb, "load", 0.0).unwrap();
    let router = router(&["a", "b"], config);
    let absurd = GpuMetrics {
        num_requests_running: Some(f64::MAX),
        num_requests_waiting: Some(f64::MAX),
        ..GpuMetrics::default()
    };
    router.update_metrics("a", absurd).unwrap();
    for policy in PolicyKind::all() {
        let d = router
            .route(&RouteRequest {
                policy: Some(policy),
                ..RouteRequest::text("hello")
            })
            .unwrap();
        if !["round_robin", "random"].contains(&policy.as_str()) {
            assert_eq!(&*d.node_id, "b", "{policy}");
        }
    }
}

#[test]
fn token_prompts_share_prefixes() {
    let config = RouterConfig {
        token_block_size: 2,
        ..with_policy("llmlb")
    };
    let router = router(&["a", "b", "c"], config);
    let tokens: Vec<u32> = (0..64).collect();
    let first = route_with_id(&router, Prompt::Tokens(&tokens), "r1");
    router.set_time_s(1.0).unwrap();
    router.complete("r1", Outcome::Ok, None, 0, 0).unwrap();
    let second = route_with_id(&router, Prompt::Tokens(&tokens[..40]), "r2");
    assert_eq!(
        (second.matched_blocks, second.reason),
        (20, Reason::PrefixHit)
    );
    assert_eq!(second.node_id, first.node_id);
}

#[test]
fn threads_routing_and_completing_keep_exact_counts() {
    const THREADS: usize = 4;
    const ROUTES: usize = 2000;
    let router = Arc::new(router(&["a", "b", "c", "d"], RouterConfig::default()));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let router = Arc::clone(&router);
            thread::spawn(move || {
                let mut open = Vec::new();
                for i in 0..ROUTES {
                    let prompt = format!("shared system prompt {} / {}", i % 7, i);
                    let id = format!("t{t}-{i}");
                    let d = route_with_id(&router, Prompt::Text(&prompt), &id);
                    open.push((id, d.node_id.to_string()));
                    if i % 3 != 0 {
                        let (id, node) = open.swap_remove((i * 7919) % open.len());
                        let done = router
                            .complete(&id, Outcome::Ok, None, 0, 0)
                            .unwrap()
                            .unwrap();
                        assert_eq!(&*done.node_id, node);
                    }
                    if i % 50 == 0 {
                        let metrics = GpuMetrics {
                            sm_utilization: Some((i % 10) as f64 / 10.0),
                            ..GpuMetrics::default()
                        };
                        router
                            .update_metrics(["a", "b", "c", "d"][i % 4], metrics)
                            .unwrap();
                    }
                }
                open
            })
        })
        .collect();
    let open: Vec<(String, String)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let expected: Vec<(String, u32)> = ["a", "b", "c", "d"]
        .iter()
        .map(|id| {
            (
                id.to_string(),
                open.iter().filter(|(_, n)| n == id).count() as u32,
            )
        })
        .collect();
    assert_eq!(in_flight(&router), expected);
    assert_eq!(router.in_flight_total(), open.len());
    let routed: u64 = router.node_statuses().iter().map(|s| s.routed_total).sum();
    assert_eq!(routed, (THREADS * ROUTES) as u64);
}

/// A node removed while requests are being routed to it must not leave prefix entries
/// that a later node reusing its slot would inherit (a `route` that chose the old node
/// inserts after `remove_node` retired the slot: the index drops that insert because
/// the slot's owner changed).
#[test]
fn a_new_node_never_inherits_prefixes_of_a_removed_one() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let router = Arc::new(router(
        &["steady"],
        RouterConfig {
            char_block_size: 4,
            ..with_policy("round_robin")
        },
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let routers: Vec<_> = (0..2)
        .map(|t| {
            let (router, stop) = (Arc::clone(&router), Arc::clone(&stop));
            thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let prompt = format!("{t:04}{i:08}");
                    let request = RouteRequest {
                        model: Some("m"),
                        ..RouteRequest::text(&prompt)
                    };
                    let d = router.route(&request).unwrap();
                    router
                        .complete(&d.request_id, Outcome::Ok, None, 0, 0)
                        .unwrap();
                    i += 1;
                }
            })
        })
        .collect();
    let mut inherited = 0;
    for i in 0..150 {
        let mut serving = NodeSpec::new(&format!("old{i}"), "");
        serving.models = vec!["m".into()];
        router.upsert_node(serving).unwrap();
        thread::sleep(std::time::Duration::from_micros(200));
        router.remove_node(&format!("old{i}")).unwrap();
        let mut other = NodeSpec::new(&format!("new{i}"), "");
        other.models = vec!["other".into()];
        router.upsert_node(other).unwrap();
        thread::sleep(std::time::Duration::from_micros(200));
        let status = router.node_statuses();
        let fresh = status
            .iter()
            .find(|s| *s.spec.id == format!("new{i}"))
            .unwrap();
        inherited += fresh.prefix_blocks;
        router.remove_node(&format!("new{i}")).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in routers {
        r.join().unwrap();
    }
    assert_eq!(
        inherited, 0,
        "blocks credited to nodes that never served them"
    );
}

#[test]
fn excluded_nodes_are_skipped() {
    let router = router(&["a", "b"], with_policy("least_request"));
    let request = RouteRequest {
        exclude: &["a"],
        ..RouteRequest::text("hello")
    };
    for _ in 0..3 {
        let d = router.route(&request).unwrap();
        assert_eq!(&*d.node_id, "b");
        let skipped: Vec<_> = d.candidates().iter().map(|c| c.skipped).collect();
        assert_eq!(skipped, vec![Some("excluded"), None]);
    }
    let everyone = RouteRequest {
        exclude: &["a", "b"],
        ..RouteRequest::text("hello")
    };
    assert!(matches!(
        router.route(&everyone),
        Err(CoreError::NoAvailableNode(_))
    ));
}

#[test]
fn precomputed_block_hashes_route_like_the_token_ids_they_hash() {
    let config = RouterConfig {
        token_block_size: 2,
        ..with_policy("prefix_aware")
    };
    let router = router(&["a", "b", "c"], config);
    let first: Vec<u32> = (0..9).collect();
    let by_tokens = route_with_id(&router, Prompt::Tokens(&first), "t1");
    let hashes = chain_hash_tokens(&first[..8], 2, HASH_SEED);
    let by_hashes = route_with_id(
        &router,
        Prompt::Hashes {
            hashes: &hashes,
            prompt_tokens: 9,
        },
        "h1",
    );
    assert_eq!(by_hashes.node_id, by_tokens.node_id);
    assert_eq!((by_hashes.matched_blocks, by_hashes.prompt_tokens), (4, 9));

    let too_short = router.route(&RouteRequest {
        prompt: Prompt::Hashes {
            hashes: &hashes,
            prompt_tokens: 7,
        },
        request_id: Some("bad".into()),
        expected_output_tokens: None,
        model: None,
        adapter: None,
        exclude: &[],
        policy: None,
    });
    assert!(matches!(too_short, Err(CoreError::InvalidInput(_))));
    assert_eq!(
        router.in_flight_total(),
        2,
        "a refused request holds nothing"
    );
}

#[test]
fn generated_request_ids_are_unique_and_not_guessable_from_earlier_ones() {
    let ids_of = |router: &Router| -> Vec<String> {
        (0..50)
            .map(|_| {
                let decision = router.route(&RouteRequest::text("hello")).unwrap();
                router
                    .complete(&decision.request_id, Outcome::Ok, None, 1, 1)
                    .unwrap();
                decision.request_id
            })
            .collect()
    };
    let one_node = || {
        let router = Router::new(RouterConfig::default()).unwrap();
        router.upsert_node(NodeSpec::new("a", "http://a")).unwrap();
        router
    };
    let (first, second) = (one_node(), one_node());
    let (ids, others) = (ids_of(&first), ids_of(&second));
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len());
    // The same serial numbers on two routers share nothing past the serial: the rest
    // comes from per-router keys, so seeing ids does not tell the next one.
    for (id, other) in ids.iter().zip(&others) {
        let (serial, secret) = id.rsplit_once('-').unwrap();
        let (other_serial, other_secret) = other.rsplit_once('-').unwrap();
        assert_eq!(serial, other_serial);
        assert_eq!(secret.len(), 32);
        assert_ne!(secret, other_secret);
    }
}
