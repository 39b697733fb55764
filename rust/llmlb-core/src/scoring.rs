//! Per-candidate figures the policies score with, built once per request from the node
//! snapshot, and the cost functions shared by more than one policy. All costs are
//! "lower is better".

use std::sync::Arc;

use crate::node_table::{BreakerState, MemoryUsage, NodeEntry, TimedMetrics};
use crate::prefix_index::PrefixMatch;

/// Decode work of one running request, in prefill-token equivalents: with continuous
/// batching each running sequence takes a slice of every step that prefill shares.
pub const DECODE_TOKENS_PER_RUNNING: f64 = 64.0;

/// PCIe bandwidth taken as 100% when scoring transfer pressure (PCIe 5.0 x16, one way).
pub const PCIE_FULL_BYTES_PER_S: f64 = 64e9;

/// Why a node was not eligible for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    Excluded,
    ModelNotServed,
    BreakerOpen,
    ProbeInUse,
    AtMaxConcurrency,
    /// The node cannot admit now (see [`skip_reason`]).
    MemorySaturated,
    /// The prompt is longer than the node's whole KV cache.
    PromptTooLarge,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Excluded => "excluded",
            Skip::ModelNotServed => "model_not_served",
            Skip::BreakerOpen => "breaker_open",
            Skip::ProbeInUse => "half_open_probe_in_use",
            Skip::AtMaxConcurrency => "at_max_concurrency",
            Skip::MemorySaturated => "gpu_memory_saturated",
            Skip::PromptTooLarge => "prompt_exceeds_kv_capacity",
        }
    }
}

/// What the router knows about the request being routed.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts {
    pub prompt_tokens: f64,
    pub tokens_per_block: f64,
    /// Output tokens expected (`max_tokens`, capped, or the configured default).
    pub output_tokens: f64,
    /// Expected share of the work that is decode, in [0, 1] (0.5 without `max_tokens`).
    pub decode_share: f64,
}

#[derive(Debug)]
pub struct Candidate<'a> {
    pub node: &'a Arc<NodeEntry>,
    pub in_flight: u32,
    /// Requests on the node: ours, or the engine's own running + waiting when it reports
    /// more (other router replicas send to it too).
    pub load: f64,
    /// Peak TFLOPS relative to the cluster mean.
    pub capability: f64,
    /// Memory use now (KV usage moved forward by the load routed since the report).
    pub memory_pressure: Option<f64>,
    /// Memory use as reported: saturation is judged on what was observed.
    pub reported_memory: MemoryUsage,
    /// KV-cache use now (the reported figure moved forward by the load routed since);
    /// `None` when the engine reports no KV figure.
    pub kv_usage: Option<f64>,
    /// The node's KV capacity in tokens (reported, else declared).
    pub kv_capacity_tokens: Option<f64>,
    /// Share of the index's predicted cache hits the node's engine confirms.
    pub cache_trust: f64,
    /// The last fresh report showed the engine turning work away.
    pub cannot_admit: bool,
    pub sm_utilization: Option<f64>,
    pub bandwidth_utilization: Option<f64>,
    pub pcie_utilization: Option<f64>,
    pub backlog_tokens: f64,
    pub prefill_rate: f64,
    pub matched_blocks: u32,
    pub skip: Option<Skip>,
    pub score: Option<f64>,
}

impl Candidate<'_> {
    pub fn eligible(&self) -> bool {
        self.skip.is_none()
    }
}

/// The settings candidates are built by (from the router config).
#[derive(Debug, Clone, Copy)]
pub struct CandidateRules {
    /// Reports older than this are not used.
    pub metrics_ttl_ns: u64,
    /// Memory use counted as full (see [`skip_reason`]).
    pub memory_saturation_threshold: f64,
}

/// Builds the candidate list for one request.
pub fn build_candidates<'a>(
    nodes: &'a [Arc<NodeEntry>],
    matched: &PrefixMatch,
    request: &RequestFacts,
    rules: CandidateRules,
    now_ns: u64,
) -> Vec<Candidate<'a>> {
    let mean_tflops =
        nodes.iter().map(|n| n.spec.peak_tflops).sum::<f64>() / nodes.len().max(1) as f64;
    let slots = nodes.iter().map(|n| n.slot as usize + 1).max().unwrap_or(0);
    let depths = matched.dense_depths(slots);
    nodes
        .iter()
        .map(|node| {
            let live = &node.live;
            let in_flight = live.in_flight();
            let mut candidate = Candidate {
                node,
                in_flight,
                load: in_flight as f64,
                capability: node.spec.peak_tflops / mean_tflops,
                memory_pressure: None,
                reported_memory: MemoryUsage::default(),
                kv_usage: None,
                kv_capacity_tokens: live.kv_capacity_tokens(&node.spec),
                cache_trust: live.cache_trust(),
                cannot_admit: false,
                sm_utilization: None,
                bandwidth_utilization: None,
                pcie_utilization: None,
                backlog_tokens: live.backlog_tokens(now_ns),
                prefill_rate: node.spec.prefill_rate(),
                matched_blocks: depths[node.slot as usize],
                skip: None,
                score: None,
            };
            live.read_fresh_metrics(now_ns, rules.metrics_ttl_ns, |m| {
                apply_metrics(&mut candidate, m)
            });
            candidate.skip = skip_reason(&candidate, request, rules.memory_saturation_threshold);
            candidate
        })
        .collect()
}

/// Folds a fresh GPU report into the candidate's figures. The report is up to a report
/// interval old, and every router would pile onto the node that looked idlest in it
/// unless the figures move with what was routed since: the engine's running + waiting
/// count (which sees other routers' requests too) moves by this router's change in
/// flight, and the load-driven figures (KV and memory use, SM and bandwidth
/// utilisation) scale with the load the node has now against the load it reported.
fn apply_metrics(candidate: &mut Candidate<'_>, timed: &TimedMetrics) {
    let m = &timed.metrics;
    let reported = m.num_requests_running.unwrap_or(0.0) + m.num_requests_waiting.unwrap_or(0.0);
    let routed_since = candidate.in_flight as f64 - timed.in_flight_at_report as f64;
    candidate.load = candidate.load.max(reported + routed_since);
    let drift = load_drift(candidate.load, reported, timed.in_flight_at_report);
    let now = |figure: Option<f64>| figure.map(|f| (f * drift).clamp(0.0, 1.0));
    let usage = m.memory_usage(candidate.node.spec.gpu_memory_bytes);
    candidate.reported_memory = usage;
    candidate.cannot_admit = timed.cannot_admit;
    // NVML's used/total does not follow load (engines pre-allocate); KV usage does.
    candidate.kv_usage = now(usage.kv_cache);
    candidate.memory_pressure = candidate.kv_usage.or(usage.gpu_memory);
    candidate.sm_utilization = now(m.sm_utilization);
    candidate.bandwidth_utilization = now(m.mem_bandwidth_utilization);
    candidate.pcie_utilization = match (m.pcie_tx_bytes_per_s, m.pcie_rx_bytes_per_s) {
        (None, None) => None,
        (tx, rx) => {
            Some((tx.unwrap_or(0.0).max(rx.unwrap_or(0.0)) / PCIE_FULL_BYTES_PER_S).min(1.0))
        }
    };
}

/// How much the node's load changed since its report, as a factor for the figures that
/// follow the load (`(now + 1) / (then + 1)`, within [0.5, 2]). "Then" is the engine's
/// count when it reported one, else this router's in-flight count at the report.
fn load_drift(load_now: f64, reported: f64, in_flight_at_report: u32) -> f64 {
    let then = if reported > 0.0 {
        reported
    } else {
        in_flight_at_report as f64
    };
    ((load_now + 1.0) / (then + 1.0)).clamp(0.5, 2.0)
}

/// Why a node cannot take this request, if it cannot. A full KV cache alone is no
/// reason: a busy engine keeps its cache nearly full of running requests, and the node
/// holding this prompt's prefix may need little room (the cost weighs the room, see
/// [`kv_shortfall_tokens`]). A node is skipped on memory only when it cannot admit at
/// all: its KV cache is at `full_at` or above and, since its previous report, its
/// waiting queue grew or it preempted; or, reporting no KV figure (an engine that
/// allocates as it goes), its GPU memory is at `full_at` or above.
fn skip_reason(c: &Candidate<'_>, request: &RequestFacts, full_at: f64) -> Option<Skip> {
    match c.node.live.breaker() {
        BreakerState::Open => return Some(Skip::BreakerOpen),
        BreakerState::HalfOpen if !c.node.live.probe_available() => return Some(Skip::ProbeInUse),
        _ => {}
    }
    if c.node
        .spec
        .max_concurrency
        .is_some_and(|max| c.in_flight >= max)
    {
        return Some(Skip::AtMaxConcurrency);
    }
    if c.kv_capacity_tokens
        .is_some_and(|capacity| request.prompt_tokens > capacity)
    {
        return Some(Skip::PromptTooLarge);
    }
    let memory_full = match c.reported_memory.kv_cache {
        Some(_) => c.cannot_admit,
        None => c.reported_memory.is_saturated(full_at),
    };
    memory_full.then_some(Skip::MemorySaturated)
}

/// Prompt tokens this node is expected to have cached: its matched blocks, times the
/// share of predicted hits its engine confirms, times `credit` (a policy's weight).
pub fn cached_tokens(c: &Candidate<'_>, request: &RequestFacts, credit: f64) -> f64 {
    (credit * c.cache_trust * c.matched_blocks as f64 * request.tokens_per_block)
        .min(request.prompt_tokens)
}

/// KV tokens this request needs on the node beyond its free room: its uncached prompt
/// plus its expected output, against `capacity * (1 - usage)`. `None` when the node's
/// capacity or KV usage is unknown. (Cached blocks no running request holds count as
/// free in the engine's usage; taking them is not counted against the room.)
pub fn kv_shortfall_tokens(c: &Candidate<'_>, request: &RequestFacts, cached: f64) -> Option<f64> {
    let (capacity, usage) = (c.kv_capacity_tokens?, c.kv_usage?);
    let needed = request.prompt_tokens - cached + request.output_tokens;
    Some((needed - capacity * (1.0 - usage)).max(0.0))
}

/// Skips nodes that do not serve `model`; false when no node at all serves it.
pub fn skip_other_models(candidates: &mut [Candidate<'_>], model: &str) -> bool {
    let mut served = false;
    for c in candidates.iter_mut() {
        if c.node.spec.serves(model) {
            served = true;
        } else {
            c.skip = Some(Skip::ModelNotServed);
        }
    }
    served
}

/// Skips the nodes the caller excluded (a retry avoiding nodes that already failed it).
pub fn skip_excluded(candidates: &mut [Candidate<'_>], excluded: &[&str]) {
    for c in candidates.iter_mut() {
        if excluded.contains(&&*c.node.spec.id) {
            c.skip = Some(Skip::Excluded);
        }
    }
}

/// Mean memory pressure of nodes that reported one: the stand-in for nodes that did not,
/// so silence is neither rewarded nor punished.
pub fn mean_memory_pressure(candidates: &[Candidate<'_>]) -> f64 {
    let known: Vec<f64> = candidates
        .iter()
        .filter_map(|c| c.memory_pressure)
        .collect();
    if known.is_empty() {
        0.0
    } else {
        known.iter().sum::<f64>() / known.len() as f64
    }
}

/// Memory use below which free memory does not change a node's capacity.
pub const MEMORY_KNEE: f64 = 0.8;

/// R1: in-flight load normalised by capability and free GPU memory. Free memory only
/// counts above [`MEMORY_KNEE`] (capacity halves at 90% use, quarters at 95%): engines
/// run fine until their KV cache nears full, and scaling every node by its free memory
/// made all traffic chase whichever node looked emptiest in the last (up to a second
/// old) report.
pub fn least_request_cost(c: &Candidate<'_>, mean_pressure: f64) -> f64 {
    let pressure = c.memory_pressure.unwrap_or(mean_pressure);
    let headroom = ((1.0 - pressure) / (1.0 - MEMORY_KNEE)).clamp(0.05, 1.0);
    (c.load + 1.0) / (c.capability * headroom)
}

/// R3: GPU pressure in [0, 1.25]; decode-heavy requests weigh memory bandwidth more,
/// prefill-heavy ones SM use. Unreported figures count as no pressure.
pub fn gpu_pressure(c: &Candidate<'_>, decode_share: f64) -> f64 {
    let bw = c.bandwidth_utilization.unwrap_or(0.0);
    let sm = c.sm_utilization.unwrap_or(0.0);
    let pcie = c.pcie_utilization.unwrap_or(0.0);
    decode_share * bw * bw + (1.0 - decode_share) * sm * sm + 0.25 * pcie * pcie
}

/// Orders scores ascending with NaN (of either sign) after every number.
pub fn score_order(a: f64, b: f64) -> std::cmp::Ordering {
    a.is_nan()
        .cmp(&b.is_nan())
        .then(a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal))
}

/// Index of the lowest score among eligible candidates; ties go to the longer prefix
/// match, then to the earlier node. A NaN score (only reachable from absurd inputs,
/// e.g. a zero weight times an overflowed load) ranks after every number.
pub fn argmin_score(candidates: &[Candidate<'_>]) -> Option<usize> {
    let mut best: Option<(usize, f64, u32)> = None;
    for (i, c) in candidates.iter().enumerate() {
        let (Some(score), true) = (c.score, c.eligible()) else {
            continue;
        };
        let better = match best {
            None => true,
            Some((_, s, m)) => {
                score_order(score, s).is_lt() || (score == s && c.matched_blocks > m)
            }
        };
        if better {
            best = Some((i, score, c.matched_blocks));
        }
    }
    best.map(|(i, _, _)| i)
}
