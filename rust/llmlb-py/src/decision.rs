//! What routing and completion return to Python.

use llmlb_core as core;
use pyo3::prelude::*;
use pyo3::types::PyDict;

#[pyclass(frozen, module = "llmlb_fast._core")]
pub struct CandidateScore {
    inner: core::CandidateScore,
}

#[pymethods]
impl CandidateScore {
    #[getter]
    fn node_id(&self) -> &str {
        &self.inner.node_id
    }
    #[getter]
    fn score(&self) -> Option<f64> {
        self.inner.score
    }
    #[getter]
    fn in_flight(&self) -> u32 {
        self.inner.in_flight
    }
    #[getter]
    fn load(&self) -> f64 {
        self.inner.load
    }
    #[getter]
    fn matched_blocks(&self) -> u32 {
        self.inner.matched_blocks
    }
    #[getter]
    fn skipped(&self) -> Option<&'static str> {
        self.inner.skipped
    }

    fn __repr__(&self) -> String {
        let c = &self.inner;
        let score = c.score.map_or("None".to_owned(), |s| format!("{s:.6}"));
        let skipped = c.skipped.map_or("None".to_owned(), |s| format!("{s:?}"));
        format!(
            "CandidateScore(node_id={:?}, score={score}, in_flight={}, matched_blocks={}, skipped={skipped})",
            &*c.node_id, c.in_flight, c.matched_blocks
        )
    }
}

#[pyclass(frozen, module = "llmlb_fast._core")]
pub struct RouteDecision {
    pub inner: core::RouteDecision,
}

#[pymethods]
impl RouteDecision {
    #[getter]
    fn request_id(&self) -> &str {
        &self.inner.request_id
    }
    #[getter]
    fn node_id(&self) -> &str {
        &self.inner.node_id
    }
    #[getter]
    fn address(&self) -> &str {
        &self.inner.address
    }
    #[getter]
    fn policy(&self) -> &'static str {
        self.inner.policy.as_str()
    }
    #[getter]
    fn reason(&self) -> &'static str {
        self.inner.reason.as_str()
    }
    #[getter]
    fn matched_blocks(&self) -> u32 {
        self.inner.matched_blocks
    }
    #[getter]
    fn matched_tokens(&self) -> u32 {
        self.inner.matched_tokens
    }
    #[getter]
    fn prompt_tokens(&self) -> u32 {
        self.inner.prompt_tokens
    }
    /// Uncached prompt tokens counted in the node's prefill backlog.
    #[getter]
    fn prefill_tokens(&self) -> u64 {
        self.inner.prefill_tokens
    }
    /// The prompt's block chain (what another replica needs to count this decision).
    #[getter]
    fn block_hashes(&self) -> Vec<u64> {
        self.inner.hashes.clone()
    }
    /// Whether `block_hashes` are text (char) blocks.
    #[getter]
    fn text_blocks(&self) -> bool {
        self.inner.text_blocks
    }
    /// Every node's score, built on first access (routing itself does not pay for it).
    #[getter]
    fn candidates(&self) -> Vec<CandidateScore> {
        self.inner
            .candidates()
            .into_iter()
            .map(|inner| CandidateScore { inner })
            .collect()
    }

    fn to_dict<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let py = slf.py();
        let d = &slf.get().inner;
        let dict = PyDict::new(py);
        dict.set_item("request_id", &d.request_id)?;
        dict.set_item("node_id", &*d.node_id)?;
        dict.set_item("address", &d.address)?;
        dict.set_item("policy", d.policy.as_str())?;
        dict.set_item("reason", d.reason.as_str())?;
        dict.set_item("matched_blocks", d.matched_blocks)?;
        dict.set_item("matched_tokens", d.matched_tokens)?;
        dict.set_item("prompt_tokens", d.prompt_tokens)?;
        let candidates: PyResult<Vec<Bound<'py, PyDict>>> = d
            .candidates()
            .iter()
            .map(|c| {
                let item = PyDict::new(py);
                item.set_item("node_id", &*c.node_id)?;
                item.set_item("score", c.score)?;
                item.set_item("in_flight", c.in_flight)?;
                item.set_item("load", c.load)?;
                item.set_item("matched_blocks", c.matched_blocks)?;
                item.set_item("skipped", c.skipped)?;
                Ok(item)
            })
            .collect();
        dict.set_item("candidates", candidates?)?;
        Ok(dict)
    }

    fn __repr__(&self) -> String {
        let d = &self.inner;
        format!(
            "RouteDecision(request_id={:?}, node_id={:?}, policy={:?}, reason={:?}, matched_tokens={})",
            d.request_id,
            &*d.node_id,
            d.policy.as_str(),
            d.reason.as_str(),
            d.matched_tokens
        )
    }
}

#[pyclass(frozen, module = "llmlb_fast._core")]
pub struct Completion {
    pub inner: core::Completion,
}

#[pymethods]
impl Completion {
    #[getter]
    fn request_id(&self) -> &str {
        &self.inner.request_id
    }
    #[getter]
    fn node_id(&self) -> &str {
        &self.inner.node_id
    }
    #[getter]
    fn policy(&self) -> &'static str {
        self.inner.policy.as_str()
    }
    #[getter]
    fn outcome(&self) -> &'static str {
        self.inner.outcome.as_str()
    }
    #[getter]
    fn duration_s(&self) -> f64 {
        self.inner.duration_s
    }
    #[getter]
    fn was_probe(&self) -> bool {
        self.inner.was_probe
    }
    /// The node's consecutive failures right after this outcome (0 after a success).
    #[getter]
    fn consecutive_failures(&self) -> u32 {
        self.inner.consecutive_failures
    }

    fn __repr__(&self) -> String {
        let c = &self.inner;
        format!(
            "Completion(request_id={:?}, node_id={:?}, outcome={:?}, duration_s={:.6})",
            c.request_id,
            &*c.node_id,
            c.outcome.as_str(),
            c.duration_s
        )
    }
}
