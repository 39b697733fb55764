//! Tunables of the proxy (the `proxy:` config section) and what Python may change while
//! it runs ([`Control`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use llmlb_core::CanarySplit;

use crate::admission::{AdmissionLimits, KeyRate};

/// Fixed for the proxy's life (a reload that changes them needs a restart).
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Largest request body accepted (413 beyond it).
    pub max_body_bytes: usize,
    /// How long an attempt may wait for its first byte, and a stream between two
    /// chunks (504 before the first byte; a cut stream and `timeout` after it).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Attempts per request (1 = no retry); only connect errors and 5xx before the
    /// first byte are retried.
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Idle upstream connections kept per backend, and for how long.
    pub pool_size: usize,
    pub keepalive_timeout: Duration,
    /// How long a `/v1/models` answer is reused (also for each request's model check).
    pub models_ttl: Duration,
    pub models_fetch_timeout: Duration,
    /// Runtime worker threads (0: one per core).
    pub worker_threads: usize,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            max_body_bytes: 8 * 1024 * 1024,
            request_timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(2),
            max_attempts: 3,
            backoff_base: Duration::from_millis(5),
            backoff_cap: Duration::from_millis(200),
            pool_size: 1024,
            keepalive_timeout: Duration::from_secs(60),
            models_ttl: Duration::from_secs(5),
            models_fetch_timeout: Duration::from_secs(2),
            worker_threads: 0,
        }
    }
}

impl ProxySettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_body_bytes == 0 {
            return Err("max_body_bytes must be positive".into());
        }
        if self.max_attempts < 1 {
            return Err("max_attempts must be at least 1".into());
        }
        for (name, value) in [
            ("request_timeout", self.request_timeout),
            ("connect_timeout", self.connect_timeout),
            ("models_fetch_timeout", self.models_fetch_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("{name} must be positive"));
            }
        }
        if self.backoff_cap < self.backoff_base {
            return Err("need backoff_base <= backoff_cap".into());
        }
        Ok(())
    }
}

/// Full jitter: uniform in `[0, min(cap, base * 2^retry)]`.
pub fn backoff_delay(retry: u32, base: Duration, cap: Duration) -> Duration {
    let ceiling = base.saturating_mul(1u32 << retry.min(20)).min(cap);
    ceiling.mul_f64(fastrand::f64())
}

/// What the routing service decides and may change at any time; swapped whole.
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// Stopping: every new request gets a 503.
    pub draining: bool,
    /// False while a replica warms up from its peers (`/health` answers 503).
    pub warming_up: bool,
    pub canary: Option<CanarySplit>,
    /// Models whose requests are tokenized by the engine's tokenizer before routing.
    pub tokenized_models: HashSet<String>,
    /// Report every decision and first token (other replicas need them).
    pub share_decisions: bool,
    /// Client keys (`Authorization: Bearer KEY`); empty: the proxy is open.
    pub api_keys: Vec<ApiKey>,
    pub admission: AdmissionLimits,
    /// ext_proc: with no node to pick, let Envoy's own load balancing take the request
    /// (answer without a destination) instead of a 503.
    pub ext_proc_fail_open: bool,
}

#[derive(Clone)]
pub struct ApiKey {
    /// What metrics call the key's holder.
    pub name: Arc<str>,
    pub secret: Vec<u8>,
    /// The key's request rate limit (None: unlimited).
    pub rate: Option<KeyRate>,
}

/// Who a request's key says sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyHolder {
    pub name: Arc<str>,
    pub rate: Option<KeyRate>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({})", self.name) // never the secret
    }
}

/// A request without a valid API key where keys are required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unauthorized;

impl Control {
    /// The holder of the key `authorization` carries; `Err` when keys are required and
    /// it carries none of them. Every key is compared in full (constant time per key).
    pub fn authorize(
        &self,
        authorization: Option<&[u8]>,
    ) -> Result<Option<KeyHolder>, Unauthorized> {
        if self.api_keys.is_empty() {
            return Ok(None);
        }
        let given = authorization
            .and_then(|value| value.strip_prefix(b"Bearer "))
            .unwrap_or_default();
        let mut found = None;
        for key in &self.api_keys {
            if constant_time_eq(given, &key.secret) && found.is_none() {
                found = Some(KeyHolder {
                    name: key.name.clone(),
                    rate: key.rate,
                });
            }
        }
        found.map(Some).ok_or(Unauthorized)
    }
}

fn constant_time_eq(given: &[u8], secret: &[u8]) -> bool {
    if given.len() != secret.len() {
        return false;
    }
    given
        .iter()
        .zip(secret)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_are_checked_when_configured() {
        let open = Control::default();
        assert_eq!(open.authorize(None), Ok(None));
        let key = |name: &str, secret: &str| ApiKey {
            name: Arc::from(name),
            secret: secret.as_bytes().to_vec(),
            rate: None,
        };
        let guarded = Control {
            api_keys: vec![key("team-a", "sk-aaaa"), key("team-b", "sk-bbbb")],
            ..Control::default()
        };
        let holder = guarded.authorize(Some(b"Bearer sk-bbbb")).unwrap().unwrap();
        assert_eq!(&*holder.name, "team-b");
        assert_eq!(guarded.authorize(Some(b"Bearer sk-bbb")), Err(Unauthorized));
        assert_eq!(guarded.authorize(Some(b"sk-aaaa")), Err(Unauthorized));
        assert_eq!(guarded.authorize(None), Err(Unauthorized));
        assert!(!format!("{guarded:?}").contains("sk-aaaa"));
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let (base, cap) = (Duration::from_millis(10), Duration::from_millis(50));
        for (retry, ceiling_ms) in [(0, 10.0), (1, 20.0), (2, 40.0), (3, 50.0), (30, 50.0)] {
            let delays: Vec<f64> = (0..400)
                .map(|_| backoff_delay(retry, base, cap).as_secs_f64() * 1e3)
                .collect();
            assert!(delays.iter().all(|d| (0.0..=ceiling_ms).contains(d)));
            let max = delays.iter().cloned().fold(0.0, f64::max);
            assert!(max > ceiling_ms * 0.8, "spread over the range: {max}");
        }
    }
}
