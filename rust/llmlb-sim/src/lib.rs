//! Hot loops of the simulator in `python/llmlb_fast/sim/` (not routing: the simulated
//! engine's side). The Python engine model decides what happens; this crate only keeps
//! the per-block bookkeeping that a 2-hour run repeats tens of millions of times.

mod block_cache;

pub use block_cache::{BlockCache, CacheEvent};
