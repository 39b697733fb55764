//! `llmlb`, the default: R1, R2 and R3 in one cost — the estimated time to first token
//! (queued prefill and decode load, plus this request's uncached tokens, plus the wait
//! for KV room when they and the expected output do not fit, at the node's prefill
//! rate), raised by GPU pressure. Its parameters weigh the parts.
//!
//! Memory enters once. When the node's KV capacity and usage are known, as the wait
//! for room: a node that holds the prompt's prefix needs room only for the rest, so a
//! busy holder at 97% usage keeps its requests unless moving them is cheaper (the
//! recompute of the prefix elsewhere is the uncached-token term of the other node).
//! The engine frees KV as running requests finish; the wait counts the missing tokens
//! at the node's prefill rate, the same order as the release rate of a busy engine
//! (used KV over the mean time a request runs). Without capacity or usage, as the
//! squared memory use in the pressure factor.

use super::{Choice, Decision, ParamSpec, Policy, Reason, Registration};
use crate::scoring::{
    argmin_score, cached_tokens, gpu_pressure, kv_shortfall_tokens, Candidate, RequestFacts,
    DECODE_TOKENS_PER_RUNNING,
};

/// Queue and decode load (R1). 0 ignores load.
const LOAD: &str = "load";
/// Credit for cached prefix tokens (R2): 1 counts each cached token as free, 0 ignores
/// the cache.
const PREFIX: &str = "prefix";
/// GPU pressure penalty (R3): the cost is multiplied by `1 + gpu * pressure`.
const GPU: &str = "gpu";
/// Weight of the wait for KV room (tokens that do not fit, at the prefill rate).
const MEMORY: &str = "memory";

/// Defaults from the simulated cluster (`llmlb bench`, docs/benchmark.md): with the load
/// weight at 1 the load noise of ~100 running requests per node outweighed the credit
/// for a cached conversation, and the policy lost its prefix hits.
pub(super) const REGISTRATION: Registration = Registration {
    name: "llmlb",
    params: &[
        ParamSpec::new(LOAD, 0.25, 0.0),
        ParamSpec::new(PREFIX, 1.0, 0.0),
        ParamSpec::new(GPU, 0.5, 0.0),
        ParamSpec::new(MEMORY, 1.0, 0.0),
    ],
    build: |_| Box::new(Llmlb),
};

#[derive(Debug)]
struct Llmlb;

#[derive(Debug, Clone, Copy)]
struct Weights {
    load: f64,
    prefix: f64,
    gpu: f64,
    memory: f64,
}

impl Policy for Llmlb {
    fn choose(&self, decision: Decision<'_, '_>) -> Option<Choice> {
        let Decision {
            candidates,
            request,
            params,
        } = decision;
        let weights = Weights {
            load: params.get(LOAD),
            prefix: params.get(PREFIX),
            gpu: params.get(GPU),
            memory: params.get(MEMORY),
        };
        for c in candidates.iter_mut().filter(|c| c.eligible()) {
            c.score = Some(score(c, request, &weights));
        }
        let index = argmin_score(candidates)?;
        let longest = candidates
            .iter()
            .filter(|c| c.eligible())
            .map(|c| c.matched_blocks)
            .max()
            .unwrap_or(0);
        let chosen = candidates[index].matched_blocks;
        let reason = if chosen > 0 && chosen == longest {
            Reason::PrefixHit
        } else {
            Reason::LeastCost
        };
        Some(Choice { index, reason })
    }
}

fn score(c: &Candidate<'_>, request: &RequestFacts, weights: &Weights) -> f64 {
    let cached = cached_tokens(c, request, weights.prefix);
    let (wait_tokens, memory_pressure) = match kv_shortfall_tokens(c, request, cached) {
        Some(shortfall) => (weights.memory * shortfall, 0.0),
        None => (0.0, c.memory_pressure.unwrap_or(0.0).powi(2)),
    };
    let pressure = gpu_pressure(c, request.decode_share) + memory_pressure;
    estimated_ttft_s(c, request, cached, wait_tokens, weights) * (1.0 + weights.gpu * pressure)
}

/// Estimated seconds to first token on this node: its queued prefill plus decode
/// interference, this request's uncached tokens and the tokens it waits for KV room
/// for, at the node's prefill rate.
fn estimated_ttft_s(
    c: &Candidate<'_>,
    request: &RequestFacts,
    cached: f64,
    wait_tokens: f64,
    weights: &Weights,
) -> f64 {
    let own = request.prompt_tokens - cached;
    let queue = weights.load * (c.backlog_tokens + DECODE_TOKENS_PER_RUNNING * c.load);
    (queue + own + wait_tokens) / c.prefill_rate
}
