//! `RouterConfig`: the core's settings as an immutable Python value. Every argument is
//! optional and defaults from the core's `RouterConfig::default()`, the one home of
//! the defaults.

use std::collections::BTreeMap;

use llmlb_core as core;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{to_py, IntoPyResult};

#[pyclass(frozen, module = "llmlb_fast._core", eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct RouterConfig {
    pub inner: core::RouterConfig,
}

/// `{policy: {parameter: value}}`, as Python passes and reads it.
type PolicyTable = BTreeMap<String, BTreeMap<String, f64>>;

/// Keyword arguments from before policies had parameters of their own: each names one
/// parameter of one policy. `weights` (the `llmlb` policy's, as a dict) is the third.
const FLAT_ALIASES: [(&str, &str, &str); 2] = [
    (
        "balance_abs_threshold",
        "prefix_aware",
        "balance_abs_threshold",
    ),
    (
        "balance_rel_threshold",
        "prefix_aware",
        "balance_rel_threshold",
    ),
];
const WEIGHTS_POLICY: &str = "llmlb";

#[pymethods]
impl RouterConfig {
    #[new]
    #[pyo3(signature = (
        *,
        policy = None,
        token_block_size = None,
        char_block_size = None,
        chars_per_token = None,
        prefix_cache_size = None,
        prefix_guess_ttl_s = None,
        offloaded_prefix_weight = None,
        metrics_ttl_s = None,
        request_ttl_s = None,
        load_balance_window_s = None,
        memory_saturation_threshold = None,
        default_output_tokens = None,
        max_output_tokens = None,
        policies = None,
        seed = None,
        weights = None,
        balance_abs_threshold = None,
        balance_rel_threshold = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        policy: Option<&str>,
        token_block_size: Option<usize>,
        char_block_size: Option<usize>,
        chars_per_token: Option<f64>,
        prefix_cache_size: Option<usize>,
        prefix_guess_ttl_s: Option<f64>,
        offloaded_prefix_weight: Option<f64>,
        metrics_ttl_s: Option<f64>,
        request_ttl_s: Option<f64>,
        load_balance_window_s: Option<f64>,
        memory_saturation_threshold: Option<f64>,
        default_output_tokens: Option<u32>,
        max_output_tokens: Option<u32>,
        policies: Option<PolicyTable>,
        seed: Option<u64>,
        weights: Option<BTreeMap<String, f64>>,
        balance_abs_threshold: Option<f64>,
        balance_rel_threshold: Option<f64>,
    ) -> PyResult<Self> {
        let mut inner = core::RouterConfig::default();
        if let Some(name) = policy {
            inner.policy = name.parse().py_err()?;
        }
        given(&mut inner.token_block_size, token_block_size);
        given(&mut inner.char_block_size, char_block_size);
        given(&mut inner.chars_per_token, chars_per_token);
        given(&mut inner.prefix_cache_size, prefix_cache_size);
        given(&mut inner.prefix_guess_ttl_s, prefix_guess_ttl_s);
        given(&mut inner.offloaded_prefix_weight, offloaded_prefix_weight);
        given(&mut inner.metrics_ttl_s, metrics_ttl_s);
        given(&mut inner.request_ttl_s, request_ttl_s);
        given(&mut inner.load_balance_window_s, load_balance_window_s);
        given(
            &mut inner.memory_saturation_threshold,
            memory_saturation_threshold,
        );
        given(&mut inner.default_output_tokens, default_output_tokens);
        given(&mut inner.max_output_tokens, max_output_tokens);
        given(&mut inner.seed, seed);
        let mut table = policies.unwrap_or_default();
        let flat = [balance_abs_threshold, balance_rel_threshold];
        for ((alias, policy, param), value) in FLAT_ALIASES.into_iter().zip(flat) {
            if let Some(value) = value {
                merge_alias(&mut table, alias, policy, param, value)?;
            }
        }
        for (param, value) in weights.unwrap_or_default() {
            let alias = format!("weights[{param:?}]");
            merge_alias(&mut table, &alias, WEIGHTS_POLICY, &param, value)?;
        }
        set_policy_params(&mut inner.policies, &table)?;
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
    fn prefix_guess_ttl_s(&self) -> f64 {
        self.inner.prefix_guess_ttl_s
    }
    #[getter]
    fn offloaded_prefix_weight(&self) -> f64 {
        self.inner.offloaded_prefix_weight
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
    fn memory_saturation_threshold(&self) -> f64 {
        self.inner.memory_saturation_threshold
    }
    #[getter]
    fn default_output_tokens(&self) -> u32 {
        self.inner.default_output_tokens
    }
    #[getter]
    fn max_output_tokens(&self) -> u32 {
        self.inner.max_output_tokens
    }
    /// Every registered policy's parameters, in registry and declaration order (an
    /// empty dict for a policy without any).
    #[getter]
    fn policies<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let table = PyDict::new(py);
        for policy in core::PolicyKind::all() {
            table.set_item(
                policy.as_str(),
                params_dict(py, self.inner.policies.of(policy))?,
            )?;
        }
        Ok(table)
    }
    #[getter]
    fn seed(&self) -> u64 {
        self.inner.seed
    }
    /// Alias of `policies["llmlb"]`.
    #[getter]
    fn weights<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        params_dict(py, self.params_of(WEIGHTS_POLICY))
    }
    /// Alias of `policies["prefix_aware"]["balance_abs_threshold"]`.
    #[getter]
    fn balance_abs_threshold(&self) -> f64 {
        self.params_of("prefix_aware").get("balance_abs_threshold")
    }
    /// Alias of `policies["prefix_aware"]["balance_rel_threshold"]`.
    #[getter]
    fn balance_rel_threshold(&self) -> f64 {
        self.params_of("prefix_aware").get("balance_rel_threshold")
    }

    /// All settings as a dict of constructor keywords: the canonical ones, and the
    /// aliases (which agree with `policies`, so the dict builds this config again).
    fn to_dict<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(slf.py());
        for name in FIELDS.iter().chain(&ALIASES) {
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

impl RouterConfig {
    fn params_of(&self, policy: &str) -> &core::policy::Params {
        let kind = policy.parse().expect("the alias names a registered policy");
        self.inner.policies.of(kind)
    }
}

const FIELDS: [&str; 15] = [
    "policy",
    "token_block_size",
    "char_block_size",
    "chars_per_token",
    "prefix_cache_size",
    "prefix_guess_ttl_s",
    "offloaded_prefix_weight",
    "metrics_ttl_s",
    "request_ttl_s",
    "load_balance_window_s",
    "memory_saturation_threshold",
    "default_output_tokens",
    "max_output_tokens",
    "policies",
    "seed",
];
const ALIASES: [&str; 3] = ["weights", "balance_abs_threshold", "balance_rel_threshold"];

fn params_dict<'py>(
    py: Python<'py>,
    params: &core::policy::Params,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, value) in params.iter() {
        dict.set_item(name, value)?;
    }
    Ok(dict)
}

fn given<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

/// Puts an alias's value into the policy table; an alias that disagrees with the
/// table's own value for the same parameter is an error.
fn merge_alias(
    table: &mut PolicyTable,
    alias: &str,
    policy: &str,
    param: &str,
    value: f64,
) -> PyResult<()> {
    let params = table.entry(policy.to_owned()).or_default();
    match params.get(param) {
        Some(&existing) if existing != value => {
            Err(to_py(core::CoreError::InvalidConfig(format!(
                "{alias}={value} conflicts with policies.{policy}.{param}={existing}; give one"
            ))))
        }
        _ => {
            params.insert(param.to_owned(), value);
            Ok(())
        }
    }
}

fn set_policy_params(params: &mut core::PolicyParams, table: &PolicyTable) -> PyResult<()> {
    for (policy, values) in table {
        let kind = policy.parse().py_err()?;
        for (name, &value) in values {
            params.set(kind, name, value).py_err()?;
        }
    }
    Ok(())
}
