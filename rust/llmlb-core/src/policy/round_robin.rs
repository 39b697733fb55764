//! `round_robin`: the next node in turn, skipping ineligible ones.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Choice, Decision, Policy, Reason, Registration};
use crate::scoring::Skip;

pub(super) const REGISTRATION: Registration = Registration {
    name: "round_robin",
    params: &[],
    build: |_| Box::new(RoundRobinPolicy::default()),
};

#[derive(Debug, Default)]
struct RoundRobinPolicy {
    next: AtomicUsize,
}

impl Policy for RoundRobinPolicy {
    fn choose(&self, decision: Decision<'_, '_>) -> Option<Choice> {
        let Decision { candidates, .. } = decision;
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
