//! The one error type of the core; the binding maps each variant to its own Python class.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum CoreError {
    #[error("unknown node {0:?}")]
    UnknownNode(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("no node serves model {0:?}")]
    UnknownModel(String),
    #[error("no node can take the request: {0}")]
    NoAvailableNode(String),
    #[error("request id {0:?} is already in flight")]
    DuplicateRequest(String),
    #[error("node table is full: at most {0} nodes")]
    TableFull(usize),
}

pub type CoreResult<T> = Result<T, CoreError>;

/// Rejects NaN, infinities and negatives with a message naming the field.
pub(crate) fn check_non_negative(field: &str, value: f64) -> CoreResult<f64> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(CoreError::InvalidInput(format!(
            "{field} must be a finite number >= 0, got {value}"
        )))
    }
}

/// Rejects anything outside [0, 1] (fractions, not percentages).
pub(crate) fn check_fraction(field: &str, value: f64) -> CoreResult<f64> {
    if value.is_finite() && (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(CoreError::InvalidInput(format!(
            "{field} must be a fraction in [0, 1], got {value}"
        )))
    }
}
