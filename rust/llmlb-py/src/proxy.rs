//! `HttpProxy`: the Rust data path (`llmlb-proxy`: the HTTP proxy and the Envoy ext_proc
//! picker) started and stopped from Python. It
//! shares the `Router` object's core; the service drains its events in batches and sets
//! its control. No Python runs per request, except a model's tokenizer when configured.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use llmlb_core as core;
use llmlb_proxy::admission::{AdmissionLimits, KeyRate};
use llmlb_proxy::settings::ApiKey;
use llmlb_proxy::{
    Control, EngineTokenizer, Listen, Proxy, ProxyEvent, ProxySettings, RoutingKey, Tokenized,
};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3::IntoPyObjectExt;

use crate::decision::{Completion, RouteDecision};
use crate::router::Router;

/// Calls `tokenizer(model, prompt, messages_json, tools_json) -> list[int] | None`.
struct PythonTokenizer(Py<PyAny>);

impl EngineTokenizer for PythonTokenizer {
    fn tokenize(&self, key: &RoutingKey) -> Option<Tokenized> {
        Python::attach(|py| {
            let arguments = (
                key.model.as_str(),
                key.prompt.as_deref(),
                key.messages_json.as_deref(),
                key.tools_json.as_deref(),
            );
            match self.0.call1(py, arguments) {
                Ok(answer) if answer.is_none(py) => Some(Tokenized::Refused),
                Ok(answer) => Some(match answer.extract::<Vec<u32>>(py) {
                    Ok(ids) => Tokenized::Tokens(ids),
                    Err(_) => Tokenized::Refused,
                }),
                Err(error) => {
                    error.write_unraisable(py, Some(self.0.bind(py)));
                    Some(Tokenized::Refused)
                }
            }
        })
    }
}

#[pyclass(frozen, module = "llmlb_fast._core")]
pub struct HttpProxy {
    router: Arc<core::Router>,
    settings: ProxySettings,
    tokenizer: Option<Arc<dyn EngineTokenizer>>,
    /// What the service decided last; applied to the running proxy and to the next one.
    control: parking_lot::Mutex<Control>,
    /// Kept after `stop` so that the last events can still be taken.
    proxy: parking_lot::Mutex<Option<Proxy>>,
}

fn resolve(host: &str, port: u16) -> PyResult<SocketAddr> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| PyOSError::new_err(format!("cannot resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| PyOSError::new_err(format!("{host} resolves to no address")))
}

fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        PyValueError::new_err(format!("{name} must be a non-negative number of seconds"))
    })
}

impl HttpProxy {
    fn bound(&self) -> Listen {
        let proxy = self.proxy.lock();
        proxy
            .as_ref()
            .filter(|p| p.is_running())
            .map_or_else(Listen::default, |p| p.bound)
    }

    fn with_proxy<T>(&self, f: impl FnOnce(&Proxy) -> T) -> PyResult<T> {
        match &*self.proxy.lock() {
            Some(proxy) => Ok(f(proxy)),
            None => Err(PyRuntimeError::new_err("the proxy was never started")),
        }
    }
}

#[pymethods]
impl HttpProxy {
    #[new]
    #[pyo3(signature = (
        router,
        *,
        max_body_bytes = 8_388_608,
        request_timeout_s = 600.0,
        connect_timeout_s = 2.0,
        max_attempts = 3,
        backoff_base_s = 0.005,
        backoff_cap_s = 0.2,
        pool_size = 1024,
        keepalive_timeout_s = 60.0,
        models_ttl_s = 5.0,
        models_fetch_timeout_s = 2.0,
        worker_threads = 0,
        tokenizer = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        router: &Router,
        max_body_bytes: usize,
        request_timeout_s: f64,
        connect_timeout_s: f64,
        max_attempts: u32,
        backoff_base_s: f64,
        backoff_cap_s: f64,
        pool_size: usize,
        keepalive_timeout_s: f64,
        models_ttl_s: f64,
        models_fetch_timeout_s: f64,
        worker_threads: usize,
        tokenizer: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let settings = ProxySettings {
            max_body_bytes,
            request_timeout: seconds("request_timeout_s", request_timeout_s)?,
            connect_timeout: seconds("connect_timeout_s", connect_timeout_s)?,
            max_attempts,
            backoff_base: seconds("backoff_base_s", backoff_base_s)?,
            backoff_cap: seconds("backoff_cap_s", backoff_cap_s)?,
            pool_size,
            keepalive_timeout: seconds("keepalive_timeout_s", keepalive_timeout_s)?,
            models_ttl: seconds("models_ttl_s", models_ttl_s)?,
            models_fetch_timeout: seconds("models_fetch_timeout_s", models_fetch_timeout_s)?,
            worker_threads,
        };
        settings.validate().map_err(PyValueError::new_err)?;
        Ok(HttpProxy {
            router: router.inner.clone(),
            settings,
            tokenizer: tokenizer.map(|t| Arc::new(PythonTokenizer(t)) as Arc<dyn EngineTokenizer>),
            control: parking_lot::Mutex::default(),
            proxy: parking_lot::Mutex::new(None),
        })
    }

    /// Listens where asked (each a (host, port) pair, port 0: an ephemeral one; None:
    /// that listener is off): the HTTP proxy and the Envoy ext_proc picker.
    #[pyo3(signature = (*, http = None, ext_proc = None))]
    fn start(
        &self,
        py: Python<'_>,
        http: Option<(String, u16)>,
        ext_proc: Option<(String, u16)>,
    ) -> PyResult<()> {
        let listen = Listen {
            http: http.map(|(host, port)| resolve(&host, port)).transpose()?,
            ext_proc: ext_proc
                .map(|(host, port)| resolve(&host, port))
                .transpose()?,
        };
        // The lock is never held while the interpreter is released: a thread waiting
        // for it with the interpreter held would deadlock with us.
        if self.proxy.lock().as_ref().is_some_and(|p| p.is_running()) {
            return Err(PyRuntimeError::new_err("the proxy is already running"));
        }
        let (router, settings, tokenizer) = (
            self.router.clone(),
            self.settings.clone(),
            self.tokenizer.clone(),
        );
        let control = self.control.lock().clone();
        let proxy = py
            .detach(|| Proxy::start(router, settings, tokenizer, control, listen))
            .map_err(|e| PyOSError::new_err(format!("cannot listen on {listen:?}: {e}")))?;
        *self.proxy.lock() = Some(proxy);
        Ok(())
    }

    /// Stops listening; open responses get a second, then are cut (their requests are
    /// completed). Events stay available to `take_events`.
    fn stop(&self, py: Python<'_>) {
        let Some(mut proxy) = self.proxy.lock().take() else {
            return;
        };
        py.detach(|| proxy.stop());
        *self.proxy.lock() = Some(proxy);
    }

    /// `api_keys`: (name, key, requests per second | None, burst) tuples; empty leaves
    /// the proxy open. `max_in_flight` None: no admission cap.
    #[pyo3(signature = (
        *,
        draining,
        warming_up,
        canary = None,
        tokenized_models = Vec::new(),
        share_decisions = false,
        api_keys = Vec::new(),
        max_in_flight = None,
        queue_size = 0,
        queue_timeout_s = 5.0,
        ext_proc_fail_open = false,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn set_control(
        &self,
        draining: bool,
        warming_up: bool,
        canary: Option<PyRef<'_, crate::canary::CanarySplit>>,
        tokenized_models: Vec<String>,
        share_decisions: bool,
        api_keys: Vec<(String, String, Option<f64>, f64)>,
        max_in_flight: Option<usize>,
        queue_size: usize,
        queue_timeout_s: f64,
        ext_proc_fail_open: bool,
    ) -> PyResult<()> {
        let control = Control {
            draining,
            warming_up,
            canary: canary.map(|c| c.inner),
            tokenized_models: tokenized_models.into_iter().collect(),
            share_decisions,
            api_keys: api_keys
                .into_iter()
                .map(|(name, key, per_s, burst)| ApiKey {
                    name: Arc::from(name),
                    secret: key.into_bytes(),
                    rate: per_s.map(|per_s| KeyRate { per_s, burst }),
                })
                .collect(),
            admission: AdmissionLimits {
                max_in_flight,
                queue_size,
                queue_timeout: seconds("queue_timeout_s", queue_timeout_s)?,
            },
            ext_proc_fail_open,
        };
        *self.control.lock() = control.clone();
        if let Some(proxy) = &*self.proxy.lock() {
            proxy.set_control(control);
        }
        Ok(())
    }

    /// Moves `node_id`'s requests that have no byte back yet (all of them, or those in
    /// `request_ids`) to other nodes; returns the ids that will be re-sent.
    #[pyo3(signature = (node_id, request_ids = None))]
    fn migrate(&self, node_id: &str, request_ids: Option<Vec<String>>) -> PyResult<Vec<String>> {
        // Not running (or stopping): nothing waits for a first byte.
        Ok(self
            .with_proxy(|proxy| proxy.migrate(node_id, request_ids.as_deref()))
            .unwrap_or_default())
    }

    /// Blocks (without the interpreter) until events are queued or `timeout_s` passes.
    fn wait_events(&self, py: Python<'_>, timeout_s: f64) -> PyResult<bool> {
        let timeout = seconds("timeout_s", timeout_s)?;
        let events = self.proxy.lock().as_ref().map(|p| p.events().clone());
        let Some(events) = events else {
            return Ok(false);
        };
        Ok(py.detach(|| events.wait(timeout)))
    }

    /// The queued events, oldest first, as tuples: ("routed", policy, reason, seconds,
    /// canary, decision | None, api_key_name | None), ("refused", transport, kind), ("first_token", request_id),
    /// ("completed", completion, ttft_s | None), ("tokenizer_fallback", model).
    fn take_events<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let events = match &*self.proxy.lock() {
            Some(proxy) => proxy.events().take(),
            None => return Ok(Vec::new()),
        };
        events
            .into_iter()
            .map(|event| event_tuple(py, event))
            .collect()
    }

    /// The HTTP proxy's bound port (None: not running or off).
    #[getter]
    fn port(&self) -> Option<u16> {
        self.bound().http.map(|a| a.port())
    }

    /// The ext_proc picker's bound port (None: not running or off).
    #[getter]
    fn ext_proc_port(&self) -> Option<u16> {
        self.bound().ext_proc.map(|a| a.port())
    }

    /// Attempts waiting for their first byte (those `migrate` can move).
    #[getter]
    fn waiting_attempts(&self) -> usize {
        self.proxy
            .lock()
            .as_ref()
            .map_or(0, |p| p.waiting_attempts())
    }

    /// Events dropped because nobody took them (the queue is bounded).
    #[getter]
    fn dropped_events(&self) -> u64 {
        self.proxy
            .lock()
            .as_ref()
            .map_or(0, |p| p.events().dropped())
    }
}

fn event_tuple<'py>(py: Python<'py>, event: ProxyEvent) -> PyResult<Bound<'py, PyTuple>> {
    let items: Vec<Bound<'py, PyAny>> = match event {
        ProxyEvent::Routed {
            policy,
            reason,
            seconds,
            canary,
            decision,
            api_key,
        } => {
            let decision = match decision {
                Some(inner) => Some(Bound::new(py, RouteDecision { inner: *inner })?),
                None => None,
            };
            vec![
                "routed".into_bound_py_any(py)?,
                policy.as_str().into_bound_py_any(py)?,
                reason.into_bound_py_any(py)?,
                seconds.into_bound_py_any(py)?,
                canary.into_bound_py_any(py)?,
                decision.into_bound_py_any(py)?,
                api_key.as_deref().into_bound_py_any(py)?,
            ]
        }
        ProxyEvent::Refused { transport, kind } => vec![
            "refused".into_bound_py_any(py)?,
            transport.as_str().into_bound_py_any(py)?,
            kind.into_bound_py_any(py)?,
        ],
        ProxyEvent::FirstToken { request_id } => {
            vec![
                "first_token".into_bound_py_any(py)?,
                request_id.into_bound_py_any(py)?,
            ]
        }
        ProxyEvent::Completed { completion, ttft_s } => vec![
            "completed".into_bound_py_any(py)?,
            Bound::new(py, Completion { inner: completion })?.into_any(),
            ttft_s.into_bound_py_any(py)?,
        ],
        ProxyEvent::TokenizerFallback { model } => {
            vec![
                "tokenizer_fallback".into_bound_py_any(py)?,
                model.into_bound_py_any(py)?,
            ]
        }
    };
    PyTuple::new(py, items)
}
