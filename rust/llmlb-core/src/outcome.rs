//! How a routed request ended. Its own module because both the request lifecycle and
//! the per-node outcome window speak it.

use crate::error::{CoreError, CoreResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
    Timeout,
    /// Released by the router because no completion came within `request_ttl_s`.
    Expired,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::Expired => "expired",
        }
    }

    pub fn parse(name: &str) -> CoreResult<Self> {
        match name {
            "ok" => Ok(Outcome::Ok),
            "error" => Ok(Outcome::Error),
            "timeout" => Ok(Outcome::Timeout),
            other => Err(CoreError::InvalidInput(format!(
                "unknown outcome {other:?}; expected ok, error or timeout"
            ))),
        }
    }

    pub fn is_failure(self) -> bool {
        self != Outcome::Ok
    }
}
