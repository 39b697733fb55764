//! Router settings. Python parses files and validates their shape; [`RouterConfig::validate`]
//! checks the values, so a bad config is refused whichever door it came in by.

use std::fmt;
use std::str::FromStr;

use crate::error::{CoreError, CoreResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    RoundRobin,
    Random,
    LeastRequest,
    PrefixAware,
    GpuAware,
    Llmlb,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 6] = [
        PolicyKind::RoundRobin,
        PolicyKind::Random,
        PolicyKind::LeastRequest,
        PolicyKind::PrefixAware,
        PolicyKind::GpuAware,
        PolicyKind::Llmlb,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "round_robin",
            PolicyKind::Random => "random",
            PolicyKind::LeastRequest => "least_request",
            PolicyKind::PrefixAware => "prefix_aware",
            PolicyKind::GpuAware => "gpu_aware",
            PolicyKind::Llmlb => "llmlb",
        }
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
        PolicyKind::ALL
            .into_iter()
            .find(|p| p.as_str() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = PolicyKind::ALL.iter().map(|p| p.as_str()).collect();
                CoreError::InvalidConfig(format!(
                    "unknown policy {name:?}; known policies: {}",
                    known.join(", ")
                ))
            })
    }
}

/// Weights of the `llmlb` policy's three terms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    /// Queue and decode load (R1). 0 ignores load.
    pub load: f64,
    /// Credit for cached prefix tokens (R2): 1 counts each cached token as free, 0 ignores the cache.
    pub prefix: f64,
    /// GPU pressure penalty (R3): the cost is multiplied by `1 + gpu * pressure`.
    pub gpu: f64,
}

/// Defaults from the simulated cluster (`llmlb bench`, docs/benchmark.md): with the load
/// weight at 1 the load noise of ~100 running requests per node outweighed the credit
/// for a cached conversation, and the policy lost its prefix hits.
impl Default for Weights {
    fn default() -> Self {
        Weights {
            load: 0.25,
            prefix: 1.0,
            gpu: 0.5,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    pub policy: PolicyKind,
    /// Tokens per prefix block when the caller gives token ids.
    pub token_block_size: usize,
    /// Bytes per prefix block when the caller gives text.
    pub char_block_size: usize,
    /// Bytes of text per token, to estimate token counts of text prompts.
    pub chars_per_token: f64,
    /// Most blocks the prefix index holds (`scheduling.prefix_cache_size`). Keep it above
    /// the cluster's total KV blocks, or the index forgets prefixes the engines still hold
    /// (about 110 bytes per block).
    pub prefix_cache_size: usize,
    /// GPU metrics older than this are unknown, not trusted.
    pub metrics_ttl_s: f64,
    /// A request not completed within this window is released as expired.
    pub request_ttl_s: f64,
    /// Length of the per-node outcome window (`load_balance_window`).
    pub load_balance_window_s: f64,
    /// `prefix_aware`: leave the prefix holder when its load exceeds the least loaded
    /// node's by more than this many requests ...
    pub balance_abs_threshold: f64,
    /// ... and by more than this factor.
    pub balance_rel_threshold: f64,
    /// No new requests to a node whose GPU memory (or KV cache) use is at or above this.
    pub memory_saturation_threshold: f64,
    pub weights: Weights,
    /// Seed of the `random` policy.
    pub seed: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            policy: PolicyKind::Llmlb,
            token_block_size: 16,
            char_block_size: 64,
            chars_per_token: 4.0,
            prefix_cache_size: 1_000_000,
            metrics_ttl_s: 5.0,
            request_ttl_s: 600.0,
            load_balance_window_s: 30.0,
            balance_abs_threshold: 8.0,
            balance_rel_threshold: 1.5,
            memory_saturation_threshold: 0.95,
            weights: Weights::default(),
            seed: 0,
        }
    }
}

fn positive(field: &str, value: f64) -> CoreResult<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(CoreError::InvalidConfig(format!(
            "{field} must be a finite number > 0, got {value}"
        )))
    }
}

fn non_negative(field: &str, value: f64) -> CoreResult<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(CoreError::InvalidConfig(format!(
            "{field} must be a finite number >= 0, got {value}"
        )))
    }
}

impl RouterConfig {
    pub fn validate(&self) -> CoreResult<()> {
        positive("token_block_size", self.token_block_size as f64)?;
        positive("char_block_size", self.char_block_size as f64)?;
        if !(0.1..=100.0).contains(&self.chars_per_token) {
            return Err(CoreError::InvalidConfig(format!(
                "chars_per_token must be in [0.1, 100], got {}",
                self.chars_per_token
            )));
        }
        positive("prefix_cache_size", self.prefix_cache_size as f64)?;
        positive("metrics_ttl_s", self.metrics_ttl_s)?;
        positive("request_ttl_s", self.request_ttl_s)?;
        positive("load_balance_window_s", self.load_balance_window_s)?;
        non_negative("balance_abs_threshold", self.balance_abs_threshold)?;
        if !(self.balance_rel_threshold.is_finite() && self.balance_rel_threshold >= 1.0) {
            return Err(CoreError::InvalidConfig(format!(
                "balance_rel_threshold must be >= 1, got {}",
                self.balance_rel_threshold
            )));
        }
        let saturation = self.memory_saturation_threshold;
        if !(saturation > 0.0 && saturation <= 1.0) {
            return Err(CoreError::InvalidConfig(format!(
                "memory_saturation_threshold must be in (0, 1], got {saturation}"
            )));
        }
        non_negative("weights.load", self.weights.load)?;
        non_negative("weights.prefix", self.weights.prefix)?;
        non_negative("weights.gpu", self.weights.gpu)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        RouterConfig::default().validate().unwrap();
    }

    #[test]
    fn policy_names_round_trip() {
        for p in PolicyKind::ALL {
            assert_eq!(p.as_str().parse::<PolicyKind>().unwrap(), p);
        }
        let err = "fastest".parse::<PolicyKind>().unwrap_err();
        assert!(err.to_string().contains("round_robin"));
    }

    #[test]
    fn bad_values_are_named() {
        let config = RouterConfig {
            metrics_ttl_s: f64::NAN,
            ..RouterConfig::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("metrics_ttl_s"));
        let config = RouterConfig {
            memory_saturation_threshold: 95.0,
            ..RouterConfig::default()
        };
        assert!(config.validate().is_err());
    }
}
