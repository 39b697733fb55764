//! `llmlb`, the default: R1, R2 and R3 in one cost — the estimated time to first token
//! (queued prefill and decode load, plus this request's uncached tokens, at the node's
//! prefill rate), raised by GPU and memory pressure. Weights are `config.weights`.

use super::{Choice, Reason};
use crate::config::RouterConfig;
use crate::scoring::{argmin_score, estimated_ttft_s, gpu_pressure, Candidate, RequestFacts};

pub fn choose(
    candidates: &mut [Candidate<'_>],
    request: &RequestFacts,
    config: &RouterConfig,
) -> Option<Choice> {
    let weights = &config.weights;
    for c in candidates.iter_mut().filter(|c| c.eligible()) {
        let memory = c.memory_pressure.unwrap_or(0.0);
        let pressure = gpu_pressure(c, request.decode_share) + memory * memory;
        c.score = Some(estimated_ttft_s(c, request, weights) * (1.0 + weights.gpu * pressure));
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
