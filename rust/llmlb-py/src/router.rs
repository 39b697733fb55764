//! `Router`: the Python face of `llmlb_core::Router`. Calls that can take long (bulk
//! index work, sweeps, snapshots) run detached from the interpreter; so does `route`,
//! so that several Python threads can route at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use llmlb_core as core;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::config::RouterConfig;
use crate::decision::{Completion, RouteDecision};
use crate::errors::{invalid_input, to_py, IntoPyResult};
use crate::kv_events::{self, KvEventsOutcome, PrefixCredit};
use crate::node::{Node, NodeStatus};
use crate::prompt_args;

#[pyclass(frozen, module = "llmlb_fast._core")]
pub struct Router {
    /// Shared with the HTTP proxy, which routes without the interpreter.
    pub(crate) inner: Arc<core::Router>,
}

#[pymethods]
impl Router {
    #[new]
    #[pyo3(signature = (config = None, nodes = None, *, manual_clock = false))]
    fn new(
        config: Option<RouterConfig>,
        nodes: Option<Vec<Node>>,
        manual_clock: bool,
    ) -> PyResult<Self> {
        let config = config.map(|c| c.inner).unwrap_or_default();
        let clock = if manual_clock {
            core::Clock::manual()
        } else {
            core::Clock::Monotonic
        };
        let inner = core::Router::with_clock(config, clock).py_err()?;
        for node in nodes.unwrap_or_default() {
            inner.upsert_node(node.spec).py_err()?;
        }
        Ok(Router {
            inner: Arc::new(inner),
        })
    }

    #[getter]
    fn config(&self) -> RouterConfig {
        RouterConfig {
            inner: (*self.inner.config()).clone(),
        }
    }

    /// Applies a new config; nodes, in-flight counts and the prefix index are kept.
    fn reconfigure(&self, py: Python<'_>, config: RouterConfig) -> PyResult<()> {
        py.detach(|| self.inner.reconfigure(config.inner)).py_err()
    }

    /// Adds a node or updates an existing one (live state kept). True if it is new.
    fn upsert_node(&self, py: Python<'_>, node: Node) -> PyResult<bool> {
        py.detach(|| self.inner.upsert_node(node.spec)).py_err()
    }

    /// Removes a node; returns the ids of requests still in flight on it.
    fn remove_node(&self, py: Python<'_>, node_id: &str) -> PyResult<Vec<String>> {
        py.detach(|| self.inner.remove_node(node_id)).py_err()
    }

    #[pyo3(signature = (
        node_id,
        *,
        gpu_memory_used_bytes = None,
        gpu_memory_total_bytes = None,
        kv_cache_memory_bytes = None,
        compute_memory_bytes = None,
        kv_cache_usage = None,
        sm_utilization = None,
        mem_bandwidth_utilization = None,
        pcie_tx_bytes_per_s = None,
        pcie_rx_bytes_per_s = None,
        num_requests_running = None,
        num_requests_waiting = None,
        kv_capacity_tokens = None,
        prefix_cache_hits_total = None,
        prefix_cache_queries_total = None,
        num_preemptions_total = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn update_metrics(
        &self,
        py: Python<'_>,
        node_id: &str,
        gpu_memory_used_bytes: Option<f64>,
        gpu_memory_total_bytes: Option<f64>,
        kv_cache_memory_bytes: Option<f64>,
        compute_memory_bytes: Option<f64>,
        kv_cache_usage: Option<f64>,
        sm_utilization: Option<f64>,
        mem_bandwidth_utilization: Option<f64>,
        pcie_tx_bytes_per_s: Option<f64>,
        pcie_rx_bytes_per_s: Option<f64>,
        num_requests_running: Option<f64>,
        num_requests_waiting: Option<f64>,
        kv_capacity_tokens: Option<f64>,
        prefix_cache_hits_total: Option<f64>,
        prefix_cache_queries_total: Option<f64>,
        num_preemptions_total: Option<f64>,
    ) -> PyResult<()> {
        // In `GpuMetrics::FIELDS` order; tests/test_core_metrics.py checks the keywords.
        let metrics = core::GpuMetrics::from_values([
            gpu_memory_used_bytes,
            gpu_memory_total_bytes,
            kv_cache_memory_bytes,
            compute_memory_bytes,
            kv_cache_usage,
            sm_utilization,
            mem_bandwidth_utilization,
            pcie_tx_bytes_per_s,
            pcie_rx_bytes_per_s,
            num_requests_running,
            num_requests_waiting,
            kv_capacity_tokens,
            prefix_cache_hits_total,
            prefix_cache_queries_total,
            num_preemptions_total,
        ]);
        py.detach(|| self.inner.update_metrics(node_id, metrics))
            .py_err()
    }

    /// Forgets the prefix-index entries of a node whose engine cleared its cache.
    fn clear_node_cache(&self, py: Python<'_>, node_id: &str) -> PyResult<()> {
        py.detach(|| self.inner.clear_node_cache(node_id)).py_err()
    }

    /// Sets where a node's prefix credit comes from: "off" (routed prompts, as with no
    /// events), "live" (its engine's KV events; routed prompts are guesses that expire)
    /// or "unconfirmed" (events were lost: its entries score as guesses until the
    /// stream is whole again). Returns the previous state.
    fn set_kv_events_state(&self, node_id: &str, state: &str) -> PyResult<&'static str> {
        let parsed = core::KvEventsState::parse(state).ok_or_else(|| {
            invalid_input(format!(
                "kv events state {state:?} is not one of \"off\", \"live\", \"unconfirmed\""
            ))
        })?;
        let previous = self.inner.set_kv_events_state(node_id, parsed).py_err()?;
        Ok(previous.as_str())
    }

    /// Applies one `BlockStored` event of a node's engine. With `token_ids`, the engine's
    /// hashes are its own (ints or bytes) and the tokens (`block_size` per block; default
    /// the router's `token_block_size`) place them in the router's chains, seeded by
    /// `model` and `lora_name`; without, `block_hashes` are the router's chain hashes.
    #[pyo3(signature = (
        node_id,
        block_hashes,
        parent_block_hash = None,
        token_ids = None,
        *,
        block_size = None,
        model = None,
        lora_name = None,
        medium = None,
        rank = 0,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn kv_blocks_stored(
        &self,
        py: Python<'_>,
        node_id: &str,
        block_hashes: &Bound<'_, PyAny>,
        parent_block_hash: Option<&Bound<'_, PyAny>>,
        token_ids: Option<&Bound<'_, PyAny>>,
        block_size: Option<usize>,
        model: Option<&str>,
        lora_name: Option<&str>,
        medium: Option<&str>,
        rank: u32,
    ) -> PyResult<KvEventsOutcome> {
        let hashes = kv_events::engine_hashes(block_hashes)?;
        let parent = parent_block_hash
            .map(kv_events::engine_hash)
            .transpose()
            .map_err(|e| invalid_input(format!("parent_block_hash: {e}")))?;
        let tokens = token_ids.map(prompt_args::token_ids).transpose()?;
        let block_size = block_size.unwrap_or(self.inner.config().token_block_size);
        // 0 only with no tokens (blocks an engine moved to a lower tier).
        if block_size == 0 && tokens.as_ref().is_none_or(|t| !t.is_empty()) {
            return Err(invalid_input("block_size must be >= 1"));
        }
        let event = core::StoredBlocks {
            block_hashes: &hashes,
            parent,
            token_ids: tokens.as_deref(),
            block_size,
            seed: core::hashing::chain_seed(model, lora_name),
        };
        let applied = py
            .detach(|| self.inner.kv_blocks_stored(node_id, rank, &event, medium))
            .py_err()?;
        Ok(applied.into())
    }

    /// Applies one `BlockRemoved` event of a node's engine (hashes as in
    /// `kv_blocks_stored`): the node loses those blocks and every block below them.
    #[pyo3(signature = (node_id, block_hashes, *, medium = None, rank = 0))]
    fn kv_blocks_removed(
        &self,
        py: Python<'_>,
        node_id: &str,
        block_hashes: &Bound<'_, PyAny>,
        medium: Option<&str>,
        rank: u32,
    ) -> PyResult<KvEventsOutcome> {
        let hashes = kv_events::engine_hashes(block_hashes)?;
        let applied = py
            .detach(|| self.inner.kv_blocks_removed(node_id, rank, &hashes, medium))
            .py_err()?;
        Ok(applied.into())
    }

    /// Applies `AllBlocksCleared` on one data-parallel rank (None: every rank, e.g. the
    /// engine restarted).
    #[pyo3(signature = (node_id, *, rank = None))]
    fn kv_cache_cleared(&self, py: Python<'_>, node_id: &str, rank: Option<u32>) -> PyResult<()> {
        py.detach(|| self.inner.kv_cache_cleared(node_id, rank))
            .py_err()
    }

    /// Decodes one msgpack `KVEventBatch` payload (vLLM's or SGLang's encoding) and
    /// applies it to the node; `model` seeds the chains. A malformed payload raises
    /// `InvalidInputError` and changes nothing.
    #[pyo3(signature = (node_id, payload, *, model = None))]
    fn apply_kv_event_batch(
        &self,
        py: Python<'_>,
        node_id: &str,
        payload: &[u8],
        model: Option<&str>,
    ) -> PyResult<KvEventsOutcome> {
        let outcome = py
            .detach(|| self.inner.apply_kv_event_batch(node_id, payload, model))
            .py_err()?;
        Ok(outcome.into())
    }

    /// Each node's credit for a prompt (given as to `route`), by node id.
    #[pyo3(signature = (
        prompt = None,
        *,
        token_ids = None,
        block_hashes = None,
        prompt_tokens = None,
        model = None,
        adapter = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn prefix_credit(
        &self,
        py: Python<'_>,
        prompt: Option<&Bound<'_, PyString>>,
        token_ids: Option<&Bound<'_, PyAny>>,
        block_hashes: Option<Vec<u64>>,
        prompt_tokens: Option<u32>,
        model: Option<&str>,
        adapter: Option<&str>,
    ) -> PyResult<BTreeMap<String, PrefixCredit>> {
        let tokens = token_ids.map(prompt_args::token_ids).transpose()?;
        let text = prompt.map(|p| p.to_str()).transpose()?;
        let block_size = self.inner.config().token_block_size;
        let prompt = prompt_args::prompt(text, &tokens, &block_hashes, prompt_tokens, block_size)?;
        let request = core::RouteRequest {
            prompt,
            model,
            adapter,
            ..core::RouteRequest::text("")
        };
        let credits = py.detach(|| self.inner.prefix_credit(&request)).py_err()?;
        Ok((credits.into_iter())
            .map(|c| (c.node_id.to_string(), c.into()))
            .collect())
    }

    /// Counts another router replica's decision (its `RouteDecision` figures) as in-flight
    /// load, prefill backlog and provisional prefix credit. False when already counted.
    #[pyo3(signature = (
        replica,
        request_id,
        node_id,
        block_hashes,
        *,
        prompt_tokens,
        prefill_tokens,
        text_blocks = false,
        matched_tokens = None,
        routed_at = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn apply_remote_route(
        &self,
        py: Python<'_>,
        replica: &str,
        request_id: &str,
        node_id: &str,
        block_hashes: Vec<u64>,
        prompt_tokens: u32,
        prefill_tokens: u64,
        text_blocks: bool,
        matched_tokens: Option<u32>,
        routed_at: Option<f64>,
    ) -> PyResult<bool> {
        let route = core::RemoteRoute {
            replica,
            request_id,
            node_id,
            hashes: &block_hashes,
            text_blocks,
            prompt_tokens,
            prefill_tokens,
            matched_tokens,
            routed_at_s: routed_at,
        };
        py.detach(|| self.inner.apply_remote_route(&route)).py_err()
    }

    /// Another replica's request got its first token; False when unknown here.
    fn apply_remote_first_token(&self, replica: &str, request_id: &str) -> bool {
        self.inner.apply_remote_first_token(replica, request_id)
    }

    /// Another replica's request ended; False when unknown here or already released.
    fn apply_remote_completion(&self, replica: &str, request_id: &str) -> bool {
        self.inner.apply_remote_completion(replica, request_id)
    }

    /// A replica is gone: its requests stop counting here. Returns how many.
    fn forget_replica(&self, py: Python<'_>, replica: &str) -> usize {
        py.detach(|| self.inner.forget_replica(replica))
    }

    /// Requests of other replicas counted here.
    #[getter]
    fn remote_in_flight_total(&self) -> usize {
        self.inner.remote_in_flight_total()
    }

    /// Sets "closed", "open" or "half_open" (letting `probes` requests through at once);
    /// returns the previous state.
    #[pyo3(signature = (node_id, state, *, probes = 1))]
    fn set_breaker_state(&self, node_id: &str, state: &str, probes: u32) -> PyResult<&'static str> {
        let state = core::BreakerState::parse(state).py_err()?;
        let previous = self
            .inner
            .set_breaker_state_with_probes(node_id, state, probes)
            .py_err()?;
        Ok(previous.as_str())
    }

    #[pyo3(signature = (
        prompt = None,
        *,
        token_ids = None,
        block_hashes = None,
        prompt_tokens = None,
        request_id = None,
        expected_output_tokens = None,
        model = None,
        adapter = None,
        exclude = None,
        policy = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn route(
        &self,
        py: Python<'_>,
        prompt: Option<&Bound<'_, PyString>>,
        token_ids: Option<&Bound<'_, PyAny>>,
        block_hashes: Option<Vec<u64>>,
        prompt_tokens: Option<u32>,
        request_id: Option<String>,
        expected_output_tokens: Option<u32>,
        model: Option<&str>,
        adapter: Option<&str>,
        exclude: Option<Vec<String>>,
        policy: Option<&str>,
    ) -> PyResult<RouteDecision> {
        // A bad name here is the caller's input, not the router's config.
        let policy = policy
            .map(str::parse::<core::PolicyKind>)
            .transpose()
            .map_err(|e| match e {
                core::CoreError::InvalidConfig(message) => invalid_input(message),
                other => to_py(other),
            })?;
        let tokens = token_ids.map(prompt_args::token_ids).transpose()?;
        let text = prompt.map(|p| p.to_str()).transpose()?;
        let block_size = self.inner.config().token_block_size;
        let prompt = prompt_args::prompt(text, &tokens, &block_hashes, prompt_tokens, block_size)?;
        let exclude = exclude.unwrap_or_default();
        let exclude: Vec<&str> = exclude.iter().map(String::as_str).collect();
        let request = core::RouteRequest {
            prompt,
            request_id,
            expected_output_tokens,
            model,
            adapter,
            exclude: &exclude,
            policy,
        };
        let decision = py.detach(|| self.inner.route(&request)).py_err()?;
        Ok(RouteDecision { inner: decision })
    }

    /// The request's first token arrived: its prompt stops counting as queued prefill
    /// on its node. False when the id is not in flight; repeats are no-ops.
    fn first_token(&self, request_id: &str) -> bool {
        self.inner.first_token(request_id)
    }

    /// Releases a request once. Returns None when the id is unknown or was already
    /// released (a second call is a no-op).
    #[pyo3(signature = (request_id, outcome = "ok", *, ttft_s = None, tokens_in = 0, tokens_out = 0))]
    fn complete(
        &self,
        request_id: &str,
        outcome: &str,
        ttft_s: Option<f64>,
        tokens_in: u64,
        tokens_out: u64,
    ) -> PyResult<Option<Completion>> {
        let outcome = core::Outcome::parse(outcome).py_err()?;
        let completion = self
            .inner
            .complete(request_id, outcome, ttft_s, tokens_in, tokens_out)
            .py_err()?;
        Ok(completion.map(|inner| Completion { inner }))
    }

    /// Releases requests older than `request_ttl_s` (also done by `route` every second).
    fn expire_stale(&self, py: Python<'_>) -> Vec<Completion> {
        py.detach(|| self.inner.expire_stale())
            .into_iter()
            .map(|inner| Completion { inner })
            .collect()
    }

    fn in_flight_request_ids(&self, py: Python<'_>, node_id: &str) -> PyResult<Vec<String>> {
        py.detach(|| self.inner.in_flight_request_ids(node_id))
            .py_err()
    }

    #[getter]
    fn in_flight_total(&self) -> usize {
        self.inner.in_flight_total()
    }

    fn nodes(&self, py: Python<'_>) -> Vec<NodeStatus> {
        py.detach(|| self.inner.node_statuses())
            .into_iter()
            .map(|status| NodeStatus { status })
            .collect()
    }

    /// Per-node outcome window (`load_balance_window`).
    fn node_stats<'py>(&self, py: Python<'py>, node_id: &str) -> PyResult<Bound<'py, PyDict>> {
        let summary = self.inner.window_summary(node_id).py_err()?;
        window_dict(py, &summary)
    }

    /// Router-wide figures: prefix index, in-flight total, per-node windows.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let index = py.detach(|| self.inner.index_stats());
        let stats = PyDict::new(py);
        stats.set_item("in_flight_total", self.inner.in_flight_total())?;
        let idx = PyDict::new(py);
        idx.set_item("entries", index.entries)?;
        idx.set_item("capacity", index.capacity)?;
        idx.set_item("bytes", index.bytes)?;
        idx.set_item("bytes_per_entry", index.bytes_per_entry)?;
        idx.set_item("lookups", index.lookups)?;
        idx.set_item("lookups_with_hit", index.lookups_with_hit)?;
        idx.set_item("blocks_looked_up", index.blocks_looked_up)?;
        idx.set_item("blocks_matched", index.blocks_matched)?;
        let hit_rate = if index.blocks_looked_up > 0 {
            index.blocks_matched as f64 / index.blocks_looked_up as f64
        } else {
            0.0
        };
        idx.set_item("block_hit_rate", hit_rate)?;
        idx.set_item("evicted", index.evicted)?;
        idx.set_item(
            "engine_map_bytes",
            py.detach(|| self.inner.kv_cache_bytes()),
        )?;
        stats.set_item("prefix_index", idx)?;
        let nodes = PyDict::new(py);
        for status in self.inner.node_statuses() {
            let summary = self.inner.window_summary(&status.spec.id).py_err()?;
            let node = window_dict(py, &summary)?;
            node.set_item("in_flight", status.in_flight)?;
            node.set_item("routed_total", status.routed_total)?;
            node.set_item("breaker_state", status.breaker.as_str())?;
            node.set_item("consecutive_failures", status.consecutive_failures)?;
            node.set_item("prefix_blocks", status.prefix_blocks)?;
            node.set_item("kv_events_state", status.kv_events.as_str())?;
            node.set_item("kv_engine_blocks", status.kv_engine_blocks)?;
            nodes.set_item(&*status.spec.id, node)?;
        }
        stats.set_item("nodes", nodes)?;
        Ok(stats)
    }

    /// Seconds on the router's clock.
    fn now(&self) -> f64 {
        self.inner.now_s()
    }

    /// Moves a manual clock to `seconds` (never backwards).
    fn set_time(&self, seconds: f64) -> PyResult<()> {
        self.inner.set_time_s(seconds).py_err()
    }

    fn __repr__(&self) -> String {
        format!(
            "Router(policy={:?}, nodes={}, in_flight={})",
            self.inner.config().policy.as_str(),
            self.inner.node_statuses().len(),
            self.inner.in_flight_total()
        )
    }
}

fn window_dict<'py>(py: Python<'py>, s: &core::WindowSummary) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("window_s", s.window_s)?;
    dict.set_item("completed", s.completed)?;
    dict.set_item("ok", s.ok)?;
    dict.set_item("errors", s.errors)?;
    dict.set_item("timeouts", s.timeouts)?;
    dict.set_item("expired", s.expired)?;
    dict.set_item("error_rate", s.error_rate)?;
    dict.set_item("mean_ttft_s", s.mean_ttft_s)?;
    dict.set_item("tokens_in", s.tokens_in)?;
    dict.set_item("tokens_out", s.tokens_out)?;
    Ok(dict)
}
