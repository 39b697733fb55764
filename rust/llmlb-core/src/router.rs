//! The router: one object tying the node table, prefix index, policies and request
//! lifecycle together. Every method takes `&self` and is safe to call from many threads.

mod kv;
mod replicas;

pub use kv::BatchOutcome;
pub use replicas::RemoteRoute;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::clock::{secs_to_ns, Clock};
use crate::config::RouterConfig;
use crate::error::{check_non_negative, CoreError, CoreResult};
use crate::guesses::GuessIndex;
use crate::hashing::{chain_hash_bytes, chain_hash_tokens, chain_seed};
use crate::kv_events::{KvEventsState, NodeCache, Tier};
use crate::lifecycle::{Completion, InFlight, InFlightRegistry};
use crate::node_table::{
    BreakerState, GpuMetrics, NodeEntry, NodeSpec, NodeStatus, NodeTable, Snapshot, Upserted,
};
use crate::outcome::Outcome;
use crate::policy::{Choice, Policies, PolicyKind};
use crate::prefix_index::{IndexStats, PrefixIndex, PrefixMatch};
use crate::scoring::{
    build_candidates, cached_tokens, skip_excluded, skip_other_models, Candidate, CandidateRules,
    RequestFacts, Skip,
};
use crate::window::WindowSummary;

pub use crate::policy::Reason;

/// How often (router-clock seconds) `route` sweeps for requests never completed.
const EXPIRY_SWEEP_INTERVAL_S: f64 = 1.0;

#[derive(Debug, Clone, Copy)]
pub enum Prompt<'a> {
    Text(&'a str),
    Tokens(&'a [u32]),
    /// A prompt already cut into token blocks and hashed by the caller with
    /// [`crate::hashing::extend_token_chain`] and `token_block_size`-token blocks (a
    /// gateway that tokenizes once, a simulator); `prompt_tokens` is its full length.
    Hashes {
        hashes: &'a [u64],
        prompt_tokens: u32,
    },
    /// No prompt given: routing by load alone.
    Empty,
}

#[derive(Debug, Clone)]
pub struct RouteRequest<'a> {
    pub prompt: Prompt<'a>,
    /// Caller's id; one is generated when absent.
    pub request_id: Option<String>,
    pub expected_output_tokens: Option<u32>,
    /// Only nodes serving this model are candidates (nodes that list no model serve any).
    /// With `adapter`, it also scopes the prefix chain ([`chain_seed`]).
    pub model: Option<&'a str>,
    /// The LoRA adapter the request names, when a gateway knows it apart from `model`.
    pub adapter: Option<&'a str>,
    /// Nodes not to use for this request (e.g. those a retry already failed on).
    pub exclude: &'a [&'a str],
    /// Overrides the configured policy for this request (canary).
    pub policy: Option<PolicyKind>,
}

impl<'a> RouteRequest<'a> {
    pub fn text(prompt: &'a str) -> Self {
        RouteRequest {
            prompt: Prompt::Text(prompt),
            request_id: None,
            expected_output_tokens: None,
            model: None,
            adapter: None,
            exclude: &[],
            policy: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CandidateScore {
    pub node_id: Arc<str>,
    /// Lower is better; `None` when the node was skipped or the policy does not score.
    pub score: Option<f64>,
    pub in_flight: u32,
    pub load: f64,
    pub matched_blocks: u32,
    pub skipped: Option<&'static str>,
}

/// One candidate's figures as routing left them; node ids are resolved only when a
/// caller asks (cloning every node's id on every route would bounce refcounts across
/// cores).
#[derive(Debug, Clone, Copy)]
struct ScoredCandidate {
    position: u32,
    score: Option<f64>,
    in_flight: u32,
    load: f64,
    matched_blocks: u32,
    skipped: Option<&'static str>,
}

#[derive(Debug, Clone)]
pub struct RouteDecision {
    pub request_id: String,
    pub node_id: Arc<str>,
    pub address: String,
    /// Uncached prompt tokens counted in the node's prefill backlog.
    pub prefill_tokens: u64,
    /// The prompt's block chain, and whether it hashes text (char blocks): what another
    /// replica needs to count this decision ([`RemoteRoute`]).
    pub hashes: Vec<u64>,
    pub text_blocks: bool,
    pub policy: PolicyKind,
    pub reason: Reason,
    pub matched_blocks: u32,
    pub matched_tokens: u32,
    pub prompt_tokens: u32,
    scored: Vec<ScoredCandidate>,
    snapshot: Arc<Snapshot>,
}

impl RouteDecision {
    /// Every node's score (lower is better) or the reason it was skipped.
    pub fn candidates(&self) -> Vec<CandidateScore> {
        self.scored
            .iter()
            .map(|c| CandidateScore {
                node_id: self.snapshot.nodes[c.position as usize].spec.id.clone(),
                score: c.score,
                in_flight: c.in_flight,
                load: c.load,
                matched_blocks: c.matched_blocks,
                skipped: c.skipped,
            })
            .collect()
    }
}

#[derive(Debug)]
/// Request ids nobody can guess (a foreign `Complete` must not release a live request):
/// the serial number, unique, followed by 128 bits of SipHash keyed from the OS's
/// randomness, unpredictable without the keys.
#[derive(Default)]
struct RequestIds {
    keys: [std::collections::hash_map::RandomState; 2],
}

impl RequestIds {
    fn id_of(&self, serial: u64) -> String {
        use std::hash::BuildHasher;
        let [a, b] = &self.keys;
        format!(
            "req-{serial:x}-{:016x}{:016x}",
            a.hash_one(serial),
            b.hash_one(serial)
        )
    }
}

pub struct Router {
    config: ArcSwap<RouterConfig>,
    table: NodeTable,
    index: PrefixIndex,
    /// Prompts just routed to nodes whose credit comes from KV events (see `kv`).
    guesses: GuessIndex,
    /// What nodes' engines hold below GPU memory (KV events of another medium).
    offloaded: PrefixIndex,
    /// What each such node's engine holds, by slot and tier, with the node's incarnation.
    kv_caches: Mutex<std::collections::HashMap<(u16, Tier), (u64, NodeCache)>>,
    in_flight: InFlightRegistry,
    /// Requests other replicas routed, keyed `replica` + [`replicas::SEPARATOR`] + id.
    remote_in_flight: InFlightRegistry,
    policies: Policies,
    clock: Clock,
    next_request_id: AtomicU64,
    request_ids: RequestIds,
    next_sweep_ns: AtomicU64,
    /// Requests expired by `route`'s periodic sweep, kept for the next `expire_stale`.
    expired: Mutex<Vec<Completion>>,
}

/// Most expired completions kept for `expire_stale` when nobody collects them.
const MAX_UNCOLLECTED_EXPIRED: usize = 100_000;

/// A prompt cut into blocks, with what the policies need to know about it.
struct HashedPrompt {
    hashes: Vec<u64>,
    facts: RequestFacts,
}

impl Router {
    pub fn new(config: RouterConfig) -> CoreResult<Self> {
        Router::with_clock(config, Clock::Monotonic)
    }

    pub fn with_clock(config: RouterConfig, clock: Clock) -> CoreResult<Self> {
        config.validate()?;
        Ok(Router {
            index: PrefixIndex::new(config.prefix_cache_size),
            guesses: GuessIndex::new(guess_capacity(&config)),
            offloaded: PrefixIndex::new(config.prefix_cache_size),
            kv_caches: Mutex::default(),
            policies: Policies::new(config.seed),
            config: ArcSwap::from_pointee(config),
            table: NodeTable::default(),
            in_flight: InFlightRegistry::default(),
            remote_in_flight: InFlightRegistry::default(),
            clock,
            next_request_id: AtomicU64::new(1),
            request_ids: RequestIds::default(),
            next_sweep_ns: AtomicU64::new(0),
            expired: Mutex::new(Vec::new()),
        })
    }

    pub fn config(&self) -> Arc<RouterConfig> {
        self.config.load_full()
    }

    /// Applies a new config without touching nodes, in-flight requests or the index
    /// (beyond trimming it to a smaller capacity). An invalid config changes nothing.
    pub fn reconfigure(&self, config: RouterConfig) -> CoreResult<()> {
        config.validate()?;
        self.index.set_capacity(config.prefix_cache_size);
        self.offloaded.set_capacity(config.prefix_cache_size);
        for node in &self.table.load().nodes {
            node.live
                .window
                .lock()
                .set_window(config.load_balance_window_s);
            self.index
                .set_node_budget(node.slot, node_budget(node, &config));
        }
        self.config.store(Arc::new(config));
        Ok(())
    }

    pub fn now_s(&self) -> f64 {
        self.clock.now_ns() as f64 / 1e9
    }

    /// Moves a manual clock forward (never back). Errors on the monotonic clock.
    pub fn set_time_s(&self, seconds: f64) -> CoreResult<()> {
        check_non_negative("time", seconds)?;
        if self.clock.set_ns(secs_to_ns(seconds)) {
            Ok(())
        } else {
            Err(CoreError::InvalidInput(
                "this router runs on the monotonic clock; create it with a manual clock to set time".into(),
            ))
        }
    }

    /// Returns true when the node is new, false when an existing node was updated.
    pub fn upsert_node(&self, spec: NodeSpec) -> CoreResult<bool> {
        let config = self.config.load();
        let id = spec.id.clone();
        let upserted = self.table.upsert(spec, config.load_balance_window_s)?;
        let node = self.table.get(&id)?;
        let budget = node_budget(&node, &config);
        match upserted {
            Upserted::Added { slot, incarnation } => {
                self.index.bind_node(slot, incarnation, budget);
                self.offloaded.bind_node(slot, incarnation, None);
                self.guesses.bind_node(slot, incarnation);
            }
            Upserted::Updated { slot, .. } => self.index.set_node_budget(slot, budget),
        }
        Ok(matches!(upserted, Upserted::Added { .. }))
    }

    /// Removes a node and its prefix-index entries. Requests still in flight on it stay
    /// counted until completed or expired; their ids are returned so the caller can
    /// migrate them.
    pub fn remove_node(&self, node_id: &str) -> CoreResult<Vec<String>> {
        let removed = self.table.remove(node_id)?;
        self.index.retire_node(removed.slot);
        self.offloaded.retire_node(removed.slot);
        self.guesses.retire_node(removed.slot);
        (self.kv_caches.lock()).retain(|(slot, _), _| *slot != removed.slot);
        Ok(self.in_flight.ids_on_node(node_id))
    }

    pub fn update_metrics(&self, node_id: &str, metrics: GpuMetrics) -> CoreResult<()> {
        metrics.validate()?;
        let node = self.table.get(node_id)?;
        let reports_capacity = metrics.kv_capacity_tokens.is_some();
        let config = self.config.load();
        node.live.store_metrics(
            metrics,
            self.clock.now_ns(),
            config.memory_saturation_threshold,
        );
        if reports_capacity {
            self.index
                .set_node_budget(node.slot, node_budget(&node, &config));
        }
        Ok(())
    }

    /// The node's engine reported its prefix cache cleared (restart, reset).
    pub fn clear_node_cache(&self, node_id: &str) -> CoreResult<()> {
        let node = self.table.get(node_id)?;
        self.index.forget_node(node.slot);
        self.offloaded.forget_node(node.slot);
        self.guesses.forget_node(node.slot);
        Ok(())
    }

    /// Sets a node's breaker state; returns the previous one. Half-open lets one probe
    /// request through ([`Router::set_breaker_state_with_probes`] for more).
    pub fn set_breaker_state(
        &self,
        node_id: &str,
        state: BreakerState,
    ) -> CoreResult<BreakerState> {
        self.set_breaker_state_with_probes(node_id, state, 1)
    }

    /// As [`Router::set_breaker_state`]; half-open lets `probes` requests through at once
    /// (a recovering node then serves more than one client while it proves itself).
    pub fn set_breaker_state_with_probes(
        &self,
        node_id: &str,
        state: BreakerState,
        probes: u32,
    ) -> CoreResult<BreakerState> {
        let node = self.table.get(node_id)?;
        let previous = node.live.breaker();
        node.live.set_breaker(state, probes);
        Ok(previous)
    }

    pub fn route(&self, request: &RouteRequest<'_>) -> CoreResult<RouteDecision> {
        let config = self.config.load();
        let now = self.clock.now_ns();
        self.maybe_expire(now, &config);
        if let Some(id) = &request.request_id {
            validate_request_id(id)?;
            if self.in_flight.contains(id) {
                return Err(CoreError::DuplicateRequest(id.clone()));
            }
        }
        validate_prompt(&request.prompt, &config)?;
        let prompt = hash_prompt(request, &config);
        let snapshot = self.table.load();
        if snapshot.nodes.is_empty() {
            return Err(CoreError::NoAvailableNode("no nodes are registered".into()));
        }
        self.guesses
            .maybe_rotate(now, secs_to_ns(config.prefix_guess_ttl_s));
        let confirmed = if prompt.hashes.is_empty() {
            PrefixMatch::default()
        } else {
            self.index.lookup(&prompt.hashes, now)
        };
        let merged = self.merged_credit(&confirmed, &prompt.hashes, &config, now);
        let matched = merged.as_ref().unwrap_or(&confirmed);
        let rules = CandidateRules {
            metrics_ttl_ns: secs_to_ns(config.metrics_ttl_s),
            memory_saturation_threshold: config.memory_saturation_threshold,
        };
        let mut candidates = build_candidates(&snapshot.nodes, matched, &prompt.facts, rules, now);
        if let Some(model) = request.model {
            if !skip_other_models(&mut candidates, model) {
                return Err(CoreError::UnknownModel(model.to_owned()));
            }
        }
        skip_excluded(&mut candidates, request.exclude);
        let policy = request.policy.unwrap_or(config.policy);
        let choice = self.choose(policy, &mut candidates, &prompt.facts, &config)?;
        let chosen: &Arc<NodeEntry> = candidates[choice.index].node;
        let matched_blocks = candidates[choice.index].matched_blocks;
        let prefill_tokens = (prompt.facts.prompt_tokens
            - cached_tokens(&candidates[choice.index], &prompt.facts, 1.0))
        .round() as u64;
        let probe = chosen.live.breaker() == BreakerState::HalfOpen;

        let request_id = request.request_id.clone().unwrap_or_else(|| {
            let serial = self.next_request_id.fetch_add(1, Ordering::Relaxed);
            self.request_ids.id_of(serial)
        });
        let matched_tokens =
            (matched_blocks as f64 * prompt.facts.tokens_per_block).min(prompt.facts.prompt_tokens);
        let record = InFlight {
            node: chosen.clone(),
            started_ns: now,
            policy,
            prompt_tokens: prompt.facts.prompt_tokens as u32,
            prefill_tokens,
            probe,
        };
        // Counted before it is findable, so a completion racing in cannot be lost.
        chosen.live.acquire(prefill_tokens, now);
        if let Err(duplicate) = self.in_flight.insert(request_id.clone(), record) {
            chosen.live.release();
            chosen.live.release_prefill(prefill_tokens, now);
            if probe {
                chosen.live.give_back_probe();
            }
            return Err(duplicate);
        }
        // The index's own prediction, not the trusted share: trust is measured on it.
        chosen
            .live
            .count_prompt(prompt.facts.prompt_tokens as u64, matched_tokens as u64);
        self.index.record_served(matched_blocks);
        let text_blocks = matches!(request.prompt, Prompt::Text(_));
        self.credit_routed(
            chosen,
            &prompt.hashes,
            confirmed.depth_of(chosen.slot),
            text_blocks,
            now,
        );
        Ok(RouteDecision {
            request_id,
            node_id: chosen.spec.id.clone(),
            address: chosen.spec.address.clone(),
            prefill_tokens,
            hashes: prompt.hashes,
            text_blocks,
            policy,
            reason: choice.reason,
            matched_blocks,
            matched_tokens: matched_tokens as u32,
            prompt_tokens: prompt.facts.prompt_tokens as u32,
            scored: candidates
                .iter()
                .enumerate()
                .map(|(position, c)| scored_candidate(position, c))
                .collect(),
            snapshot: arc_swap::Guard::into_inner(snapshot),
        })
    }

    /// The confirmed credit with guesses and lower tiers added; None when neither holds
    /// anything (no node publishes events), so routing without events copies nothing.
    fn merged_credit(
        &self,
        confirmed: &PrefixMatch,
        hashes: &[u64],
        config: &RouterConfig,
        now: u64,
    ) -> Option<PrefixMatch> {
        if hashes.is_empty() || (self.guesses.is_empty() && self.offloaded.is_empty()) {
            return None;
        }
        let mut matched = confirmed.clone();
        if !self.guesses.is_empty() {
            matched.merge_max(&self.guesses.lookup(hashes, now));
        }
        if !self.offloaded.is_empty() {
            let lower = self.offloaded.lookup(hashes, now);
            matched.merge_weighted(&lower, config.offloaded_prefix_weight);
        }
        Some(matched)
    }

    /// Credits the chosen node with the prompt: a guess that expires, when its engine
    /// publishes events that can confirm it (token chains, not text); else an entry of
    /// the main index, as with no events.
    fn credit_routed(
        &self,
        node: &NodeEntry,
        hashes: &[u64],
        confirmed: u32,
        text: bool,
        now: u64,
    ) {
        if confirmed as usize >= hashes.len() {
            return;
        }
        if !text && node.live.kv_events() != KvEventsState::Off {
            self.guesses
                .insert(hashes, node.slot, node.incarnation, now);
        } else {
            let held = confirmed as usize;
            (self.index).insert_from(hashes, held, node.slot, node.incarnation, now);
        }
    }

    /// Runs the policy; falls back to saturated nodes when nothing else can serve, and
    /// claims the half-open probe when it picks a half-open node.
    fn choose(
        &self,
        policy: PolicyKind,
        candidates: &mut [Candidate<'_>],
        facts: &RequestFacts,
        config: &RouterConfig,
    ) -> CoreResult<Choice> {
        let mut all_saturated = false;
        if !candidates.iter().any(Candidate::eligible) {
            if let Some(error) = prompt_too_large_error(candidates, facts) {
                return Err(error);
            }
            if !candidates
                .iter()
                .any(|c| c.skip == Some(Skip::MemorySaturated))
            {
                return Err(no_node_error(candidates));
            }
            // Better to queue on the engine than to fail: use the saturated nodes.
            for c in candidates.iter_mut() {
                if c.skip == Some(Skip::MemorySaturated) {
                    c.skip = None;
                }
            }
            all_saturated = true;
        }
        loop {
            let mut choice = self
                .policies
                .choose(policy, candidates, facts, &config.policies)
                .ok_or_else(|| no_node_error(candidates))?;
            let live = &candidates[choice.index].node.live;
            if live.breaker() == BreakerState::HalfOpen && !live.take_probe() {
                candidates[choice.index].skip = Some(Skip::ProbeInUse);
                candidates[choice.index].score = None;
                continue;
            }
            if all_saturated {
                choice.reason = Reason::AllSaturated;
            }
            return Ok(choice);
        }
    }

    /// The request's first token arrived: its prompt no longer counts as queued
    /// prefill on its node. Returns false when the id is not in flight; repeats are
    /// no-ops.
    pub fn first_token(&self, request_id: &str) -> bool {
        let Some((node, prefill_tokens)) = self.in_flight.end_prefill(request_id) else {
            return false;
        };
        node.live
            .release_prefill(prefill_tokens, self.clock.now_ns());
        true
    }

    /// Releases a request. Returns `None` when the id is unknown or already released
    /// (completion is idempotent: a second call is a no-op).
    pub fn complete(
        &self,
        request_id: &str,
        outcome: Outcome,
        ttft_s: Option<f64>,
        tokens_in: u64,
        tokens_out: u64,
    ) -> CoreResult<Option<Completion>> {
        if let Some(ttft) = ttft_s {
            check_non_negative("ttft_s", ttft)?;
        }
        let Some(request) = self.in_flight.take(request_id) else {
            return Ok(None);
        };
        let now = self.clock.now_ns();
        Ok(Some(release(
            request_id.to_owned(),
            request,
            outcome,
            ttft_s,
            tokens_in,
            tokens_out,
            now,
        )))
    }

    /// Releases every request older than `request_ttl_s` as expired, and returns those
    /// together with the ones `route`'s periodic sweep expired since the last call.
    pub fn expire_stale(&self) -> Vec<Completion> {
        let mut expired = std::mem::take(&mut *self.expired.lock());
        expired.extend(self.release_expired());
        expired
    }

    fn release_expired(&self) -> Vec<Completion> {
        let config = self.config.load();
        let now = self.clock.now_ns();
        let deadline = now.saturating_sub(secs_to_ns(config.request_ttl_s));
        // Another replica's requests only stop counting: their outcomes are its own.
        for (_, request) in self.remote_in_flight.take_started_before(deadline) {
            release_counts(&request, now);
        }
        self.in_flight
            .take_started_before(deadline)
            .into_iter()
            .map(|(id, request)| release(id, request, Outcome::Expired, None, 0, 0, now))
            .collect()
    }

    fn maybe_expire(&self, now: u64, config: &RouterConfig) {
        let due = self.next_sweep_ns.load(Ordering::Acquire);
        if now < due {
            return;
        }
        let next = now + secs_to_ns(EXPIRY_SWEEP_INTERVAL_S.min(config.request_ttl_s));
        if self
            .next_sweep_ns
            .compare_exchange(due, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let released = self.release_expired();
            if !released.is_empty() {
                let mut kept = self.expired.lock();
                kept.extend(released);
                let excess = kept.len().saturating_sub(MAX_UNCOLLECTED_EXPIRED);
                kept.drain(..excess);
            }
        }
    }

    pub fn in_flight_request_ids(&self, node_id: &str) -> CoreResult<Vec<String>> {
        self.table.get(node_id)?;
        Ok(self.in_flight.ids_on_node(node_id))
    }

    pub fn in_flight_total(&self) -> usize {
        self.in_flight.len()
    }

    pub fn node_statuses(&self) -> Vec<NodeStatus> {
        let config = self.config.load();
        let now = self.clock.now_ns();
        let ttl = secs_to_ns(config.metrics_ttl_s);
        let kv_caches = self.kv_caches.lock();
        self.table
            .load()
            .nodes
            .iter()
            .map(|node| {
                let live = &node.live;
                let last = live.last_metrics();
                NodeStatus {
                    spec: node.spec.clone(),
                    in_flight: live.in_flight(),
                    routed_total: live.routed_total(),
                    breaker: live.breaker(),
                    consecutive_failures: live.consecutive_failures(),
                    backlog_tokens: live.backlog_tokens(now),
                    pending_prefill_tokens: live.pending_prefill_tokens(),
                    cache_trust: live.cache_trust(),
                    metrics_age_s: last
                        .as_ref()
                        .map(|t| now.saturating_sub(t.received_ns) as f64 / 1e9),
                    metrics_fresh: live.has_fresh_metrics(now, ttl),
                    metrics: last.map(|t| t.metrics.clone()),
                    prefix_blocks: self.index.blocks_held_by(node.slot),
                    kv_events: live.kv_events(),
                    kv_engine_blocks: (kv_caches.get(&(node.slot, Tier::Gpu)))
                        .filter(|(incarnation, _)| *incarnation == node.incarnation)
                        .map_or(0, |(_, cache)| cache.engine_blocks() as u64),
                }
            })
            .collect()
    }

    pub fn window_summary(&self, node_id: &str) -> CoreResult<WindowSummary> {
        let node = self.table.get(node_id)?;
        let now = self.clock.now_ns();
        let summary = node.live.window.lock().summary(now);
        Ok(summary)
    }

    pub fn index_stats(&self) -> IndexStats {
        self.index.stats()
    }

    /// How many leading blocks of the request's prompt each node is credited with, by
    /// the main index (what KV events confirmed, or what was routed to a node that has
    /// none) and by guesses (routed to a node with live events, not yet confirmed).
    pub fn prefix_credit(&self, request: &RouteRequest<'_>) -> CoreResult<Vec<PrefixCredit>> {
        let config = self.config.load();
        validate_prompt(&request.prompt, &config)?;
        let prompt = hash_prompt(request, &config);
        let now = self.clock.now_ns();
        let confirmed = self.index.peek(&prompt.hashes, now);
        let guessed = self.guesses.lookup(&prompt.hashes, now);
        let offloaded = self.offloaded.peek(&prompt.hashes, now);
        let nodes = &self.table.load().nodes;
        Ok((nodes.iter())
            .map(|node| PrefixCredit {
                node_id: node.spec.id.clone(),
                blocks: confirmed.depth_of(node.slot),
                guessed_blocks: guessed.depth_of(node.slot),
                offloaded_blocks: offloaded.depth_of(node.slot),
            })
            .collect())
    }
}

/// One node's credit for a prompt ([`Router::prefix_credit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixCredit {
    pub node_id: Arc<str>,
    pub blocks: u32,
    pub guessed_blocks: u32,
    /// Held below GPU memory (from KV events of another medium).
    pub offloaded_blocks: u32,
}

/// The request stops counting in flight and in its node's prefill backlog.
fn release_counts(request: &InFlight, now: u64) {
    request.node.live.release();
    (request.node.live).release_prefill(request.prefill_tokens, now);
}

fn release(
    request_id: String,
    request: InFlight,
    outcome: Outcome,
    ttft_s: Option<f64>,
    tokens_in: u64,
    tokens_out: u64,
    now: u64,
) -> Completion {
    release_counts(&request, now);
    let live = &request.node.live;
    let consecutive_failures = live.record_outcome(outcome.is_failure());
    live.window
        .lock()
        .record(now, outcome, ttft_s, tokens_in, tokens_out);
    Completion {
        request_id,
        node_id: request.node.spec.id.clone(),
        policy: request.policy,
        outcome,
        duration_s: now.saturating_sub(request.started_ns) as f64 / 1e9,
        was_probe: request.probe,
        consecutive_failures,
    }
}

fn validate_request_id(id: &str) -> CoreResult<()> {
    if id.is_empty() || id.len() > 256 {
        return Err(CoreError::InvalidInput(format!(
            "request_id must be 1 to 256 bytes long, got {} bytes",
            id.len()
        )));
    }
    Ok(())
}

fn validate_prompt(prompt: &Prompt<'_>, config: &RouterConfig) -> CoreResult<()> {
    if let Prompt::Hashes {
        hashes,
        prompt_tokens,
    } = *prompt
    {
        let covered = hashes.len() as u64 * config.token_block_size as u64;
        if (prompt_tokens as u64) < covered {
            return Err(CoreError::InvalidInput(format!(
                "{} block hashes of {} tokens cover {covered} tokens, more than \
                 prompt_tokens={prompt_tokens}",
                hashes.len(),
                config.token_block_size
            )));
        }
    }
    Ok(())
}

fn hash_prompt(request: &RouteRequest<'_>, config: &RouterConfig) -> HashedPrompt {
    let seed = chain_seed(request.model, request.adapter);
    let (hashes, prompt_tokens, tokens_per_block) = match request.prompt {
        Prompt::Text(text) => (
            chain_hash_bytes(text.as_bytes(), config.char_block_size, seed),
            text.len() as f64 / config.chars_per_token,
            config.char_block_size as f64 / config.chars_per_token,
        ),
        Prompt::Tokens(tokens) => (
            chain_hash_tokens(tokens, config.token_block_size, seed),
            tokens.len() as f64,
            config.token_block_size as f64,
        ),
        Prompt::Hashes {
            hashes,
            prompt_tokens,
        } => (
            hashes.to_vec(),
            prompt_tokens as f64,
            config.token_block_size as f64,
        ),
        Prompt::Empty => (Vec::new(), 0.0, config.token_block_size as f64),
    };
    let output_tokens = config.expected_output_tokens(request.expected_output_tokens) as f64;
    // Without max_tokens the default sizes the KV room, but says nothing of the mix.
    let decode_share = match request.expected_output_tokens {
        Some(_) if prompt_tokens + output_tokens > 0.0 => {
            output_tokens / (prompt_tokens + output_tokens)
        }
        _ => 0.5,
    };
    HashedPrompt {
        hashes,
        facts: RequestFacts {
            prompt_tokens,
            tokens_per_block,
            output_tokens,
            decode_share,
        },
    }
}

/// Blocks of the prefix index a node may be credited with: its KV capacity (reported by
/// its agent, else declared) in blocks of `token_block_size` tokens (text blocks of the
/// default sizes hold as many).
fn node_budget(node: &NodeEntry, config: &RouterConfig) -> Option<u32> {
    let tokens = node.live.kv_capacity_tokens(&node.spec)?;
    Some((tokens / config.token_block_size as f64).clamp(1.0, u32::MAX as f64) as u32)
}

/// Blocks the guess index holds: a few seconds of routed prompts, far below the main one.
fn guess_capacity(config: &RouterConfig) -> usize {
    (config.prefix_cache_size / 4).max(1024)
}

fn scored_candidate(position: usize, c: &Candidate<'_>) -> ScoredCandidate {
    ScoredCandidate {
        position: position as u32,
        score: c.score,
        in_flight: c.in_flight,
        load: c.load,
        matched_blocks: c.matched_blocks,
        skipped: c.skip.map(Skip::as_str),
    }
}

/// The error for a prompt no serving node could ever hold, if that is why nothing is
/// eligible (nodes of other models, or excluded by the caller, do not count).
fn prompt_too_large_error(candidates: &[Candidate<'_>], facts: &RequestFacts) -> Option<CoreError> {
    let mut considered = candidates
        .iter()
        .filter(|c| !matches!(c.skip, Some(Skip::ModelNotServed | Skip::Excluded)))
        .peekable();
    considered.peek()?;
    let mut largest = 0.0f64;
    for c in considered {
        if c.skip != Some(Skip::PromptTooLarge) {
            return None;
        }
        largest = largest.max(c.kv_capacity_tokens.unwrap_or(0.0));
    }
    Some(CoreError::InvalidInput(format!(
        "the prompt of {:.0} tokens is longer than the KV cache of every node serving it \
         (largest: {largest:.0} tokens)",
        facts.prompt_tokens
    )))
}

fn no_node_error(candidates: &[Candidate<'_>]) -> CoreError {
    let reasons: Vec<String> = candidates
        .iter()
        .map(|c| {
            format!(
                "{}: {}",
                c.node.spec.id,
                c.skip.map_or("eligible", Skip::as_str)
            )
        })
        .collect();
    CoreError::NoAvailableNode(reasons.join(", "))
}
