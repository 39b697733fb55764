//! Property tests of prefix credit under engine KV events: after any interleaving of
//! routes, stores, removals, clears and guess expiry on two nodes, a node is never
//! credited with a block its engine reported removed (and not stored again since).

use std::collections::HashSet;

use llmlb_core::hashing::HASH_SEED;
use llmlb_core::{
    Clock, KvEventsState, NodeSpec, Outcome, Prompt, RouteRequest, Router, RouterConfig,
    StoredBlocks,
};
use proptest::prelude::*;

const BLOCK: usize = 16;
const WORDS: u8 = 3;
const MAX_DEPTH: usize = 4;
const NODES: [&str; 2] = ["a", "b"];
const GUESS_TTL_S: f64 = 5.0;

/// A prompt as its blocks: block `i` is word `path[i]` (16 tokens).
type Path = Vec<u8>;

fn tokens_of(path: &[u8]) -> Vec<u32> {
    let block = |&w: &u8| (0..BLOCK as u32).map(move |j| u32::from(w) * 100 + j);
    path.iter().flat_map(block).collect()
}

/// The engine's own hash of the block ending `path` (any injective function will do).
fn engine_hash(path: &[u8]) -> u64 {
    path.iter().fold(0xcbf2_9ce4_8422_2325, |h, &w| {
        (h ^ (u64::from(w) + 1)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn universe() -> Vec<Path> {
    let mut all: Vec<Path> = vec![vec![]];
    let mut out = Vec::new();
    for _ in 0..MAX_DEPTH {
        all = (all.iter())
            .flat_map(|p| (0..WORDS).map(move |w| [p.as_slice(), &[w]].concat()))
            .collect();
        out.extend(all.iter().cloned());
    }
    out
}

#[derive(Debug, Clone)]
enum Op {
    Route {
        node: usize,
        path: Path,
    },
    Store {
        node: usize,
        path: Path,
        depth: usize,
    },
    Remove {
        node: usize,
        path: Path,
        at: usize,
    },
    Clear {
        node: usize,
    },
    ExpireGuesses,
}

fn path() -> impl Strategy<Value = Path> {
    prop::collection::vec(0..WORDS, 1..=MAX_DEPTH)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2usize, path()).prop_map(|(node, path)| Op::Route { node, path }),
        4 => (0..2usize, path(), 1..=MAX_DEPTH).prop_map(|(node, path, depth)| {
            let depth = depth.min(path.len());
            Op::Store { node, path, depth }
        }),
        3 => (0..2usize, path(), 0..MAX_DEPTH).prop_map(|(node, path, at)| {
            let at = at.min(path.len() - 1);
            Op::Remove { node, path, at }
        }),
        1 => (0..2usize).prop_map(|node| Op::Clear { node }),
        1 => Just(Op::ExpireGuesses),
    ]
}

/// What each engine holds and what the router was told to guess, by block path.
#[derive(Default)]
struct Model {
    engine: [HashSet<Path>; 2],
    guesses: [HashSet<Path>; 2],
}

impl Model {
    fn depth_in(set: &HashSet<Path>, path: &[u8]) -> u32 {
        (1..=path.len())
            .take_while(|&d| set.contains(&path[..d]))
            .count() as u32
    }

    fn drop_below(set: &mut HashSet<Path>, block: &[u8]) {
        set.retain(|p| !p.starts_with(block));
    }
}

struct Harness {
    router: Router,
    model: Model,
    /// Removals only of blocks nothing held hangs below (how engines evict).
    leaves_only: bool,
    now_s: f64,
}

impl Harness {
    fn new(leaves_only: bool) -> Self {
        let config = RouterConfig {
            prefix_guess_ttl_s: GUESS_TTL_S,
            ..RouterConfig::default()
        };
        let router = Router::with_clock(config, Clock::manual()).unwrap();
        for id in NODES {
            router
                .upsert_node(NodeSpec::new(id, &format!("{id}:8000")))
                .unwrap();
            router.set_kv_events_state(id, KvEventsState::Live).unwrap();
        }
        Harness {
            router,
            model: Model::default(),
            leaves_only,
            now_s: 0.0,
        }
    }

    fn request<'a>(tokens: &'a [u32], exclude: &'a [&'a str]) -> RouteRequest<'a> {
        RouteRequest {
            prompt: Prompt::Tokens(tokens),
            exclude,
            ..RouteRequest::text("")
        }
    }

    /// (confirmed, guessed) blocks of `path` credited to `node`.
    fn credit(&self, node: usize, path: &[u8]) -> (u32, u32) {
        let tokens = tokens_of(path);
        let credits = self.router.prefix_credit(&Self::request(&tokens, &[]));
        let credit = (credits.unwrap().into_iter())
            .find(|c| &*c.node_id == NODES[node])
            .unwrap();
        (credit.blocks, credit.guessed_blocks)
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Route { node, path } => self.route(*node, path),
            Op::Store { node, path, depth } => self.store(*node, path, *depth),
            Op::Remove { node, path, at } => self.remove(*node, &path[..=*at]),
            Op::Clear { node } => {
                self.router.kv_cache_cleared(NODES[*node], None).unwrap();
                self.model.engine[*node].clear();
                self.model.guesses[*node].clear();
            }
            Op::ExpireGuesses => {
                // Guesses live one to two TTLs; each route may rotate a generation.
                for _ in 0..2 {
                    self.now_s += GUESS_TTL_S * 1.01;
                    self.router.set_time_s(self.now_s).unwrap();
                    let empty = RouteRequest {
                        prompt: Prompt::Empty,
                        ..RouteRequest::text("")
                    };
                    let decision = self.router.route(&empty).unwrap();
                    self.router
                        .complete(&decision.request_id, Outcome::Ok, None, 0, 0)
                        .unwrap();
                }
                self.model.guesses.iter_mut().for_each(HashSet::clear);
            }
        }
    }

    fn route(&mut self, node: usize, path: &[u8]) {
        let (confirmed, guessed) = self.credit(node, path);
        let tokens = tokens_of(path);
        let other = [NODES[1 - node]];
        let decision = self.router.route(&Self::request(&tokens, &other)).unwrap();
        assert_eq!(&*decision.node_id, NODES[node]);
        assert_eq!(decision.matched_blocks, confirmed.max(guessed));
        if (confirmed as usize) < path.len() {
            let guesses = &mut self.model.guesses[node];
            guesses.extend((1..=path.len()).map(|d| path[..d].to_vec()));
        }
    }

    fn store(&mut self, node: usize, path: &[u8], depth: usize) {
        let engine = &mut self.model.engine[node];
        let held = Model::depth_in(engine, path) as usize;
        if held >= depth {
            return;
        }
        let hashes: Vec<u64> = (held + 1..=depth)
            .map(|d| engine_hash(&path[..d]))
            .collect();
        let tokens = tokens_of(&path[held..depth]);
        let parent = (held > 0).then(|| engine_hash(&path[..held]));
        let event = StoredBlocks {
            block_hashes: &hashes,
            parent,
            token_ids: Some(&tokens),
            block_size: BLOCK,
            seed: HASH_SEED,
        };
        let applied = (self.router)
            .kv_blocks_stored(NODES[node], 0, &event, None)
            .unwrap();
        // Skipped only where the router dropped blocks below a removed one that the
        // engine kept (evicting a parent before its children, which engines avoid).
        if self.leaves_only {
            assert_eq!(applied.skipped_events, 0);
        }
        engine.extend((held + 1..=depth).map(|d| path[..d].to_vec()));
    }

    fn remove(&mut self, node: usize, block: &[u8]) {
        let engine = &mut self.model.engine[node];
        let has_children = engine
            .iter()
            .any(|p| p.len() > block.len() && p.starts_with(block));
        if !engine.contains(block) || (self.leaves_only && has_children) {
            return;
        }
        let hash = [engine_hash(block)];
        (self.router)
            .kv_blocks_removed(NODES[node], 0, &hash, None)
            .unwrap();
        engine.remove(block);
        Model::drop_below(&mut self.model.guesses[node], block);
    }

    fn check(&self, universe: &[Path]) {
        for (node, name) in NODES.iter().enumerate() {
            for path in universe {
                let (confirmed, guessed) = self.credit(node, path);
                let held = Model::depth_in(&self.model.engine[node], path);
                assert!(
                    confirmed <= held,
                    "node {name} credited {confirmed} blocks of {path:?}; engine holds {held}"
                );
                if self.leaves_only {
                    assert_eq!(confirmed, held, "node {name} path {path:?}");
                    let guesses = Model::depth_in(&self.model.guesses[node], path);
                    assert_eq!(guessed, guesses, "guesses: node {name} {path:?}");
                }
            }
        }
    }
}

fn run(ops: &[Op], leaves_only: bool) {
    let universe = universe();
    let mut harness = Harness::new(leaves_only);
    for op in ops {
        harness.apply(op);
        harness.check(&universe);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Engines evict tail first: the credit equals what the engine holds, exactly, and
    /// guesses are what was routed and not removed or expired since.
    #[test]
    fn credit_is_exact_when_engines_evict_leaves(ops in prop::collection::vec(op(), 1..40)) {
        run(&ops, true);
    }

    /// Any removal order: never credited beyond what the engine holds.
    #[test]
    fn credit_never_covers_a_removed_block(ops in prop::collection::vec(op(), 1..40)) {
        run(&ops, false);
    }
}

/// A broken stream: what the engine confirmed turns into guesses that expire; events
/// arriving afterwards are confirmed again.
#[test]
fn unconfirmed_nodes_keep_their_credit_as_expiring_guesses() {
    let mut harness = Harness::new(true);
    let path: Path = vec![0, 1, 2];
    harness.store(0, &path, 3);
    assert_eq!(harness.credit(0, &path), (3, 0));
    let router = &harness.router;
    let previous = router.set_kv_events_state("a", KvEventsState::Unconfirmed);
    assert_eq!(previous.unwrap(), KvEventsState::Live);
    assert_eq!(harness.credit(0, &path), (0, 3));
    assert_eq!(router.node_statuses()[0].kv_engine_blocks, 0);
    harness.apply(&Op::ExpireGuesses);
    assert_eq!(harness.credit(0, &path), (0, 0));
    // The engine map restarted empty; new stores are confirmed again.
    harness.model.engine[0].clear();
    harness.store(0, &[2], 1);
    assert_eq!(harness.credit(0, &[2]), (1, 0));
}

/// Blocks an engine offloaded (another medium) count for `offloaded_prefix_weight` of
/// those in GPU memory, past what GPU memory holds.
#[test]
fn offloaded_blocks_are_credited_with_their_weight() {
    let harness = Harness::new(true);
    let router = &harness.router;
    let path: Path = vec![0, 1, 2, 0];
    let tokens = tokens_of(&path);
    let hashes: Vec<u64> = (1..=4).map(|d| engine_hash(&path[..d])).collect();
    let stored = |hashes: &[u64], parent: Option<u64>, tokens: &[u32], medium| {
        let event = StoredBlocks {
            block_hashes: hashes,
            parent,
            token_ids: Some(tokens),
            block_size: BLOCK,
            seed: HASH_SEED,
        };
        router.kv_blocks_stored("a", 0, &event, medium).unwrap()
    };
    assert_eq!(
        stored(&hashes, None, &tokens, Some("CPU")).offloaded_blocks,
        4
    );
    stored(&hashes[..1], None, &tokens[..BLOCK], None);
    let credit = harness.credit(0, &path);
    assert_eq!(credit, (1, 0));
    let request = Harness::request(&tokens, &["b"]);
    let decision = router.route(&request).unwrap();
    // One block in GPU memory, three more offloaded at half weight: 1 + 1.5, floored.
    assert_eq!(decision.matched_blocks, 2);
    // The engine dropped the second offloaded block: the two below it go with it.
    router
        .kv_blocks_removed("a", 0, &hashes[1..2], Some("cpu"))
        .unwrap();
    let credits = router
        .prefix_credit(&Harness::request(&tokens, &[]))
        .unwrap();
    let a = credits.iter().find(|c| &*c.node_id == "a").unwrap();
    assert_eq!((a.blocks, a.offloaded_blocks), (1, 1));
}

/// vLLM's offloading connector reports blocks moved to CPU memory by their GPU hashes,
/// with no tokens and no parent: they are the GPU tier's blocks, and stay credited
/// (weighted) after GPU memory evicts them.
#[test]
fn offloaded_blocks_without_tokens_are_the_gpu_blocks_of_their_hashes() {
    let harness = Harness::new(true);
    let router = &harness.router;
    let path: Path = vec![2, 1, 0, 1];
    let tokens = tokens_of(&path);
    let hashes: Vec<u64> = (1..=4).map(|d| engine_hash(&path[..d])).collect();
    let event = |hashes: &'static [u64], tokens: Option<&'static [u32]>| StoredBlocks {
        block_hashes: hashes,
        parent: None,
        token_ids: tokens,
        block_size: if tokens.is_some_and(|t| t.is_empty()) {
            0
        } else {
            BLOCK
        },
        seed: HASH_SEED,
    };
    let hashes: &'static [u64] = hashes.leak();
    let tokens: &'static [u32] = tokens.leak();
    router
        .kv_blocks_stored("a", 0, &event(hashes, Some(tokens)), None)
        .unwrap();
    let moved = router
        .kv_blocks_stored("a", 0, &event(hashes, Some(&[])), Some("CPU"))
        .unwrap();
    assert_eq!((moved.offloaded_blocks, moved.skipped_events), (4, 0));
    router.kv_blocks_removed("a", 0, hashes, None).unwrap();
    let credit = |router: &Router| {
        let credits = router
            .prefix_credit(&Harness::request(tokens, &[]))
            .unwrap();
        let a = credits.into_iter().find(|c| &*c.node_id == "a").unwrap();
        (a.blocks, a.offloaded_blocks)
    };
    assert_eq!(credit(router), (0, 4));
    let decision = router.route(&Harness::request(tokens, &["b"])).unwrap();
    assert_eq!(
        decision.matched_blocks, 2,
        "four offloaded blocks at half weight"
    );
    // The CPU tier evicts the third block: its chain is found in that tier alone now.
    router
        .kv_blocks_removed("a", 0, &hashes[2..3], Some("CPU"))
        .unwrap();
    assert_eq!(credit(router), (0, 2));
}

/// An engine map that outgrows the index (its removals were lost) starts over; what it
/// confirmed turns into guesses.
#[test]
fn an_engine_map_past_the_index_capacity_starts_over() {
    let config = RouterConfig {
        prefix_cache_size: 3,
        ..RouterConfig::default()
    };
    let router = Router::with_clock(config, Clock::manual()).unwrap();
    router.upsert_node(NodeSpec::new("a", "a:8000")).unwrap();
    router
        .set_kv_events_state("a", KvEventsState::Live)
        .unwrap();
    let path: Path = vec![0, 1, 2, 0];
    let tokens = tokens_of(&path);
    let hashes: Vec<u64> = (1..=4).map(|d| engine_hash(&path[..d])).collect();
    let event = StoredBlocks {
        block_hashes: &hashes,
        parent: None,
        token_ids: Some(&tokens),
        block_size: BLOCK,
        seed: HASH_SEED,
    };
    let applied = router.kv_blocks_stored("a", 0, &event, None).unwrap();
    assert!(applied.overflowed);
    assert_eq!(router.node_statuses()[0].kv_engine_blocks, 0);
    let credits = router
        .prefix_credit(&Harness::request(&tokens, &[]))
        .unwrap();
    assert_eq!(credits[0].blocks, 0);
    assert!(credits[0].guessed_blocks > 0);
}
