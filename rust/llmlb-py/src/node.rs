//! `Node` (what an operator declares) and `NodeStatus` (a point-in-time view).

use std::collections::BTreeMap;

use llmlb_core as core;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::IntoPyResult;

#[pyclass(frozen, module = "llmlb_fast._core", eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct Node {
    pub spec: core::NodeSpec,
}

#[pymethods]
impl Node {
    #[new]
    #[pyo3(signature = (
        id,
        address = "",
        *,
        peak_tflops = None,
        gpu_memory_bytes = None,
        max_concurrency = None,
        prefill_tokens_per_s = None,
        kv_capacity_tokens = None,
        labels = None,
        models = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        id: &str,
        address: &str,
        peak_tflops: Option<f64>,
        gpu_memory_bytes: Option<u64>,
        max_concurrency: Option<u32>,
        prefill_tokens_per_s: Option<f64>,
        kv_capacity_tokens: Option<u64>,
        labels: Option<BTreeMap<String, String>>,
        models: Option<Vec<String>>,
    ) -> PyResult<Self> {
        let spec = core::NodeSpec {
            id: id.into(),
            address: address.to_owned(),
            peak_tflops: peak_tflops.unwrap_or(core::DEFAULT_PEAK_TFLOPS),
            gpu_memory_bytes,
            max_concurrency,
            prefill_tokens_per_s,
            kv_capacity_tokens,
            labels: labels.unwrap_or_default().into_iter().collect(),
            models: models.unwrap_or_default(),
        };
        spec.validate().py_err()?;
        Ok(Node { spec })
    }

    #[getter]
    fn id(&self) -> &str {
        &self.spec.id
    }
    #[getter]
    fn address(&self) -> &str {
        &self.spec.address
    }
    #[getter]
    fn peak_tflops(&self) -> f64 {
        self.spec.peak_tflops
    }
    #[getter]
    fn gpu_memory_bytes(&self) -> Option<u64> {
        self.spec.gpu_memory_bytes
    }
    #[getter]
    fn max_concurrency(&self) -> Option<u32> {
        self.spec.max_concurrency
    }
    #[getter]
    fn prefill_tokens_per_s(&self) -> f64 {
        self.spec.prefill_rate()
    }
    #[getter]
    fn kv_capacity_tokens(&self) -> Option<u64> {
        self.spec.kv_capacity_tokens
    }
    #[getter]
    fn labels(&self) -> BTreeMap<String, String> {
        self.spec.labels.iter().cloned().collect()
    }
    /// Models served; empty means any model.
    #[getter]
    fn models(&self) -> Vec<String> {
        self.spec.models.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "Node(id={:?}, address={:?}, peak_tflops={})",
            &*self.spec.id, self.spec.address, self.spec.peak_tflops
        )
    }
}

/// A report's memory use as the router judges it: `(kv_cache_usage,
/// gpu_memory_usage)`, each a fraction or None (see `core::GpuMetrics::memory_usage`).
#[pyfunction]
#[pyo3(signature = (metrics, *, gpu_memory_bytes = None))]
pub fn memory_usage(
    metrics: BTreeMap<String, Option<f64>>,
    gpu_memory_bytes: Option<u64>,
) -> PyResult<(Option<f64>, Option<f64>)> {
    let report =
        core::GpuMetrics::from_named(metrics.iter().map(|(k, v)| (k.as_str(), *v))).py_err()?;
    report.validate().py_err()?;
    let usage = report.memory_usage(gpu_memory_bytes);
    Ok((usage.kv_cache, usage.gpu_memory))
}

#[pyclass(frozen, module = "llmlb_fast._core")]
pub struct NodeStatus {
    pub status: core::NodeStatus,
}

#[pymethods]
impl NodeStatus {
    #[getter]
    fn node(&self) -> Node {
        Node {
            spec: self.status.spec.clone(),
        }
    }
    #[getter]
    fn id(&self) -> &str {
        &self.status.spec.id
    }
    #[getter]
    fn in_flight(&self) -> u32 {
        self.status.in_flight
    }
    #[getter]
    fn routed_total(&self) -> u64 {
        self.status.routed_total
    }
    #[getter]
    fn breaker_state(&self) -> &'static str {
        self.status.breaker.as_str()
    }
    #[getter]
    fn consecutive_failures(&self) -> u32 {
        self.status.consecutive_failures
    }
    #[getter]
    fn backlog_tokens(&self) -> f64 {
        self.status.backlog_tokens
    }
    #[getter]
    fn pending_prefill_tokens(&self) -> u64 {
        self.status.pending_prefill_tokens
    }
    #[getter]
    fn cache_trust(&self) -> f64 {
        self.status.cache_trust
    }
    #[getter]
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.status
            .metrics
            .as_ref()
            .map(|m| metrics_dict(py, m))
            .transpose()
    }
    #[getter]
    fn metrics_age_s(&self) -> Option<f64> {
        self.status.metrics_age_s
    }
    #[getter]
    fn metrics_fresh(&self) -> bool {
        self.status.metrics_fresh
    }
    #[getter]
    fn prefix_blocks(&self) -> u32 {
        self.status.prefix_blocks
    }
    /// Where the node's prefix credit comes from: "off", "live" or "unconfirmed".
    #[getter]
    fn kv_events_state(&self) -> &'static str {
        self.status.kv_events.as_str()
    }
    /// Engine blocks the router knows the node holds (from its KV events).
    #[getter]
    fn kv_engine_blocks(&self) -> u64 {
        self.status.kv_engine_blocks
    }

    fn __repr__(&self) -> String {
        format!(
            "NodeStatus(id={:?}, in_flight={}, breaker_state={:?}, metrics_fresh={})",
            &*self.status.spec.id,
            self.status.in_flight,
            self.status.breaker.as_str(),
            self.status.metrics_fresh
        )
    }
}

fn metrics_dict<'py>(py: Python<'py>, m: &core::GpuMetrics) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, value) in core::GpuMetrics::FIELDS.iter().zip(m.values()) {
        if let Some(v) = value {
            dict.set_item(name, v)?;
        }
    }
    Ok(dict)
}

/// Raises InvalidInputError unless `address` is `host[:port]` or
/// `http(s)://host[:port][/path]` (checked where addresses come from outside: config
/// files and RegisterNode).
#[pyfunction]
pub fn check_node_address(node_id: &str, address: &str) -> PyResult<()> {
    core::node_table::check_address(node_id, address).py_err()
}
