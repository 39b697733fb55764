//! Router settings. Python parses files and validates their shape; [`RouterConfig::validate`]
//! checks the values, so a bad config is refused whichever door it came in by.

use crate::error::{CoreError, CoreResult};
use crate::policy::{PolicyKind, PolicyParams};

/// The policy of a default config.
pub const DEFAULT_POLICY: &str = "llmlb";

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
    /// (8 to ~170 bytes per block, by how much the prompts branch).
    pub prefix_cache_size: usize,
    /// GPU metrics older than this are unknown, not trusted.
    pub metrics_ttl_s: f64,
    /// A request not completed within this window is released as expired.
    pub request_ttl_s: f64,
    /// Length of the per-node outcome window (`load_balance_window`).
    pub load_balance_window_s: f64,
    /// KV-cache (or, without a KV figure, GPU memory) use at or above which a node
    /// counts as full: it is skipped only while it also cannot admit (its waiting queue
    /// grows or it preempts), or, reporting no KV figure, on GPU memory alone. See
    /// `scoring::skip_reason`.
    pub memory_saturation_threshold: f64,
    /// Output tokens expected of a request that gives no `max_tokens`.
    pub default_output_tokens: u32,
    /// Most output tokens a request is expected to produce, whatever its `max_tokens`
    /// (clients often send the model's whole context length).
    pub max_output_tokens: u32,
    /// How long a prompt routed to a node that publishes KV events stays credited there
    /// unconfirmed (between one and two of these): long enough for its prefill to run
    /// and the engine's `BlockStored` to arrive.
    pub prefix_guess_ttl_s: f64,
    /// What a block a node's engine holds below the GPU (a `medium` other than GPU in
    /// its KV events: CPU or disk offload) counts for, against one in GPU memory.
    pub offloaded_prefix_weight: f64,
    /// Every policy's parameters, not only `policy`'s: a request may name another.
    pub policies: PolicyParams,
    /// Seed of the `random` policy.
    pub seed: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            policy: DEFAULT_POLICY
                .parse()
                .expect("the default policy is registered"),
            token_block_size: 16,
            char_block_size: 64,
            chars_per_token: 4.0,
            prefix_cache_size: 1_000_000,
            metrics_ttl_s: 5.0,
            request_ttl_s: 600.0,
            load_balance_window_s: 30.0,
            memory_saturation_threshold: 0.95,
            default_output_tokens: 256,
            max_output_tokens: 4096,
            prefix_guess_ttl_s: 5.0,
            offloaded_prefix_weight: 0.5,
            policies: PolicyParams::default(),
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
        positive("prefix_guess_ttl_s", self.prefix_guess_ttl_s)?;
        let weight = self.offloaded_prefix_weight;
        if !(0.0..=1.0).contains(&weight) {
            return Err(CoreError::InvalidConfig(format!(
                "offloaded_prefix_weight must be in [0, 1], got {weight}"
            )));
        }
        let saturation = self.memory_saturation_threshold;
        if !(saturation > 0.0 && saturation <= 1.0) {
            return Err(CoreError::InvalidConfig(format!(
                "memory_saturation_threshold must be in (0, 1], got {saturation}"
            )));
        }
        if self.default_output_tokens > self.max_output_tokens {
            return Err(CoreError::InvalidConfig(format!(
                "default_output_tokens ({}) exceeds max_output_tokens ({})",
                self.default_output_tokens, self.max_output_tokens
            )));
        }
        self.policies.validate()
    }

    /// The output estimate of a request: its `max_tokens`, capped, or the default.
    pub fn expected_output_tokens(&self, requested: Option<u32>) -> u32 {
        requested
            .unwrap_or(self.default_output_tokens)
            .min(self.max_output_tokens)
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

    #[test]
    fn policy_parameters_are_validated() {
        let mut config = RouterConfig::default();
        let prefix_aware = "prefix_aware".parse().unwrap();
        config
            .policies
            .set(prefix_aware, "balance_rel_threshold", 0.5)
            .unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("policies.prefix_aware.balance_rel_threshold"),
            "{err}"
        );
    }
}
