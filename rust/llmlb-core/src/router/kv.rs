//! The router's side of engine KV-cache events: per-node engine maps
//! ([`NodeCache`]) turned into credit in the main index, removals applied to guesses too.

use std::sync::Arc;

use crate::error::{CoreError, CoreResult};
use crate::hashing::chain_seed;
use crate::kv_events::wire::{decode_batch, KvEvent};
use crate::kv_events::{
    is_gpu_medium, Applied, CreditSink, EngineHash, KvEventsState, NodeCache, StoredBlocks,
};
use crate::node_table::NodeEntry;

use super::Router;

/// What one decoded batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchOutcome {
    pub applied: Applied,
    pub cleared: u64,
    /// Events of a kind this router does not know (skipped).
    pub unknown_events: u64,
    pub data_parallel_rank: Option<i64>,
    pub ts: f64,
}

/// One node's index credit, as [`NodeCache`] changes it.
struct NodeCredit<'a> {
    router: &'a Router,
    node: &'a NodeEntry,
    stamp: u64,
}

impl CreditSink for NodeCredit<'_> {
    fn credit(&mut self, chain: &[u64]) {
        let (slot, owner) = (self.node.slot, self.node.incarnation);
        (self.router.index).insert_from(chain, 0, slot, owner, self.stamp);
    }

    fn release(&mut self, chain: &[u64]) {
        self.router.index.release_from(chain, self.node.slot);
        self.router.guesses.release_from(chain, self.node.slot);
    }

    fn forget(&mut self) {
        self.router.index.forget_node(self.node.slot);
        self.router.guesses.forget_node(self.node.slot);
    }
}

impl Router {
    /// Sets where a node's prefix credit comes from; returns the previous state.
    /// Entering `Unconfirmed` turns what the engine had confirmed into guesses.
    pub fn set_kv_events_state(
        &self,
        node_id: &str,
        state: KvEventsState,
    ) -> CoreResult<KvEventsState> {
        let node = self.table.get(node_id)?;
        let mut caches = self.kv_caches.lock();
        let previous = node.live.set_kv_events(state);
        if state == KvEventsState::Unconfirmed && previous != KvEventsState::Unconfirmed {
            let now = self.clock.now_ns();
            if let Some((incarnation, cache)) = caches.remove(&node.slot) {
                if incarnation == node.incarnation {
                    for chain in cache.leaf_chains() {
                        (self.guesses).insert(&chain, node.slot, node.incarnation, now);
                    }
                }
            }
            self.index.forget_node(node.slot);
        }
        Ok(previous)
    }

    /// Applies one `BlockStored` on `rank` of a node.
    pub fn kv_blocks_stored(
        &self,
        node_id: &str,
        rank: u32,
        event: &StoredBlocks<'_>,
        medium: Option<&str>,
    ) -> CoreResult<Applied> {
        if !is_gpu_medium(medium) {
            let n = event.block_hashes.len() as u64;
            return Ok(Applied {
                offloaded_blocks: n,
                ..Applied::default()
            });
        }
        let block = self.config.load().token_block_size;
        self.with_node_cache(node_id, |cache, sink| cache.store(rank, event, block, sink))
    }

    /// Applies one `BlockRemoved` on `rank` of a node (lower tiers are not credited, so
    /// their removals change nothing).
    pub fn kv_blocks_removed(
        &self,
        node_id: &str,
        rank: u32,
        hashes: &[EngineHash],
        medium: Option<&str>,
    ) -> CoreResult<Applied> {
        if !is_gpu_medium(medium) {
            return Ok(Applied::default());
        }
        self.with_node_cache(node_id, |cache, sink| cache.remove(rank, hashes, sink))
    }

    /// The node's engine dropped its cache on `rank` (None: all of it).
    pub fn kv_cache_cleared(&self, node_id: &str, rank: Option<u32>) -> CoreResult<()> {
        self.with_node_cache(node_id, |cache, sink| {
            cache.clear(rank, sink);
            Applied::default()
        })?;
        Ok(())
    }

    /// Decodes one msgpack `KVEventBatch` (vLLM's or SGLang's encoding) and applies it;
    /// `model` seeds the chains (the node's model). A malformed batch changes nothing.
    pub fn apply_kv_event_batch(
        &self,
        node_id: &str,
        payload: &[u8],
        model: Option<&str>,
    ) -> CoreResult<BatchOutcome> {
        let batch = decode_batch(payload).map_err(CoreError::InvalidInput)?;
        let rank = match batch.data_parallel_rank {
            None => 0,
            Some(r) => u32::try_from(r)
                .map_err(|_| CoreError::InvalidInput(format!("data_parallel_rank {r} < 0")))?,
        };
        let block = self.config.load().token_block_size;
        let mut outcome = BatchOutcome {
            data_parallel_rank: batch.data_parallel_rank,
            ts: batch.ts,
            ..BatchOutcome::default()
        };
        let mut unknown = 0;
        let mut cleared = 0;
        let applied = self.with_node_cache(node_id, |cache, sink| {
            let mut applied = Applied::default();
            for event in &batch.events {
                applied += match event {
                    KvEvent::Stored(e) if !is_gpu_medium(e.medium.as_deref()) => Applied {
                        offloaded_blocks: e.block_hashes.len() as u64,
                        ..Applied::default()
                    },
                    KvEvent::Stored(e) => {
                        let stored = StoredBlocks {
                            block_hashes: &e.block_hashes,
                            parent: e.parent_block_hash,
                            token_ids: Some(&e.token_ids),
                            block_size: e.block_size,
                            seed: chain_seed(model, e.lora_name.as_deref()),
                        };
                        cache.store(rank, &stored, block, sink)
                    }
                    KvEvent::Removed { medium, .. } if !is_gpu_medium(medium.as_deref()) => {
                        Applied::default()
                    }
                    KvEvent::Removed { block_hashes, .. } => cache.remove(rank, block_hashes, sink),
                    KvEvent::Cleared => {
                        cleared += 1;
                        cache.clear(Some(rank), sink);
                        Applied::default()
                    }
                    KvEvent::Unknown(_) => {
                        unknown += 1;
                        Applied::default()
                    }
                };
            }
            applied
        })?;
        outcome.applied = applied;
        outcome.cleared = cleared;
        outcome.unknown_events = unknown;
        Ok(outcome)
    }

    /// Bytes of every node's engine map.
    pub fn kv_cache_bytes(&self) -> usize {
        (self.kv_caches.lock().values())
            .map(|(_, cache)| cache.bytes())
            .sum()
    }

    /// Runs `apply` on the node's engine map (a fresh one for a new incarnation) with
    /// the node's credit as the sink.
    fn with_node_cache(
        &self,
        node_id: &str,
        apply: impl FnOnce(&mut NodeCache, &mut dyn CreditSink) -> Applied,
    ) -> CoreResult<Applied> {
        let node: Arc<NodeEntry> = self.table.get(node_id)?;
        let stamp = self.clock.now_ns();
        let mut caches = self.kv_caches.lock();
        let entry = caches
            .entry(node.slot)
            .or_insert_with(|| (node.incarnation, NodeCache::default()));
        if entry.0 != node.incarnation {
            *entry = (node.incarnation, NodeCache::default());
        }
        let mut sink = NodeCredit {
            router: self,
            node: &node,
            stamp,
        };
        Ok(apply(&mut entry.1, &mut sink))
    }
}
