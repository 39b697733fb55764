//! `least_request` (R1): the lowest in-flight load per unit of capability and free memory.

use super::{Choice, Reason};
use crate::scoring::{argmin_score, least_request_cost, mean_memory_pressure, Candidate};

pub fn score(candidates: &mut [Candidate<'_>]) {
    let mean_pressure = mean_memory_pressure(candidates);
    for c in candidates.iter_mut().filter(|c| c.eligible()) {
        c.score = Some(least_request_cost(c, mean_pressure));
    }
}

pub fn choose(candidates: &mut [Candidate<'_>]) -> Option<Choice> {
    score(candidates);
    argmin_score(candidates).map(|index| Choice {
        index,
        reason: Reason::LeastRequest,
    })
}
