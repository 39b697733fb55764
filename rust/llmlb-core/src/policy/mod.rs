//! Routing policies, one per file. Each scores the eligible candidates (writing
//! `Candidate::score`, lower is better) and picks one, with the reason.

mod gpu_aware;
mod least_request;
mod llmlb;
mod prefix_aware;
mod random;
mod round_robin;

use crate::config::{PolicyKind, RouterConfig};
use crate::scoring::{Candidate, RequestFacts};

pub use random::RandomPolicy;
pub use round_robin::RoundRobinPolicy;

/// Why the chosen node was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    RoundRobin,
    Random,
    LeastRequest,
    GpuAware,
    PrefixHit,
    LeastCost,
    FallbackLeastRequest,
    FallbackImbalance,
    BreakerOpenSkipped,
    AllSaturated,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RoundRobin => "round_robin",
            Reason::Random => "random",
            Reason::LeastRequest => "least_request",
            Reason::GpuAware => "gpu_aware",
            Reason::PrefixHit => "prefix_hit",
            Reason::LeastCost => "least_cost",
            Reason::FallbackLeastRequest => "fallback_least_request",
            Reason::FallbackImbalance => "fallback_imbalance",
            Reason::BreakerOpenSkipped => "breaker_open_skipped",
            Reason::AllSaturated => "all_saturated",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub index: usize,
    pub reason: Reason,
}

/// The stateful policies' state; the others are plain functions.
#[derive(Debug, Default)]
pub struct Policies {
    round_robin: RoundRobinPolicy,
    random: RandomPolicy,
}

impl Policies {
    pub fn new(seed: u64) -> Self {
        Policies {
            round_robin: RoundRobinPolicy::default(),
            random: RandomPolicy::new(seed),
        }
    }

    pub fn choose(
        &self,
        policy: PolicyKind,
        candidates: &mut [Candidate<'_>],
        request: &RequestFacts,
        config: &RouterConfig,
    ) -> Option<Choice> {
        match policy {
            PolicyKind::RoundRobin => self.round_robin.choose(candidates),
            PolicyKind::Random => self.random.choose(candidates),
            PolicyKind::LeastRequest => least_request::choose(candidates),
            PolicyKind::PrefixAware => prefix_aware::choose(candidates, config),
            PolicyKind::GpuAware => gpu_aware::choose(candidates, request),
            PolicyKind::Llmlb => llmlb::choose(candidates, request, config),
        }
    }
}
