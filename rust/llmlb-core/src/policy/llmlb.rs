//! `llmlb`, the default: R1, R2 and R3 in one cost — the estimated time to first token
//! (queued prefill and decode load, plus this request's uncached tokens, at the node's
//! prefill rate), raised by GPU and memory pressure. Its parameters weigh the three.

use super::{Choice, Decision, ParamSpec, Policy, Reason, Registration};
use crate::scoring::{
    argmin_score, gpu_pressure, Candidate, RequestFacts, DECODE_TOKENS_PER_RUNNING,
};

/// Queue and decode load (R1). 0 ignores load.
const LOAD: &str = "load";
/// Credit for cached prefix tokens (R2): 1 counts each cached token as free, 0 ignores
/// the cache.
const PREFIX: &str = "prefix";
/// GPU pressure penalty (R3): the cost is multiplied by `1 + gpu * pressure`.
const GPU: &str = "gpu";

/// Defaults from the simulated cluster (`llmlb bench`, docs/benchmark.md): with the load
/// weight at 1 the load noise of ~100 running requests per node outweighed the credit
/// for a cached conversation, and the policy lost its prefix hits.
pub(super) const REGISTRATION: Registration = Registration {
    name: "llmlb",
    params: &[
        ParamSpec::new(LOAD, 0.25, 0.0),
        ParamSpec::new(PREFIX, 1.0, 0.0),
        ParamSpec::new(GPU, 0.5, 0.0),
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
        };
        for c in candidates.iter_mut().filter(|c| c.eligible()) {
            let memory = c.memory_pressure.unwrap_or(0.0);
            let pressure = gpu_pressure(c, request.decode_share) + memory * memory;
            c.score = Some(estimated_ttft_s(c, request, &weights) * (1.0 + weights.gpu * pressure));
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

/// Estimated seconds to first token on this node: its queued prefill plus decode
/// interference, plus this request's uncached tokens, at the node's prefill rate.
fn estimated_ttft_s(c: &Candidate<'_>, request: &RequestFacts, weights: &Weights) -> f64 {
    let cached = (weights.prefix * c.matched_blocks as f64 * request.tokens_per_block)
        .min(request.prompt_tokens);
    let own = request.prompt_tokens - cached;
    let queue = weights.load * (c.backlog_tokens + DECODE_TOKENS_PER_RUNNING * c.load);
    (queue + own) / c.prefill_rate
}
