//! The router's side of engine KV-cache events: per-node and per-tier engine maps
//! ([`NodeCache`]) turned into credit in the main index (GPU memory) or the offloaded
//! one (lower tiers); GPU removals apply to guesses too.

use std::sync::Arc;

use crate::error::{CoreError, CoreResult};
use crate::hashing::chain_seed;
use crate::kv_events::wire::{decode_batch, KvEvent};
use crate::kv_events::{
    Applied, CreditSink, EngineHash, KvEventsState, NodeCache, StoredBlocks, Tier,
};
use crate::node_table::NodeEntry;
use crate::prefix_index::PrefixIndex;

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

/// One node's credit in one tier, as [`NodeCache`] changes it.
struct NodeCredit<'a> {
    router: &'a Router,
    node: &'a NodeEntry,
    tier: Tier,
    stamp: u64,
}

impl NodeCredit<'_> {
    fn index(&self) -> &PrefixIndex {
        match self.tier {
            Tier::Gpu => &self.router.index,
            Tier::Lower => &self.router.offloaded,
        }
    }
}

impl CreditSink for NodeCredit<'_> {
    fn credit(&mut self, chain: &[u64]) {
        let (slot, owner) = (self.node.slot, self.node.incarnation);
        self.index().insert_from(chain, 0, slot, owner, self.stamp);
    }

    fn release(&mut self, chain: &[u64]) {
        self.index().release_from(chain, self.node.slot);
        if self.tier == Tier::Gpu {
            self.router.guesses.release_from(chain, self.node.slot);
        }
    }

    fn forget(&mut self) {
        self.index().forget_node(self.node.slot);
        if self.tier == Tier::Gpu {
            self.router.guesses.forget_node(self.node.slot);
        }
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
            let gpu = caches.remove(&(node.slot, Tier::Gpu));
            caches.remove(&(node.slot, Tier::Lower));
            let gpu = gpu.filter(|(incarnation, _)| *incarnation == node.incarnation);
            self.demote_to_guesses(&node, gpu.map(|(_, cache)| cache).as_ref());
        }
        Ok(previous)
    }

    /// What `gpu` (the node's GPU map, taken out) confirmed becomes expiring guesses;
    /// lower tiers are not guessed at: their credit goes until events rebuild it.
    fn demote_to_guesses(&self, node: &NodeEntry, gpu: Option<&NodeCache>) {
        let now = self.clock.now_ns();
        for chain in gpu.map(NodeCache::leaf_chains).unwrap_or_default() {
            (self.guesses).insert(&chain, node.slot, node.incarnation, now);
        }
        self.index.forget_node(node.slot);
        self.offloaded.forget_node(node.slot);
    }

    /// Applies one `BlockStored` on `rank` of a node.
    pub fn kv_blocks_stored(
        &self,
        node_id: &str,
        rank: u32,
        event: &StoredBlocks<'_>,
        medium: Option<&str>,
    ) -> CoreResult<Applied> {
        let block = self.config.load().token_block_size;
        let tier = Tier::of_medium(medium);
        self.with_node_caches(node_id, |caches| caches.store(tier, rank, event, block))
    }

    /// Applies one `BlockRemoved` on `rank` of a node, in the tier of `medium`.
    pub fn kv_blocks_removed(
        &self,
        node_id: &str,
        rank: u32,
        hashes: &[EngineHash],
        medium: Option<&str>,
    ) -> CoreResult<Applied> {
        self.with_node_caches(node_id, |caches| {
            caches.remove(Tier::of_medium(medium), rank, hashes)
        })
    }

    /// The node's engine dropped its cache on `rank` (None: all of it), every tier.
    pub fn kv_cache_cleared(&self, node_id: &str, rank: Option<u32>) -> CoreResult<()> {
        self.with_node_caches(node_id, |caches| {
            caches.clear(rank);
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
        let applied = self.with_node_caches(node_id, |caches| {
            let mut applied = Applied::default();
            for event in &batch.events {
                applied += match event {
                    KvEvent::Stored(e) => {
                        let stored = StoredBlocks {
                            block_hashes: &e.block_hashes,
                            parent: e.parent_block_hash,
                            token_ids: Some(&e.token_ids),
                            block_size: e.block_size,
                            seed: chain_seed(model, e.lora_name.as_deref()),
                        };
                        caches.store(Tier::of_medium(e.medium.as_deref()), rank, &stored, block)
                    }
                    KvEvent::Removed {
                        block_hashes,
                        medium,
                    } => caches.remove(Tier::of_medium(medium.as_deref()), rank, block_hashes),
                    KvEvent::Cleared => {
                        cleared += 1;
                        caches.clear(Some(rank));
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

    /// Bytes of every node's engine maps.
    pub fn kv_cache_bytes(&self) -> usize {
        (self.kv_caches.lock().values())
            .map(|(_, cache)| cache.bytes())
            .sum()
    }

    /// Runs `apply` on the node's engine maps (fresh ones for a new incarnation).
    fn with_node_caches(
        &self,
        node_id: &str,
        apply: impl FnOnce(&mut NodeCaches<'_, '_>) -> Applied,
    ) -> CoreResult<Applied> {
        let node: Arc<NodeEntry> = self.table.get(node_id)?;
        let stamp = self.clock.now_ns();
        let mut caches = self.kv_caches.lock();
        let mut tiers = [Tier::Gpu, Tier::Lower].map(|tier| {
            let entry = caches.remove(&(node.slot, tier));
            let cache = match entry {
                Some((incarnation, cache)) if incarnation == node.incarnation => cache,
                _ => NodeCache::default(),
            };
            let sink = NodeCredit {
                router: self,
                node: &node,
                tier,
                stamp,
            };
            (cache, sink)
        });
        let mut applied = apply(&mut NodeCaches(&mut tiers));
        // More blocks than the index can hold: removals were lost (an engine holds far
        // fewer), so the maps start over and what they confirmed turns into guesses.
        let limit = self.config.load().prefix_cache_size;
        if tiers.iter().any(|(cache, _)| cache.engine_blocks() > limit) {
            applied.overflowed = true;
            self.demote_to_guesses(&node, Some(&tiers[0].0));
            return Ok(applied);
        }
        for (cache, sink) in tiers {
            if cache.engine_blocks() > 0 {
                caches.insert((node.slot, sink.tier), (node.incarnation, cache));
            }
        }
        Ok(applied)
    }
}

/// A node's engine maps and credit, GPU tier first.
struct NodeCaches<'a, 'r>(&'a mut [(NodeCache, NodeCredit<'r>); 2]);

impl NodeCaches<'_, '_> {
    /// A store in `tier`; a lower tier's blocks without tokens (vLLM's offloading
    /// connector sends none) are the GPU tier's blocks of the same hashes.
    fn store(&mut self, tier: Tier, rank: u32, event: &StoredBlocks<'_>, block: usize) -> Applied {
        let [(gpu, gpu_sink), (lower, lower_sink)] = &mut *self.0;
        match tier {
            Tier::Gpu => gpu.store(rank, event, block, gpu_sink),
            Tier::Lower if event.token_ids.is_some_and(<[u32]>::is_empty) => {
                tier_counted(tier, lower.adopt(rank, event.block_hashes, gpu, lower_sink))
            }
            Tier::Lower => tier_counted(
                tier,
                lower.store_in(rank, event, block, lower_sink, Some(gpu)),
            ),
        }
    }

    fn remove(&mut self, tier: Tier, rank: u32, hashes: &[EngineHash]) -> Applied {
        let [(gpu, gpu_sink), (lower, lower_sink)] = &mut *self.0;
        match tier {
            Tier::Gpu => gpu.remove(rank, hashes, gpu_sink),
            Tier::Lower => lower.remove_in(rank, hashes, lower_sink, Some(gpu)),
        }
    }

    fn clear(&mut self, rank: Option<u32>) {
        for (cache, sink) in self.0.iter_mut() {
            cache.clear(rank, sink);
        }
    }
}

/// Lower-tier stores count as offloaded blocks.
fn tier_counted(tier: Tier, applied: Applied) -> Applied {
    match tier {
        Tier::Gpu => applied,
        Tier::Lower => Applied {
            offloaded_blocks: applied.stored_blocks,
            stored_blocks: 0,
            ..applied
        },
    }
}
