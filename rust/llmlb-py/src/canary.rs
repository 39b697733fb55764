//! `CanarySplit`: the core's choice of which requests a canary policy routes.

use llmlb_core as core;
use pyo3::prelude::*;

use crate::errors::IntoPyResult;

#[pyclass(frozen, module = "llmlb_fast._core")]
pub struct CanarySplit {
    pub inner: core::CanarySplit,
}

#[pymethods]
impl CanarySplit {
    #[new]
    fn new(policy: &str, percent: f64) -> PyResult<Self> {
        let policy: core::PolicyKind = policy.parse().py_err()?;
        core::CanarySplit::new(policy, percent)
            .py_err()
            .map(|inner| CanarySplit { inner })
    }
    #[getter]
    fn policy(&self) -> &'static str {
        self.inner.policy.as_str()
    }
    #[getter]
    fn percent(&self) -> f64 {
        self.inner.percent
    }
    /// The canary policy's name for a request in the canary share, else None. `key`:
    /// the session id, else the request id; `draw` decides when both are empty.
    fn choose(&self, key: &str, draw: u64) -> Option<&'static str> {
        self.inner.choose(key, draw).map(|p| p.as_str())
    }
}

/// A session or request id's bucket in `0..10_000` (the same in every process).
#[pyfunction]
pub fn canary_bucket(key: &str) -> u64 {
    core::canary::bucket_of(key)
}
