//! `round_robin`: the next node in turn, skipping ineligible ones.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Choice, Reason};
use crate::scoring::{Candidate, Skip};

#[derive(Debug, Default)]
pub struct RoundRobinPolicy {
    next: AtomicUsize,
}

impl RoundRobinPolicy {
    pub fn choose(&self, candidates: &mut [Candidate<'_>]) -> Option<Choice> {
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let skipped_open = candidates[start].skip == Some(Skip::BreakerOpen);
        (0..n)
            .map(|step| (start + step) % n)
            .find(|&i| candidates[i].eligible())
            .map(|index| Choice {
                index,
                reason: if skipped_open {
                    Reason::BreakerOpenSkipped
                } else {
                    Reason::RoundRobin
                },
            })
    }
}
