//! How a transport reads an OpenAI request and its response: the routing key and the
//! response meter of `llmlb-proxy`, for the Python transports (ext_proc) and tests.

use llmlb_proxy::metering::ResponseMeter as CoreMeter;
use llmlb_proxy::{ProxyError, RoutingKey as CoreKey};
use pyo3::prelude::*;

#[pyclass(frozen, module = "llmlb_fast._core")]
pub struct RoutingKey {
    pub inner: CoreKey,
}

#[pymethods]
impl RoutingKey {
    #[getter]
    fn model(&self) -> &str {
        &self.inner.model
    }
    #[getter]
    fn prompt(&self) -> Option<&str> {
        self.inner.prompt.as_deref()
    }
    #[getter]
    fn token_ids(&self) -> Option<Vec<u32>> {
        self.inner.token_ids.clone()
    }
    #[getter]
    fn expected_output_tokens(&self) -> Option<u32> {
        self.inner.expected_output_tokens
    }
    #[getter]
    fn stream(&self) -> bool {
        self.inner.stream
    }
    /// A chat request's `messages` as JSON (for a model's chat template).
    #[getter]
    fn messages_json(&self) -> Option<&str> {
        self.inner.messages_json.as_deref()
    }
    #[getter]
    fn tools_json(&self) -> Option<&str> {
        self.inner.tools_json.as_deref()
    }

    /// The same key routed by the engine's token ids instead of text.
    fn with_token_ids(&self, token_ids: Vec<u32>) -> RoutingKey {
        RoutingKey {
            inner: CoreKey {
                prompt: None,
                token_ids: Some(token_ids),
                ..self.inner.clone()
            },
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "RoutingKey(model={:?}, prompt_chars={:?}, tokens={:?}, stream={})",
            self.inner.model,
            self.inner.prompt.as_ref().map(|p| p.chars().count()),
            self.inner.token_ids.as_ref().map(Vec::len),
            self.inner.stream
        )
    }
}

/// `llmlb_fast.errors.RequestError(status, message, error_type, code)`.
pub fn request_error(error: ProxyError) -> PyErr {
    let arguments = (
        error.status.as_u16(),
        error.message,
        error.error_type,
        error.code,
    );
    crate::errors::error_of("RequestError", arguments)
}

/// The routing key of a request body for `path` (`/v1/chat/completions` renders the
/// messages; anything else reads `prompt`). Raises RequestError (a 400) for bad input.
#[pyfunction]
pub fn routing_key(path: &str, body: &[u8]) -> PyResult<RoutingKey> {
    llmlb_proxy::routing_key(path, body)
        .map(|inner| RoutingKey { inner })
        .map_err(request_error)
}

/// Counts what a response carried as its bytes pass: SSE events, and the usage block.
#[pyclass(module = "llmlb_fast._core")]
#[derive(Default)]
pub struct ResponseMeter {
    inner: CoreMeter,
}

#[pymethods]
impl ResponseMeter {
    #[new]
    fn new() -> Self {
        ResponseMeter::default()
    }
    fn feed_stream(&mut self, chunk: &[u8]) {
        self.inner.feed_stream(chunk);
    }
    fn finish_stream(&mut self) {
        self.inner.finish_stream();
    }
    fn feed_whole(&mut self, body: &[u8]) {
        self.inner.feed_whole(body);
    }
    #[getter]
    fn events(&self) -> u64 {
        self.inner.events
    }
    #[getter]
    fn prompt_tokens(&self) -> Option<u64> {
        self.inner.prompt_tokens
    }
    /// The usage block's completion tokens, else the number of events.
    #[getter]
    fn tokens_out(&self) -> u64 {
        self.inner.tokens_out()
    }
}
