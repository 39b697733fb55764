//! `BlockCache`: the simulator's KV-cache block table (`llmlb-sim`), for
//! `llmlb_fast.sim.engine`. Keys are the u64 block hashes the workloads produce.

use llmlb_sim::CacheEvent;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

#[pyclass(module = "llmlb_fast._core")]
pub struct BlockCache {
    inner: llmlb_sim::BlockCache,
}

#[pymethods]
impl BlockCache {
    #[new]
    #[pyo3(signature = (capacity_blocks, *, record_events = false))]
    fn new(capacity_blocks: usize, record_events: bool) -> Self {
        let mut inner = llmlb_sim::BlockCache::new(capacity_blocks);
        inner.record_events(record_events);
        BlockCache { inner }
    }

    #[getter]
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    #[getter]
    fn cached_blocks(&self) -> usize {
        self.inner.cached_blocks()
    }

    #[getter]
    fn referenced_blocks(&self) -> usize {
        self.inner.referenced_blocks()
    }

    #[getter]
    fn evicted(&self) -> u64 {
        self.inner.evicted()
    }

    /// Number of leading `keys` (at most `limit`) present in the cache.
    #[pyo3(name = "match")]
    fn match_prefix(&self, keys: Vec<u64>, limit: usize) -> usize {
        self.inner.match_prefix(&keys, limit)
    }

    /// References `keys` (cached or new; a chain continuing `parent`); the caller made
    /// room for the new ones.
    #[pyo3(signature = (keys, parent = None))]
    fn acquire(&mut self, keys: Vec<u64>, parent: Option<u64>) {
        self.inner.acquire(&keys, parent);
    }

    /// Drops one reference to each key; freed blocks become evictable tail first.
    fn release(&mut self, keys: Vec<u64>) -> PyResult<()> {
        self.inner.release(&keys).map_err(|key| {
            PyValueError::new_err(format!("release() of block {key} that is not referenced"))
        })
    }

    /// Caches generated blocks, as far as room allows (evicting older blocks).
    #[pyo3(signature = (keys, free_blocks, parent = None))]
    fn insert_unreferenced(&mut self, keys: Vec<u64>, free_blocks: i64, parent: Option<u64>) {
        self.inner.insert_unreferenced(&keys, free_blocks, parent);
    }

    /// What entered and left the cache since the last call (with `record_events`), in
    /// order: `("stored", keys, parent)` and `("removed", keys, None)`.
    fn take_events(&mut self) -> Vec<(&'static str, Vec<u64>, Option<u64>)> {
        (self.inner.take_events().into_iter())
            .map(|event| match event {
                CacheEvent::Stored { keys, parent } => ("stored", keys, parent),
                CacheEvent::Removed { keys } => ("removed", keys, None),
            })
            .collect()
    }

    /// Evicts up to `blocks` least recently freed blocks; returns how many.
    fn evict(&mut self, blocks: usize) -> usize {
        self.inner.evict(blocks)
    }
}
