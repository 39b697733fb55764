//! Canary split (R8): a stable share of requests is routed by another policy.
//!
//! A request's bucket comes from a hash of its session id (so a session stays on one
//! side), else of its request id, else a random draw the caller supplies. The hash is
//! XXH3-64 with the crate's [`HASH_SEED`], so buckets are the same in every process and
//! every transport (gRPC, the HTTP proxy, ext_proc).

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::error::{CoreError, CoreResult};
use crate::hashing::HASH_SEED;
use crate::policy::PolicyKind;

pub const BUCKETS: u64 = 10_000;

/// The bucket of a session or request id, in `0..BUCKETS`.
pub fn bucket_of(key: &str) -> u64 {
    xxh3_64_with_seed(key.as_bytes(), HASH_SEED) % BUCKETS
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CanarySplit {
    pub policy: PolicyKind,
    pub percent: f64,
    threshold: u64,
}

impl CanarySplit {
    pub fn new(policy: PolicyKind, percent: f64) -> CoreResult<Self> {
        if !(0.0..=100.0).contains(&percent) {
            return Err(CoreError::InvalidInput(format!(
                "canary percent must be in [0, 100], got {percent}"
            )));
        }
        let threshold = (percent * BUCKETS as f64 / 100.0).round() as u64;
        Ok(CanarySplit {
            policy,
            percent,
            threshold,
        })
    }

    /// The canary policy for a request in the canary share, else `None`. `key` is the
    /// session id, else the request id; `draw` (any random number) decides when both
    /// are empty.
    pub fn choose(&self, key: &str, draw: u64) -> Option<PolicyKind> {
        let bucket = if key.is_empty() {
            draw % BUCKETS
        } else {
            bucket_of(key)
        };
        (bucket < self.threshold).then_some(self.policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_edges_and_stickiness() {
        let policy: PolicyKind = "round_robin".parse().unwrap();
        let none = CanarySplit::new(policy, 0.0).unwrap();
        let all = CanarySplit::new(policy, 100.0).unwrap();
        let some = CanarySplit::new(policy, 10.0).unwrap();
        let chosen = (0..20_000)
            .filter(|i| some.choose(&format!("s{i}"), 0).is_some())
            .count();
        assert!((1_800..2_200).contains(&chosen), "{chosen}");
        for i in 0..100 {
            let key = format!("s{i}");
            assert_eq!(none.choose(&key, 0), None);
            assert_eq!(all.choose(&key, 0), Some(policy));
            assert_eq!(some.choose(&key, 1), some.choose(&key, 2));
        }
        assert!(CanarySplit::new(policy, 100.5).is_err());
        assert!(CanarySplit::new(policy, f64::NAN).is_err());
    }
}
