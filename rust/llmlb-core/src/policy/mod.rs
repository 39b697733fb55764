//! Routing policies, one per file, and the registry that lists them.
//!
//! A policy scores the eligible candidates (writing `Candidate::score`, lower is
//! better) and picks one, with the reason. Adding one takes a file here that defines a
//! [`Registration`] (name, parameters, constructor) and a line in [`REGISTRY`]; the
//! router, the config, the binding's `POLICIES` and the YAML schema follow from it.

mod gpu_aware;
mod least_request;
mod llmlb;
mod params;
mod prefix_aware;
mod random;
mod round_robin;

use std::fmt;
use std::str::FromStr;

use crate::error::{CoreError, CoreResult};
use crate::scoring::{Candidate, RequestFacts};

pub use params::{ParamSpec, Params};

/// Every policy the router knows, in the order `POLICIES` lists them.
pub static REGISTRY: &[Registration] = &[
    round_robin::REGISTRATION,
    random::REGISTRATION,
    least_request::REGISTRATION,
    prefix_aware::REGISTRATION,
    gpu_aware::REGISTRATION,
    llmlb::REGISTRATION,
];

pub trait Policy: fmt::Debug + Send + Sync {
    /// Scores the eligible candidates and picks one; `None` when none is eligible.
    fn choose(&self, decision: Decision<'_, '_>) -> Option<Choice>;
}

/// What a policy decides from: the candidates (scored in place), the request and the
/// policy's parameters.
pub struct Decision<'a, 'n> {
    pub candidates: &'a mut [Candidate<'n>],
    pub request: &'a RequestFacts,
    pub params: &'a Params,
}

/// What the registry knows about a policy.
pub struct Registration {
    pub name: &'static str,
    pub params: &'static [ParamSpec],
    /// Builds the policy and its state; `seed` seeds the random ones.
    pub build: fn(seed: u64) -> Box<dyn Policy>,
}

/// A registered policy, by its place in [`REGISTRY`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyKind(u8);

impl PolicyKind {
    pub fn all() -> impl Iterator<Item = PolicyKind> {
        (0..REGISTRY.len()).map(|i| PolicyKind(i as u8))
    }

    pub fn registration(self) -> &'static Registration {
        &REGISTRY[self.0 as usize]
    }

    pub fn as_str(self) -> &'static str {
        self.registration().name
    }

    fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Debug for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PolicyKind({})", self.as_str())
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PolicyKind {
    type Err = CoreError;

    fn from_str(name: &str) -> CoreResult<Self> {
        PolicyKind::all()
            .find(|p| p.as_str() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = REGISTRY.iter().map(|r| r.name).collect();
                CoreError::InvalidConfig(format!(
                    "unknown policy {name:?}; known policies: {}",
                    known.join(", ")
                ))
            })
    }
}

/// Parameters of every registered policy (a canary may route with any of them).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyParams(Vec<Params>);

impl Default for PolicyParams {
    fn default() -> Self {
        PolicyParams(
            REGISTRY
                .iter()
                .map(|r| Params::defaults(r.name, r.params))
                .collect(),
        )
    }
}

impl PolicyParams {
    pub fn of(&self, policy: PolicyKind) -> &Params {
        &self.0[policy.index()]
    }

    pub fn set(&mut self, policy: PolicyKind, name: &str, value: f64) -> CoreResult<()> {
        self.0[policy.index()].set(name, value)
    }

    pub fn validate(&self) -> CoreResult<()> {
        self.0.iter().try_for_each(Params::validate)
    }
}

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

/// One instance of every registered policy, built once per router so that the
/// stateful ones (round robin's turn, random's stream) keep their state across
/// reconfiguration.
#[derive(Debug)]
pub struct Policies(Vec<Box<dyn Policy>>);

impl Policies {
    pub fn new(seed: u64) -> Self {
        Policies(REGISTRY.iter().map(|r| (r.build)(seed)).collect())
    }

    pub fn choose(
        &self,
        policy: PolicyKind,
        candidates: &mut [Candidate<'_>],
        request: &RequestFacts,
        params: &PolicyParams,
    ) -> Option<Choice> {
        self.0[policy.index()].choose(Decision {
            candidates,
            request,
            params: params.of(policy),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        let names: Vec<&str> = PolicyKind::all().map(PolicyKind::as_str).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for p in PolicyKind::all() {
            assert_eq!(p.as_str().parse::<PolicyKind>().unwrap(), p);
        }
        let err = "fastest".parse::<PolicyKind>().unwrap_err();
        assert!(err.to_string().contains("round_robin"));
    }

    #[test]
    fn defaults_are_valid_and_parameter_names_unique_per_policy() {
        PolicyParams::default().validate().unwrap();
        for r in REGISTRY {
            let mut names: Vec<&str> = r.params.iter().map(|s| s.name).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), r.params.len(), "{}", r.name);
        }
    }
}
