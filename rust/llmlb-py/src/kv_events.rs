//! Python types of engine KV-cache events: what an event did ([`KvEventsOutcome`]), a
//! node's credit for a prompt ([`PrefixCredit`]), and engine block hashes as Python
//! gives them (ints, or bytes as vLLM's default `sha256` hashes are).

use llmlb_core as core;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt};

use crate::errors::invalid_input;

/// What a batch or an event did to a node's engine map.
#[pyclass(frozen, module = "llmlb_fast._core", get_all)]
#[derive(Debug, Clone, Default)]
pub struct KvEventsOutcome {
    pub stored_blocks: u64,
    pub removed_blocks: u64,
    /// Events that could not be placed: a parent never stored, tokens that do not fill
    /// the blocks, a block size the index cannot align with.
    pub skipped_events: u64,
    /// Blocks stored in a tier below the GPU (credited with `offloaded_prefix_weight`).
    pub offloaded_blocks: u64,
    /// The node's maps outgrew `prefix_cache_size` blocks (removals were lost) and
    /// started over; what they had confirmed became guesses.
    pub overflowed: bool,
    pub cleared: u64,
    /// Events of a kind the router does not know (skipped).
    pub unknown_events: u64,
    pub data_parallel_rank: Option<i64>,
    /// The batch's timestamp (seconds, the engine's clock); 0 for single events.
    pub ts: f64,
}

#[pymethods]
impl KvEventsOutcome {
    fn __repr__(&self) -> String {
        format!(
            "KvEventsOutcome(stored_blocks={}, removed_blocks={}, skipped_events={}, \
             offloaded_blocks={}, cleared={}, unknown_events={})",
            self.stored_blocks,
            self.removed_blocks,
            self.skipped_events,
            self.offloaded_blocks,
            self.cleared,
            self.unknown_events
        )
    }
}

impl From<core::Applied> for KvEventsOutcome {
    fn from(applied: core::Applied) -> Self {
        KvEventsOutcome {
            stored_blocks: applied.stored_blocks,
            removed_blocks: applied.removed_blocks,
            skipped_events: applied.skipped_events,
            offloaded_blocks: applied.offloaded_blocks,
            overflowed: applied.overflowed,
            ..KvEventsOutcome::default()
        }
    }
}

impl From<core::BatchOutcome> for KvEventsOutcome {
    fn from(batch: core::BatchOutcome) -> Self {
        KvEventsOutcome {
            cleared: batch.cleared,
            unknown_events: batch.unknown_events,
            data_parallel_rank: batch.data_parallel_rank,
            ts: batch.ts,
            ..KvEventsOutcome::from(batch.applied)
        }
    }
}

/// How many leading blocks of a prompt a node is credited with.
#[pyclass(frozen, module = "llmlb_fast._core", get_all)]
#[derive(Debug, Clone)]
pub struct PrefixCredit {
    pub node_id: String,
    /// By the main index: confirmed by the node's KV events, or routed there when the
    /// node publishes none.
    pub blocks: u32,
    /// Routed to a node with live KV events and not confirmed yet (expires).
    pub guessed_blocks: u32,
    /// Held below GPU memory (KV events of another medium).
    pub offloaded_blocks: u32,
}

#[pymethods]
impl PrefixCredit {
    fn __repr__(&self) -> String {
        format!(
            "PrefixCredit(node_id={:?}, blocks={}, guessed_blocks={}, offloaded_blocks={})",
            self.node_id, self.blocks, self.guessed_blocks, self.offloaded_blocks
        )
    }
}

impl From<core::PrefixCredit> for PrefixCredit {
    fn from(credit: core::PrefixCredit) -> Self {
        PrefixCredit {
            node_id: credit.node_id.to_string(),
            blocks: credit.blocks,
            guessed_blocks: credit.guessed_blocks,
            offloaded_blocks: credit.offloaded_blocks,
        }
    }
}

/// Engine block hashes: ints (the low 64 bits, two's complement for negatives, as the
/// msgpack decoder reads them) or bytes (hashed to 64 bits, as the decoder does).
pub(crate) fn engine_hashes(hashes: &Bound<'_, PyAny>) -> PyResult<Vec<core::EngineHash>> {
    let mut out = Vec::new();
    for (i, item) in hashes.try_iter()?.enumerate() {
        out.push(
            engine_hash(&item?).map_err(|e| invalid_input(format!("block_hashes[{i}]: {e}")))?,
        );
    }
    Ok(out)
}

pub(crate) fn engine_hash(hash: &Bound<'_, PyAny>) -> Result<core::EngineHash, String> {
    if let Ok(bytes) = hash.cast::<PyBytes>() {
        return Ok(core::kv_events::engine_hash_of_bytes(bytes.as_bytes()));
    }
    let Ok(int) = hash.cast::<PyInt>() else {
        return Err(format!(
            "expected an int or bytes, got {}",
            hash.get_type().name().map_or("?".into(), |n| n.to_string())
        ));
    };
    if let Ok(value) = int.extract::<u64>() {
        return Ok(value);
    }
    if let Ok(value) = int.extract::<i64>() {
        return Ok(value as u64);
    }
    // Wider ints (vLLM without int hashes sends bytes; a caller may pass int.from_bytes).
    (int.call_method1("__and__", (u64::MAX,)))
        .and_then(|low| low.extract::<u64>())
        .map_err(|e| e.to_string())
}
