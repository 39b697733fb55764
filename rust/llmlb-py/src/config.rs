//! `RouterConfig`: the core's settings as an immutable Python value.

use std::collections::HashMap;

use llmlb_core as core;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{to_py, IntoPyResult};

#[pyclass(frozen, module = "llmlb_fast._core", eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct RouterConfig {
    pub inner: core::RouterConfig,
}

#[pymethods]
impl RouterConfig {
    #[new]
    #[pyo3(signature = (
        *,
        policy = "llmlb",
        token_block_size = 16,
        char_block_size = 64,
        chars_per_token = 4.0,
        prefix_cache_size = 1_000_000,
        metrics_ttl_s = 5.0,
        request_ttl_s = 600.0,
        load_balance_window_s = 30.0,
        balance_abs_threshold = 8.0,
        balance_rel_threshold = 1.5,
        memory_saturation_threshold = 0.95,
        weights = None,
        seed = 0,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        policy: &str,
        token_block_size: usize,
        char_block_size: usize,
        chars_per_token: f64,
        prefix_cache_size: usize,
        metrics_ttl_s: f64,
        request_ttl_s: f64,
        load_balance_window_s: f64,
        balance_abs_threshold: f64,
        balance_rel_threshold: f64,
        memory_saturation_threshold: f64,
        weights: Option<HashMap<String, f64>>,
        seed: u64,
    ) -> PyResult<Self> {
        let inner = core::RouterConfig {
            policy: policy.parse().py_err()?,
            token_block_size,
            char_block_size,
            chars_per_token,
            prefix_cache_size,
            metrics_ttl_s,
            request_ttl_s,
            load_balance_window_s,
            balance_abs_threshold,
            balance_rel_threshold,
            memory_saturation_threshold,
            weights: parse_weights(weights)?,
            seed,
        };
        inner.validate().py_err()?;
        Ok(RouterConfig { inner })
    }

    #[getter]
    fn policy(&self) -> &'static str {
        self.inner.policy.as_str()
    }
    #[getter]
    fn token_block_size(&self) -> usize {
        self.inner.token_block_size
    }
    #[getter]
    fn char_block_size(&self) -> usize {
        self.inner.char_block_size
    }
    #[getter]
    fn chars_per_token(&self) -> f64 {
        self.inner.chars_per_token
    }
    #[getter]
    fn prefix_cache_size(&self) -> usize {
        self.inner.prefix_cache_size
    }
    #[getter]
    fn metrics_ttl_s(&self) -> f64 {
        self.inner.metrics_ttl_s
    }
    #[getter]
    fn request_ttl_s(&self) -> f64 {
        self.inner.request_ttl_s
    }
    #[getter]
    fn load_balance_window_s(&self) -> f64 {
        self.inner.load_balance_window_s
    }
    #[getter]
    fn balance_abs_threshold(&self) -> f64 {
        self.inner.balance_abs_threshold
    }
    #[getter]
    fn balance_rel_threshold(&self) -> f64 {
        self.inner.balance_rel_threshold
    }
    #[getter]
    fn memory_saturation_threshold(&self) -> f64 {
        self.inner.memory_saturation_threshold
    }
    #[getter]
    fn weights(&self) -> HashMap<&'static str, f64> {
        let w = self.inner.weights;
        HashMap::from([("load", w.load), ("prefix", w.prefix), ("gpu", w.gpu)])
    }
    #[getter]
    fn seed(&self) -> u64 {
        self.inner.seed
    }

    /// All settings as a dict (keyword arguments of the constructor).
    fn to_dict<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(slf.py());
        for name in FIELDS {
            dict.set_item(name, slf.getattr(name)?)?;
        }
        Ok(dict)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let parts: PyResult<Vec<String>> = FIELDS
            .iter()
            .map(|name| Ok(format!("{name}={}", slf.getattr(name)?.repr()?)))
            .collect();
        Ok(format!("RouterConfig({})", parts?.join(", ")))
    }
}

const FIELDS: [&str; 13] = [
    "policy",
    "token_block_size",
    "char_block_size",
    "chars_per_token",
    "prefix_cache_size",
    "metrics_ttl_s",
    "request_ttl_s",
    "load_balance_window_s",
    "balance_abs_threshold",
    "balance_rel_threshold",
    "memory_saturation_threshold",
    "weights",
    "seed",
];

fn parse_weights(weights: Option<HashMap<String, f64>>) -> PyResult<core::Weights> {
    let mut parsed = core::Weights::default();
    for (key, value) in weights.unwrap_or_default() {
        match key.as_str() {
            "load" => parsed.load = value,
            "prefix" => parsed.prefix = value,
            "gpu" => parsed.gpu = value,
            other => {
                return Err(to_py(core::CoreError::InvalidConfig(format!(
                    "unknown weight {other:?}; expected load, prefix or gpu"
                ))))
            }
        }
    }
    Ok(parsed)
}
