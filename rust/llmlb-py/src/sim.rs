//! `BlockCache`: the simulator's KV-cache block table (`llmlb-sim`), for
//! `llmlb_fast.sim.engine`. Keys are the u64 block hashes the workloads produce.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

#[pyclass(module = "llmlb_fast._core")]
pub struct BlockCache {
    inner: llmlb_sim::BlockCache,
}

#[pymethods]
impl BlockCache {
    #[new]
    fn new(capacity_blocks: usize) -> Self {
        BlockCache {
            inner: llmlb_sim::BlockCache::new(capacity_blocks),
        }
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

    /// References `keys` (cached or new); the caller made room for the new ones.
    fn acquire(&mut self, keys: Vec<u64>) {
        self.inner.acquire(&keys);
    }

    /// Drops one reference to each key; freed blocks become evictable tail first.
    fn release(&mut self, keys: Vec<u64>) -> PyResult<()> {
        self.inner.release(&keys).map_err(|key| {
            PyValueError::new_err(format!("release() of block {key} that is not referenced"))
        })
    }

    /// Caches generated blocks, as far as room allows (evicting older blocks).
    fn insert_unreferenced(&mut self, keys: Vec<u64>, free_blocks: i64) {
        self.inner.insert_unreferenced(&keys, free_blocks);
    }

    /// Evicts up to `blocks` least recently freed blocks; returns how many.
    fn evict(&mut self, blocks: usize) -> usize {
        self.inner.evict(blocks)
    }
}
