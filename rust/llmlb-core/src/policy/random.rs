//! `random`: a uniformly random eligible node (seeded, so runs can be replayed).

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Choice, Decision, Policy, Reason, Registration};

pub(super) const REGISTRATION: Registration = Registration {
    name: "random",
    params: &[],
    build: |seed| Box::new(RandomPolicy::new(seed)),
};

#[derive(Debug)]
struct RandomPolicy {
    state: AtomicU64,
}

/// splitmix64: one atomic add per draw, no lock.
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl RandomPolicy {
    fn new(seed: u64) -> Self {
        RandomPolicy {
            state: AtomicU64::new(seed),
        }
    }
}

impl Policy for RandomPolicy {
    fn choose(&self, decision: Decision<'_, '_>) -> Option<Choice> {
        let Decision { candidates, .. } = decision;
        let eligible = candidates.iter().filter(|c| c.eligible()).count();
        if eligible == 0 {
            return None;
        }
        let draw = splitmix64(
            self.state
                .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed),
        );
        let pick = (draw % eligible as u64) as usize;
        let index = candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.eligible())
            .nth(pick)
            .map(|(i, _)| i)?;
        Some(Choice {
            index,
            reason: Reason::Random,
        })
    }
}
