//! `least_request` (R1): the lowest in-flight load per unit of capability and free memory.

use super::{Choice, Decision, Policy, Reason, Registration};
use crate::scoring::{argmin_score, least_request_cost, mean_memory_pressure, Candidate};

pub(super) const REGISTRATION: Registration = Registration {
    name: "least_request",
    params: &[],
    build: |_| Box::new(LeastRequest),
};

#[derive(Debug)]
struct LeastRequest;

/// Writes every eligible candidate's R1 cost (`prefix_aware` ranks with it too).
pub(super) fn score(candidates: &mut [Candidate<'_>]) {
    let mean_pressure = mean_memory_pressure(candidates);
    for c in candidates.iter_mut().filter(|c| c.eligible()) {
        c.score = Some(least_request_cost(c, mean_pressure));
    }
}

impl Policy for LeastRequest {
    fn choose(&self, decision: Decision<'_, '_>) -> Option<Choice> {
        let Decision { candidates, .. } = decision;
        score(candidates);
        argmin_score(candidates).map(|index| Choice {
            index,
            reason: Reason::LeastRequest,
        })
    }
}
