//! The node table: who the nodes are (an immutable snapshot swapped on membership
//! change) and how they are doing (atomics and an `ArcSwap` of the last GPU report inside
//! each node). Routing reads both without taking a lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use crate::error::{check_fraction, check_non_negative, CoreError, CoreResult};
use crate::kv_events::KvEventsState;
use crate::window::OutcomeWindow;

/// Most nodes one router holds (prefix-index holder ids are u16).
pub const MAX_NODES: usize = 4096;

/// Default peak dense FP16 TFLOPS of a node when the operator gives none (one H100 SXM).
pub const DEFAULT_PEAK_TFLOPS: f64 = 989.0;

/// Prefill tokens per second per peak TFLOPS when a node does not state its rate:
/// a 70B model on 4×H100 (≈3,956 TFLOPS) prefills ≈12k tokens/s.
pub const PREFILL_TOKENS_PER_TFLOPS: f64 = 3.0;

/// What an operator declares about a node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    pub id: Arc<str>,
    pub address: String,
    pub peak_tflops: f64,
    pub gpu_memory_bytes: Option<u64>,
    pub max_concurrency: Option<u32>,
    pub prefill_tokens_per_s: Option<f64>,
    /// KV-cache capacity; bounds how many prefix blocks the index credits to this node.
    pub kv_capacity_tokens: Option<u64>,
    pub labels: Vec<(String, String)>,
    /// Models this node serves; empty means any model.
    pub models: Vec<String>,
}

impl NodeSpec {
    pub fn new(id: &str, address: &str) -> Self {
        NodeSpec {
            id: Arc::from(id),
            address: address.to_owned(),
            peak_tflops: DEFAULT_PEAK_TFLOPS,
            gpu_memory_bytes: None,
            max_concurrency: None,
            prefill_tokens_per_s: None,
            kv_capacity_tokens: None,
            labels: Vec::new(),
            models: Vec::new(),
        }
    }

    pub fn validate(&self) -> CoreResult<()> {
        if self.id.is_empty() {
            return Err(CoreError::InvalidInput("node id must not be empty".into()));
        }
        if self.id.len() > MAX_NODE_ID_BYTES || self.id.chars().any(|c| c.is_control()) {
            return Err(CoreError::InvalidInput(format!(
                "node id must be at most {MAX_NODE_ID_BYTES} bytes without control characters"
            )));
        }
        if !(self.peak_tflops.is_finite() && self.peak_tflops > 0.0) {
            return Err(CoreError::InvalidInput(format!(
                "node {:?}: peak_tflops must be > 0, got {}",
                self.id, self.peak_tflops
            )));
        }
        if let Some(rate) = self.prefill_tokens_per_s {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(CoreError::InvalidInput(format!(
                    "node {:?}: prefill_tokens_per_s must be > 0, got {rate}",
                    self.id
                )));
            }
        }
        if self.models.iter().any(String::is_empty) {
            return Err(CoreError::InvalidInput(format!(
                "node {:?}: model names must not be empty",
                self.id
            )));
        }
        if self.max_concurrency == Some(0) {
            return Err(CoreError::InvalidInput(format!(
                "node {:?}: max_concurrency must be >= 1",
                self.id
            )));
        }
        Ok(())
    }

    pub fn serves(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }

    pub fn prefill_rate(&self) -> f64 {
        self.prefill_tokens_per_s
            .unwrap_or(self.peak_tflops * PREFILL_TOKENS_PER_TFLOPS)
    }
}

/// One report from a node's monitoring agent. `None` means "not reported".
/// Fractions are in [0, 1].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuMetrics {
    pub gpu_memory_used_bytes: Option<f64>,
    pub gpu_memory_total_bytes: Option<f64>,
    pub kv_cache_memory_bytes: Option<f64>,
    pub compute_memory_bytes: Option<f64>,
    pub kv_cache_usage: Option<f64>,
    pub sm_utilization: Option<f64>,
    pub mem_bandwidth_utilization: Option<f64>,
    pub pcie_tx_bytes_per_s: Option<f64>,
    pub pcie_rx_bytes_per_s: Option<f64>,
    pub num_requests_running: Option<f64>,
    pub num_requests_waiting: Option<f64>,
    pub kv_capacity_tokens: Option<f64>,
    /// The engine's cumulative prefix-cache counters, in tokens (vLLM's
    /// `prefix_cache_hits_total` / `prefix_cache_queries_total`).
    pub prefix_cache_hits_total: Option<f64>,
    pub prefix_cache_queries_total: Option<f64>,
    /// The engine's cumulative preemptions (vLLM's `num_preemptions_total`).
    pub num_preemptions_total: Option<f64>,
}

/// A node's memory use as one report shows it, each a fraction in [0, 1].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MemoryUsage {
    /// The engine's KV-cache usage, as reported.
    pub kv_cache: Option<f64>,
    /// NVML's used / total, with the node's declared memory when the report gives no
    /// total; `None` without a used figure or a positive total.
    pub gpu_memory: Option<f64>,
}

impl MemoryUsage {
    /// The figure saturation is judged on: KV-cache usage when reported (engines
    /// pre-allocate, so NVML's figure stays near full), else GPU memory use.
    pub fn pressure(&self) -> Option<f64> {
        self.kv_cache.or(self.gpu_memory)
    }

    /// Whether a node with this usage takes no new requests (`memory_saturation_threshold`).
    pub fn is_saturated(&self, threshold: f64) -> bool {
        self.pressure().is_some_and(|p| p >= threshold)
    }
}

/// How many figures a [`GpuMetrics`] report has.
pub const METRIC_COUNT: usize = 15;

/// Which figures are fractions in [0, 1]; every other one is an amount >= 0.
const FRACTION_FIELDS: [&str; 3] = [
    "kv_cache_usage",
    "sm_utilization",
    "mem_bandwidth_utilization",
];

impl GpuMetrics {
    /// The figures' names, in the order of [`GpuMetrics::values`]: the one list the
    /// binding's `METRIC_FIELDS` and `update_metrics` keywords come from.
    pub const FIELDS: [&'static str; METRIC_COUNT] = [
        "gpu_memory_used_bytes",
        "gpu_memory_total_bytes",
        "kv_cache_memory_bytes",
        "compute_memory_bytes",
        "kv_cache_usage",
        "sm_utilization",
        "mem_bandwidth_utilization",
        "pcie_tx_bytes_per_s",
        "pcie_rx_bytes_per_s",
        "num_requests_running",
        "num_requests_waiting",
        "kv_capacity_tokens",
        "prefix_cache_hits_total",
        "prefix_cache_queries_total",
        "num_preemptions_total",
    ];

    pub fn values(&self) -> [Option<f64>; METRIC_COUNT] {
        [
            self.gpu_memory_used_bytes,
            self.gpu_memory_total_bytes,
            self.kv_cache_memory_bytes,
            self.compute_memory_bytes,
            self.kv_cache_usage,
            self.sm_utilization,
            self.mem_bandwidth_utilization,
            self.pcie_tx_bytes_per_s,
            self.pcie_rx_bytes_per_s,
            self.num_requests_running,
            self.num_requests_waiting,
            self.kv_capacity_tokens,
            self.prefix_cache_hits_total,
            self.prefix_cache_queries_total,
            self.num_preemptions_total,
        ]
    }

    /// The inverse of [`GpuMetrics::values`].
    pub fn from_values(values: [Option<f64>; METRIC_COUNT]) -> Self {
        let [gpu_memory_used_bytes, gpu_memory_total_bytes, kv_cache_memory_bytes, compute_memory_bytes, kv_cache_usage, sm_utilization, mem_bandwidth_utilization, pcie_tx_bytes_per_s, pcie_rx_bytes_per_s, num_requests_running, num_requests_waiting, kv_capacity_tokens, prefix_cache_hits_total, prefix_cache_queries_total, num_preemptions_total] =
            values;
        GpuMetrics {
            gpu_memory_used_bytes,
            gpu_memory_total_bytes,
            kv_cache_memory_bytes,
            compute_memory_bytes,
            kv_cache_usage,
            sm_utilization,
            mem_bandwidth_utilization,
            pcie_tx_bytes_per_s,
            pcie_rx_bytes_per_s,
            num_requests_running,
            num_requests_waiting,
            kv_capacity_tokens,
            prefix_cache_hits_total,
            prefix_cache_queries_total,
            num_preemptions_total,
        }
    }

    /// Builds a report from `(name, value)` pairs named as in [`GpuMetrics::FIELDS`].
    pub fn from_named<'a>(
        pairs: impl IntoIterator<Item = (&'a str, Option<f64>)>,
    ) -> CoreResult<Self> {
        let mut values = [None; METRIC_COUNT];
        for (name, value) in pairs {
            let i = Self::FIELDS
                .iter()
                .position(|f| *f == name)
                .ok_or_else(|| {
                    CoreError::InvalidInput(format!(
                        "unknown metric {name:?}; known metrics: {}",
                        Self::FIELDS.join(", ")
                    ))
                })?;
            values[i] = value;
        }
        Ok(Self::from_values(values))
    }

    pub fn validate(&self) -> CoreResult<()> {
        for (field, value) in Self::FIELDS.into_iter().zip(self.values()) {
            let Some(v) = value else { continue };
            if FRACTION_FIELDS.contains(&field) {
                check_fraction(field, v)?;
            } else {
                check_non_negative(field, v)?;
            }
        }
        if let (Some(used), Some(total)) = (self.gpu_memory_used_bytes, self.gpu_memory_total_bytes)
        {
            if used > total {
                return Err(CoreError::InvalidInput(format!(
                    "gpu_memory_used_bytes ({used}) exceeds gpu_memory_total_bytes ({total})"
                )));
            }
        }
        Ok(())
    }

    /// Memory use as the router judges it; `declared_total` is the node's declared GPU
    /// memory, used when the report gives no total.
    pub fn memory_usage(&self, declared_total: Option<u64>) -> MemoryUsage {
        let total = self
            .gpu_memory_total_bytes
            .or(declared_total.map(|t| t as f64));
        let gpu_memory = match (self.gpu_memory_used_bytes, total) {
            (Some(used), Some(total)) if total > 0.0 => Some((used / total).clamp(0.0, 1.0)),
            _ => None,
        };
        MemoryUsage {
            kv_cache: self.kv_cache_usage,
            gpu_memory,
        }
    }
}

/// A GPU report with the router-clock time it arrived and what the router concluded
/// from it against the report before.
#[derive(Debug, Clone)]
pub struct TimedMetrics {
    pub received_ns: u64,
    /// This router's in-flight count on the node when the report arrived, so the
    /// engine's (older) queue figures can be moved forward by what routed since.
    pub in_flight_at_report: u32,
    /// The engine cannot admit new work: its KV cache is full and, since the previous
    /// report, its waiting queue grew or it preempted running requests.
    pub cannot_admit: bool,
    /// This router's prompt and predicted-cached token totals for the node when the
    /// report arrived, to compare with the engine's prefix-cache counters.
    pub routed_at_report: PromptTotals,
    pub metrics: GpuMetrics,
}

/// Prompt tokens this router sent to a node and how many of them it expected cached.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PromptTotals {
    pub prompt_tokens: u64,
    pub predicted_cached_tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    /// One probe request may go through; the breaker logic closes or reopens it.
    HalfOpen = 2,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    pub fn parse(name: &str) -> CoreResult<Self> {
        match name {
            "closed" => Ok(BreakerState::Closed),
            "open" => Ok(BreakerState::Open),
            "half_open" => Ok(BreakerState::HalfOpen),
            other => Err(CoreError::InvalidInput(format!(
                "unknown breaker state {other:?}; expected closed, open or half_open"
            ))),
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

/// Counters that routing reads and writes on every request, on their own cache line.
#[derive(Debug, Default)]
struct HotCounters {
    in_flight: AtomicU32,
    /// Estimated prefill backlog: tokens (high 28 bits) as of a time in ms (low 36
    /// bits, wrapping after 2.2 years).
    backlog: AtomicU64,
    /// Uncached prompt tokens of the requests routed here that have not had their
    /// first token yet: exact, and the bound the drained estimate is kept under.
    pending_prefill: AtomicU64,
}

/// Fewest prompt tokens the engine must have looked up between two reports for its
/// hit counters to say anything about the index.
const MIN_TRUST_QUERY_TOKENS: f64 = 1024.0;
/// Weight of the newest interval in the cache-trust average.
const TRUST_SMOOTHING: f64 = 0.5;

/// Fast-changing state of a node; survives `upsert` of the same id.
#[derive(Debug)]
pub struct NodeLive {
    hot: CachePadded<HotCounters>,
    routed_total: AtomicU64,
    breaker: AtomicU8,
    /// Half-open probes in flight, and how many may be.
    probes_taken: AtomicU32,
    probe_limit: AtomicU32,
    consecutive_failures: AtomicU32,
    /// KV capacity the agent last reported (0: none), which outranks the declared one.
    reported_kv_tokens: AtomicU64,
    prompt_tokens_total: AtomicU64,
    predicted_cached_total: AtomicU64,
    /// Share of the index's predicted cache hits the engine confirms (f64 bits, 1.0
    /// until its hit counters say otherwise).
    cache_trust: AtomicU64,
    /// Tokens per second the backlog drains at: the spec's prefill rate (f64 bits),
    /// kept here so requests routed before a spec change release at today's rate.
    drain_rate: AtomicU64,
    /// Where its prefix credit comes from ([`KvEventsState`] as u8).
    kv_events: AtomicU8,
    metrics: ArcSwapOption<TimedMetrics>,
    pub(crate) window: Mutex<OutcomeWindow>,
}

impl NodeLive {
    fn new(window_s: f64, rate: f64) -> Self {
        NodeLive {
            hot: CachePadded::new(HotCounters::default()),
            routed_total: AtomicU64::new(0),
            breaker: AtomicU8::new(BreakerState::Closed as u8),
            probes_taken: AtomicU32::new(0),
            probe_limit: AtomicU32::new(1),
            consecutive_failures: AtomicU32::new(0),
            reported_kv_tokens: AtomicU64::new(0),
            prompt_tokens_total: AtomicU64::new(0),
            predicted_cached_total: AtomicU64::new(0),
            cache_trust: AtomicU64::new(1.0f64.to_bits()),
            drain_rate: AtomicU64::new(rate.to_bits()),
            kv_events: AtomicU8::new(KvEventsState::Off as u8),
            metrics: ArcSwapOption::empty(),
            window: Mutex::new(OutcomeWindow::new(window_s)),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.hot.in_flight.load(Ordering::Acquire)
    }

    pub fn kv_events(&self) -> KvEventsState {
        KvEventsState::from_u8(self.kv_events.load(Ordering::Acquire))
    }

    /// Returns the previous state.
    pub fn set_kv_events(&self, state: KvEventsState) -> KvEventsState {
        KvEventsState::from_u8(self.kv_events.swap(state as u8, Ordering::AcqRel))
    }

    /// Counts a routed request: in flight, and `prefill_tokens` (whole tokens) of
    /// queued prefill until [`release_prefill`](Self::release_prefill).
    pub(crate) fn acquire(&self, prefill_tokens: u64, now_ns: u64) {
        self.hot.in_flight.fetch_add(1, Ordering::AcqRel);
        self.routed_total.fetch_add(1, Ordering::Relaxed);
        self.hot
            .pending_prefill
            .fetch_add(prefill_tokens, Ordering::AcqRel);
        self.update_backlog(now_ns, |current| current + prefill_tokens as f64);
    }

    /// The request's prefill is over (first token, or it ended): its tokens leave the
    /// exact pending total, and the drained estimate is cut to that total. A huge
    /// prompt that fails at once thus frees its node at once instead of draining for
    /// minutes at the declared rate.
    pub(crate) fn release_prefill(&self, prefill_tokens: u64, now_ns: u64) {
        let previous = self
            .hot
            .pending_prefill
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(prefill_tokens))
            })
            .unwrap_or(0);
        let pending = previous.saturating_sub(prefill_tokens) as f64;
        self.update_backlog(now_ns, |current| current.min(pending));
    }

    /// Sets the backlog to `next(drained backlog)`, as of `now_ns`.
    fn update_backlog(&self, now_ns: u64, next: impl Fn(f64) -> f64) {
        let now_ms = now_ns / 1_000_000;
        let rate = self.drain_rate();
        let _ = self
            .hot
            .backlog
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |packed| {
                let current = drain_backlog(packed, rate, now_ms);
                let tokens = next(current).clamp(0.0, MAX_BACKLOG_TOKENS as f64) as u64;
                Some((tokens << TIME_BITS) | (now_ms & TIME_MASK))
            });
    }

    /// Decrements in-flight, never below zero.
    pub(crate) fn release(&self) {
        let _ = self
            .hot
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Uncached prompt tokens routed here still waiting for their first token.
    pub fn pending_prefill_tokens(&self) -> u64 {
        self.hot.pending_prefill.load(Ordering::Acquire)
    }

    /// Adds a routed prompt to the totals compared with the engine's hit counters.
    pub(crate) fn count_prompt(&self, prompt_tokens: u64, predicted_cached: u64) {
        self.prompt_tokens_total
            .fetch_add(prompt_tokens, Ordering::Relaxed);
        self.predicted_cached_total
            .fetch_add(predicted_cached, Ordering::Relaxed);
    }

    fn prompt_totals(&self) -> PromptTotals {
        PromptTotals {
            prompt_tokens: self.prompt_tokens_total.load(Ordering::Relaxed),
            predicted_cached_tokens: self.predicted_cached_total.load(Ordering::Relaxed),
        }
    }

    /// Share of the index's predicted hits on this node that its engine confirms.
    pub fn cache_trust(&self) -> f64 {
        f64::from_bits(self.cache_trust.load(Ordering::Relaxed))
    }

    /// Tokens still waiting for prefill, assuming the node drains them at its rate.
    pub fn backlog_tokens(&self, now_ns: u64) -> f64 {
        drain_backlog(
            self.hot.backlog.load(Ordering::Acquire),
            self.drain_rate(),
            now_ns / 1_000_000,
        )
    }

    fn drain_rate(&self) -> f64 {
        f64::from_bits(self.drain_rate.load(Ordering::Relaxed))
    }

    fn set_drain_rate(&self, rate: f64) {
        self.drain_rate.store(rate.to_bits(), Ordering::Relaxed);
    }

    pub fn routed_total(&self) -> u64 {
        self.routed_total.load(Ordering::Relaxed)
    }

    pub fn breaker(&self) -> BreakerState {
        BreakerState::from_u8(self.breaker.load(Ordering::Acquire))
    }

    /// Sets the state; half-open lets `probes` requests through (at least 1).
    pub(crate) fn set_breaker(&self, state: BreakerState, probes: u32) {
        self.probes_taken.store(0, Ordering::Release);
        self.probe_limit.store(probes.max(1), Ordering::Release);
        self.breaker.store(state as u8, Ordering::Release);
    }

    pub(crate) fn probe_available(&self) -> bool {
        self.probes_taken.load(Ordering::Acquire) < self.probe_limit.load(Ordering::Acquire)
    }

    /// Claims one of the half-open probes; false when all are taken.
    pub(crate) fn take_probe(&self) -> bool {
        let limit = self.probe_limit.load(Ordering::Acquire);
        self.probes_taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// A probe claimed by a request that was not routed after all.
    pub(crate) fn give_back_probe(&self) {
        let _ = self
            .probes_taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Returns the node's consecutive failures after this outcome.
    pub(crate) fn record_outcome(&self, failed: bool) -> u32 {
        if failed {
            self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.consecutive_failures.store(0, Ordering::Release);
            0
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Acquire)
    }

    /// The KV capacity in tokens this node is known to have: reported, else declared.
    pub fn kv_capacity_tokens(&self, spec: &NodeSpec) -> Option<f64> {
        match self.reported_kv_tokens.load(Ordering::Acquire) {
            0 => spec.kv_capacity_tokens.map(|t| t as f64),
            reported => Some(reported as f64),
        }
    }

    /// Stores a report. Against the previous one it judges whether the engine can
    /// admit (`full_at`: the KV usage counted as full), updates the cache trust from
    /// the engine's hit counters, and an idle engine (nothing running or waiting)
    /// zeroes the drained backlog estimate: whatever the estimate still held was
    /// already served.
    pub(crate) fn store_metrics(&self, metrics: GpuMetrics, now_ns: u64, full_at: f64) {
        if let Some(tokens) = metrics.kv_capacity_tokens {
            self.reported_kv_tokens
                .store(tokens.max(1.0) as u64, Ordering::Release);
        }
        let previous = self.metrics.load_full();
        let routed = self.prompt_totals();
        if let Some(previous) = &previous {
            self.update_cache_trust(previous, &metrics, routed);
        }
        if metrics.num_requests_running == Some(0.0) && metrics.num_requests_waiting == Some(0.0) {
            self.update_backlog(now_ns, |_| 0.0);
        }
        self.metrics.store(Some(Arc::new(TimedMetrics {
            received_ns: now_ns,
            in_flight_at_report: self.in_flight(),
            cannot_admit: cannot_admit(previous.as_deref().map(|p| &p.metrics), &metrics, full_at),
            routed_at_report: routed,
            metrics,
        })));
    }

    fn update_cache_trust(&self, previous: &TimedMetrics, now: &GpuMetrics, routed: PromptTotals) {
        let then = &previous.metrics;
        let (Some(h0), Some(q0), Some(h1), Some(q1)) = (
            then.prefix_cache_hits_total,
            then.prefix_cache_queries_total,
            now.prefix_cache_hits_total,
            now.prefix_cache_queries_total,
        ) else {
            return;
        };
        let (hits, queries) = (h1 - h0, q1 - q0);
        let before = previous.routed_at_report;
        let prompts = routed.prompt_tokens.saturating_sub(before.prompt_tokens) as f64;
        let predicted = routed
            .predicted_cached_tokens
            .saturating_sub(before.predicted_cached_tokens) as f64;
        // Counters going back mean an engine restart; too few queries, noise.
        if hits < 0.0 || queries < MIN_TRUST_QUERY_TOKENS || prompts <= 0.0 || predicted <= 0.0 {
            return;
        }
        let confirmed = ((hits / queries) / (predicted / prompts)).clamp(0.0, 1.0);
        let trust = (1.0 - TRUST_SMOOTHING) * self.cache_trust() + TRUST_SMOOTHING * confirmed;
        self.cache_trust.store(trust.to_bits(), Ordering::Relaxed);
    }

    /// Applies `read` to the last report if it is younger than `ttl_ns` (borrowed, so
    /// routing does not touch the report's reference count).
    pub fn read_fresh_metrics<R>(
        &self,
        now_ns: u64,
        ttl_ns: u64,
        read: impl FnOnce(&TimedMetrics) -> R,
    ) -> Option<R> {
        let guard = self.metrics.load();
        let timed = guard.as_ref()?;
        (now_ns.saturating_sub(timed.received_ns) <= ttl_ns).then(|| read(timed))
    }

    pub fn has_fresh_metrics(&self, now_ns: u64, ttl_ns: u64) -> bool {
        self.read_fresh_metrics(now_ns, ttl_ns, |_| ()).is_some()
    }

    pub fn last_metrics(&self) -> Option<Arc<TimedMetrics>> {
        self.metrics.load_full()
    }
}

/// Full KV cache and, since the previous report, a longer waiting queue or new
/// preemptions: the engine is turning work away, whatever this request would need.
fn cannot_admit(previous: Option<&GpuMetrics>, now: &GpuMetrics, full_at: f64) -> bool {
    let (Some(previous), Some(usage)) = (previous, now.kv_cache_usage) else {
        return false;
    };
    let grew = |figure: fn(&GpuMetrics) -> Option<f64>| match (figure(previous), figure(now)) {
        (Some(then), Some(now)) => now > then,
        _ => false,
    };
    let waiting = now.num_requests_waiting.unwrap_or(0.0) > 0.0;
    usage >= full_at
        && waiting
        && (grew(|m| m.num_requests_waiting) || grew(|m| m.num_preemptions_total))
}

const TIME_BITS: u32 = 36;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
const MAX_BACKLOG_TOKENS: u64 = (1 << (64 - TIME_BITS)) - 1;

fn drain_backlog(packed: u64, rate: f64, now_ms: u64) -> f64 {
    let tokens = (packed >> TIME_BITS) as f64;
    let since_ms = (now_ms & TIME_MASK).wrapping_sub(packed & TIME_MASK) & TIME_MASK;
    // A "negative" interval (a racing thread stored a slightly later time) means no
    // time passed; real intervals are far below half the 2.2-year wrap.
    let elapsed_s = if since_ms > TIME_MASK / 2 {
        0.0
    } else {
        since_ms as f64 / 1000.0
    };
    (tokens - rate * elapsed_s).max(0.0)
}

/// A node as routing sees it: declared spec, live state and prefix-index slot.
#[derive(Debug)]
pub struct NodeEntry {
    pub spec: NodeSpec,
    pub live: Arc<NodeLive>,
    pub slot: u16,
    /// Unique per node added (an id re-added after removal gets a new one).
    pub incarnation: u64,
}

fn next_incarnation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[derive(Debug, Default)]
pub struct Snapshot {
    pub nodes: Vec<Arc<NodeEntry>>,
    by_id: HashMap<Arc<str>, usize>,
}

impl Snapshot {
    pub fn get(&self, id: &str) -> Option<&Arc<NodeEntry>> {
        self.by_id.get(id).map(|&i| &self.nodes[i])
    }

    fn rebuild(nodes: Vec<Arc<NodeEntry>>) -> Self {
        let by_id = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.spec.id.clone(), i))
            .collect();
        Snapshot { nodes, by_id }
    }
}

/// What `upsert` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    Added { slot: u16, incarnation: u64 },
    Updated { slot: u16, incarnation: u64 },
}

#[derive(Debug)]
pub struct NodeTable {
    snapshot: ArcSwap<Snapshot>,
    writer: Mutex<()>,
}

impl Default for NodeTable {
    fn default() -> Self {
        NodeTable {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            writer: Mutex::new(()),
        }
    }
}

impl NodeTable {
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    pub fn get(&self, id: &str) -> CoreResult<Arc<NodeEntry>> {
        self.load()
            .get(id)
            .cloned()
            .ok_or_else(|| CoreError::UnknownNode(id.to_owned()))
    }

    /// Adds a node, or replaces the spec of an existing one keeping its live state.
    pub fn upsert(&self, spec: NodeSpec, window_s: f64) -> CoreResult<Upserted> {
        spec.validate()?;
        let _guard = self.writer.lock();
        let current = self.snapshot.load_full();
        let mut nodes = current.nodes.clone();
        let result = match current.by_id.get(&spec.id) {
            Some(&i) => {
                let old = nodes[i].clone();
                let slot = old.slot;
                old.live.set_drain_rate(spec.prefill_rate());
                nodes[i] = Arc::new(NodeEntry {
                    spec,
                    live: old.live.clone(),
                    slot,
                    incarnation: old.incarnation,
                });
                Upserted::Updated {
                    slot,
                    incarnation: old.incarnation,
                }
            }
            None => {
                let slot = free_slot(&nodes).ok_or(CoreError::TableFull(MAX_NODES))?;
                let incarnation = next_incarnation();
                let live = Arc::new(NodeLive::new(window_s, spec.prefill_rate()));
                nodes.push(Arc::new(NodeEntry {
                    spec,
                    live,
                    slot,
                    incarnation,
                }));
                Upserted::Added { slot, incarnation }
            }
        };
        self.snapshot.store(Arc::new(Snapshot::rebuild(nodes)));
        Ok(result)
    }

    pub fn remove(&self, id: &str) -> CoreResult<Arc<NodeEntry>> {
        let _guard = self.writer.lock();
        let current = self.snapshot.load_full();
        let &i = current
            .by_id
            .get(id)
            .ok_or_else(|| CoreError::UnknownNode(id.to_owned()))?;
        let mut nodes = current.nodes.clone();
        let removed = nodes.remove(i);
        self.snapshot.store(Arc::new(Snapshot::rebuild(nodes)));
        Ok(removed)
    }
}

fn free_slot(nodes: &[Arc<NodeEntry>]) -> Option<u16> {
    let mut used = vec![false; MAX_NODES];
    for n in nodes {
        used[n.slot as usize] = true;
    }
    used.iter().position(|u| !u).map(|s| s as u16)
}

/// A point-in-time copy of a node for callers.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub spec: NodeSpec,
    pub in_flight: u32,
    pub routed_total: u64,
    pub breaker: BreakerState,
    pub consecutive_failures: u32,
    pub backlog_tokens: f64,
    /// Uncached prompt tokens routed here still waiting for their first token.
    pub pending_prefill_tokens: u64,
    /// Share of the index's predicted cache hits the engine's counters confirm.
    pub cache_trust: f64,
    /// Last report and its age in seconds; `fresh` says whether routing trusts it.
    pub metrics: Option<GpuMetrics>,
    pub metrics_age_s: Option<f64>,
    pub metrics_fresh: bool,
    pub prefix_blocks: u32,
    pub kv_events: KvEventsState,
    /// Blocks its engine's KV events say it holds (over data-parallel ranks).
    pub kv_engine_blocks: u64,
}

pub const MAX_NODE_ID_BYTES: usize = 128;
pub const MAX_ADDRESS_BYTES: usize = 2048;

/// A node's address: `host[:port]` or `http(s)://host[:port][/path]`, nothing else
/// (a backend the proxy or a gateway will connect to; no other scheme, no credentials,
/// no whitespace or control characters that could split a header).
/// Checked where addresses come from outside (config files, RegisterNode); the core
/// itself routes to any string (the simulator's nodes have none).
pub fn check_address(id: &str, address: &str) -> CoreResult<()> {
    let refuse = |why: &str| {
        Err(CoreError::InvalidInput(format!(
            "node {id:?}: address {address:?} {why}"
        )))
    };
    if address.is_empty() {
        return refuse("is empty");
    }
    if address.len() > MAX_ADDRESS_BYTES {
        return refuse("is too long");
    }
    if address.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return refuse("contains whitespace or control characters");
    }
    let rest = match address.split_once("://") {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            rest
        }
        Some(_) => return refuse("must be http(s)://host[:port] or host[:port]"),
        None => address,
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return refuse("must not carry credentials");
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':')),
            None => return refuse("has an unclosed IPv6 bracket"),
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return refuse("has no host");
    }
    if port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
        return refuse("has a port outside 1-65535");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn addresses_are_host_port_or_http_urls() {
        let check = |address: &str| super::check_address("n", address).is_ok();
        for good in [
            "10.0.0.1:8000",
            "x",
            "http://10.0.0.1:8000",
            "https://h:443/v1",
            "[::1]:80",
            "HTTP://h",
        ] {
            assert!(check(good), "{good}");
        }
        for bad in [
            "",
            "http://a\r\nx:1",
            "file:///etc/passwd",
            "ftp://x:21",
            "http://",
            "http://u:p@h:1",
            "h:0",
            "h:99999",
            "h: 1",
            "[::1:80",
        ] {
            assert!(!check(bad), "{bad}");
        }
    }

    use super::*;

    const RATE: f64 = 500.0;

    #[test]
    fn upsert_keeps_live_state_and_slot() {
        let table = NodeTable::default();
        table.upsert(NodeSpec::new("a", "h:1"), 30.0).unwrap();
        table.get("a").unwrap().live.acquire(0, 0);
        let mut spec = NodeSpec::new("a", "h:2");
        spec.peak_tflops = 10.0;
        assert_eq!(
            table.upsert(spec, 30.0).unwrap(),
            Upserted::Updated {
                slot: 0,
                incarnation: table.get("a").unwrap().incarnation
            }
        );
        let node = table.get("a").unwrap();
        assert_eq!(node.live.in_flight(), 1);
        assert_eq!(node.spec.address, "h:2");
    }

    #[test]
    fn slots_are_reused_after_removal() {
        let table = NodeTable::default();
        for id in ["a", "b", "c"] {
            table.upsert(NodeSpec::new(id, ""), 30.0).unwrap();
        }
        table.remove("b").unwrap();
        assert_eq!(
            table.upsert(NodeSpec::new("d", ""), 30.0).unwrap(),
            Upserted::Added {
                slot: 1,
                incarnation: table.get("d").unwrap().incarnation
            }
        );
        assert!(matches!(table.remove("zz"), Err(CoreError::UnknownNode(_))));
    }

    #[test]
    fn release_never_goes_negative() {
        let live = NodeLive::new(30.0, RATE);
        live.release();
        assert_eq!(live.in_flight(), 0);
    }

    #[test]
    fn backlog_drains_at_the_prefill_rate() {
        let live = NodeLive::new(30.0, RATE);
        live.acquire(1000, 0);
        assert_eq!(live.backlog_tokens(0), 1000.0);
        assert_eq!(live.backlog_tokens(1_000_000_000), 500.0);
        assert_eq!(live.backlog_tokens(3_000_000_000), 0.0);
    }

    #[test]
    fn released_prefill_caps_the_backlog_at_what_is_still_pending() {
        let live = NodeLive::new(30.0, RATE);
        live.acquire(1_900_000, 0);
        live.acquire(1_000, 0);
        live.release_prefill(1_900_000, 1_000_000_000);
        assert_eq!(live.pending_prefill_tokens(), 1_000);
        assert_eq!(live.backlog_tokens(1_000_000_000), 1_000.0);
        live.release_prefill(1_000, 1_000_000_000);
        assert_eq!(live.backlog_tokens(1_000_000_000), 0.0);
    }

    #[test]
    fn an_idle_engine_report_clears_the_backlog() {
        let live = NodeLive::new(30.0, RATE);
        live.acquire(50_000, 0);
        let idle = GpuMetrics {
            num_requests_running: Some(0.0),
            num_requests_waiting: Some(0.0),
            ..Default::default()
        };
        live.store_metrics(idle, 1_000_000_000, 0.95);
        assert_eq!(live.backlog_tokens(1_000_000_000), 0.0);
    }

    fn report(usage: f64, waiting: f64, preemptions: f64) -> GpuMetrics {
        GpuMetrics {
            kv_cache_usage: Some(usage),
            num_requests_waiting: Some(waiting),
            num_preemptions_total: Some(preemptions),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_full_engine_turning_work_away_cannot_admit() {
        let full_at = 0.95;
        let judge = |then: GpuMetrics, now: GpuMetrics| cannot_admit(Some(&then), &now, full_at);
        assert!(
            judge(report(0.97, 2.0, 0.0), report(0.97, 3.0, 0.0)),
            "queue grows"
        );
        assert!(
            judge(report(0.97, 3.0, 0.0), report(0.97, 3.0, 1.0)),
            "preempts"
        );
        assert!(
            !judge(report(0.97, 3.0, 1.0), report(0.97, 2.0, 1.0)),
            "queue shrinks"
        );
        assert!(
            !judge(report(0.97, 0.0, 0.0), report(0.97, 0.0, 5.0)),
            "nothing waits"
        );
        assert!(
            !judge(report(0.90, 2.0, 0.0), report(0.90, 9.0, 0.0)),
            "room left"
        );
        assert!(
            !cannot_admit(None, &report(0.99, 9.0, 9.0), full_at),
            "one report"
        );
    }

    #[test]
    fn engine_hit_counters_set_the_cache_trust() {
        let live = NodeLive::new(30.0, RATE);
        let counters = |hits: f64, queries: f64| GpuMetrics {
            prefix_cache_hits_total: Some(hits),
            prefix_cache_queries_total: Some(queries),
            ..Default::default()
        };
        live.store_metrics(counters(0.0, 0.0), 0, 0.95);
        // The router expected 80% of 10,000 tokens cached; the engine hit 40%.
        live.count_prompt(10_000, 8_000);
        live.store_metrics(counters(4_000.0, 10_000.0), 1, 0.95);
        assert!(
            (live.cache_trust() - 0.75).abs() < 1e-9,
            "{}",
            live.cache_trust()
        );
        // An engine restart (counters back to zero) says nothing.
        live.count_prompt(10_000, 8_000);
        live.store_metrics(counters(0.0, 0.0), 2, 0.95);
        assert!((live.cache_trust() - 0.75).abs() < 1e-9);
    }

    #[test]
    fn stale_metrics_are_not_fresh() {
        let live = NodeLive::new(30.0, RATE);
        live.store_metrics(GpuMetrics::default(), 100, 0.95);
        assert!(live.has_fresh_metrics(150, 100));
        assert!(!live.has_fresh_metrics(300, 100));
    }

    #[test]
    fn metrics_validation_names_the_field() {
        let m = GpuMetrics {
            sm_utilization: Some(85.0),
            ..Default::default()
        };
        assert!(m
            .validate()
            .unwrap_err()
            .to_string()
            .contains("sm_utilization"));
        let m = GpuMetrics {
            pcie_tx_bytes_per_s: Some(f64::NAN),
            ..Default::default()
        };
        assert!(m.validate().is_err());
    }

    #[test]
    fn fields_values_and_names_agree() {
        let values: [Option<f64>; METRIC_COUNT] = std::array::from_fn(|i| Some(i as f64 / 100.0));
        let m = GpuMetrics::from_values(values);
        assert_eq!(m.values(), values);
        let named = GpuMetrics::from_named(GpuMetrics::FIELDS.into_iter().zip(values)).unwrap();
        assert_eq!(named, m);
        assert_eq!(m.kv_cache_usage, Some(0.04), "FIELDS[4] is kv_cache_usage");
        assert_eq!(
            m.kv_capacity_tokens,
            Some(0.11),
            "FIELDS[11] is kv_capacity_tokens"
        );
        let err = GpuMetrics::from_named([("sm_util", Some(0.5))]).unwrap_err();
        assert!(err.to_string().contains("sm_utilization"));
    }

    #[test]
    fn memory_usage_prefers_the_kv_cache_and_falls_back_to_the_declared_total() {
        let nvml_only = GpuMetrics {
            gpu_memory_used_bytes: Some(60.0),
            ..Default::default()
        };
        assert_eq!(nvml_only.memory_usage(None), MemoryUsage::default());
        let usage = nvml_only.memory_usage(Some(80));
        assert_eq!((usage.kv_cache, usage.gpu_memory), (None, Some(0.75)));
        assert_eq!(usage.pressure(), Some(0.75));
        let both = GpuMetrics {
            kv_cache_usage: Some(0.2),
            gpu_memory_total_bytes: Some(64.0),
            ..nvml_only
        };
        let usage = both.memory_usage(Some(80));
        assert_eq!(
            (usage.kv_cache, usage.gpu_memory),
            (Some(0.2), Some(0.9375))
        );
        assert_eq!(
            usage.pressure(),
            Some(0.2),
            "KV usage outranks NVML's figure"
        );
        assert!(!usage.is_saturated(0.95));
        assert!(usage.is_saturated(0.2));
        let zero_total = GpuMetrics {
            gpu_memory_total_bytes: Some(0.0),
            ..nvml_only
        };
        assert_eq!(zero_total.memory_usage(Some(80)).gpu_memory, None);
    }
}
