//! `gpu_aware` (R3): `least_request` with a penalty that grows with SM, memory-bandwidth
//! and PCIe pressure (saturated nodes are already skipped when candidates are built).

use super::{Choice, Reason};
use crate::scoring::{
    argmin_score, gpu_pressure, least_request_cost, mean_memory_pressure, Candidate, RequestFacts,
};

/// How much a fully pressured GPU multiplies a node's cost.
const PRESSURE_SCALE: f64 = 2.0;

pub fn choose(candidates: &mut [Candidate<'_>], request: &RequestFacts) -> Option<Choice> {
    let mean_pressure = mean_memory_pressure(candidates);
    for c in candidates.iter_mut().filter(|c| c.eligible()) {
        let penalty = 1.0 + PRESSURE_SCALE * gpu_pressure(c, request.decode_share);
        c.score = Some(least_request_cost(c, mean_pressure) * penalty);
    }
    argmin_score(candidates).map(|index| Choice {
        index,
        reason: Reason::GpuAware,
    })
}
