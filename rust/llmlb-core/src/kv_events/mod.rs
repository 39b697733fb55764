//! What each node's engine holds, as its KV-cache events say (vLLM's and SGLang's
//! `BlockStored` / `BlockRemoved` / `AllBlocksCleared`).
//!
//! Engine block hashes are the engine's own, so they are mapped to the index's chain
//! hashes ([`crate::hashing`]) through the tokens each stored block carries, continuing
//! from its parent block: per node and data-parallel rank, a map from engine hash to the
//! index blocks it completes. Engine blocks may be a multiple of the index's block size
//! or a divisor of it (then each entry keeps the tokens past the last index boundary).
//! A store credits the node with the whole chain up to the stored blocks; a removal
//! takes the node's credit from that block down (an engine's prefix lookup stops at the
//! first block it lacks), and drops the removed block's descendants from the map, since
//! they are unreachable on that rank. An index block stays credited while any engine
//! block of the node (over ranks) maps to it.
//!
//! Only the GPU tier is credited: blocks stored to a lower tier (CPU offload, disk) are
//! counted, not credited, since reusing them is a transfer, not a hit.

pub mod wire;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::mem::size_of;

use crate::hashing::extend_token_chain;

/// Where a node's prefix credit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum KvEventsState {
    /// No events: every routed prompt is credited, bounded by the node's KV capacity.
    #[default]
    Off = 0,
    /// The event stream is whole: credit is what the engine confirmed, plus fresh guesses
    /// for prompts just routed there (they expire after the guess TTL).
    Live = 1,
    /// The stream broke (a gap replay could not fill, a dead publisher): what the engine
    /// had confirmed becomes guesses that expire like routed prompts do, and the engine
    /// map starts empty; events still arriving are applied. Back to `Live` once the
    /// stream is whole again.
    Unconfirmed = 2,
}

impl KvEventsState {
    pub fn as_str(self) -> &'static str {
        match self {
            KvEventsState::Off => "off",
            KvEventsState::Live => "live",
            KvEventsState::Unconfirmed => "unconfirmed",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "off" => Some(KvEventsState::Off),
            "live" => Some(KvEventsState::Live),
            "unconfirmed" => Some(KvEventsState::Unconfirmed),
            _ => None,
        }
    }

    pub fn from_u8(value: u8) -> Self {
        match value {
            1 => KvEventsState::Live,
            2 => KvEventsState::Unconfirmed,
            _ => KvEventsState::Off,
        }
    }
}

/// An engine's name for a block: an int hash as the engine gives it (its low 64 bits),
/// a bytes hash folded to 64 bits ([`engine_hash_of_bytes`]).
pub type EngineHash = u64;

pub fn engine_hash_of_bytes(bytes: &[u8]) -> EngineHash {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// True for the tier that serves prefix hits directly (vLLM's `medium` "GPU", or none).
pub fn is_gpu_medium(medium: Option<&str>) -> bool {
    medium.is_none_or(|m| m.eq_ignore_ascii_case("gpu"))
}

/// Where an engine holds a block: GPU memory, or a lower tier (CPU, disk: any other
/// `medium`), credited with `offloaded_prefix_weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    Gpu = 0,
    Lower = 1,
}

impl Tier {
    pub fn of_medium(medium: Option<&str>) -> Self {
        if is_gpu_medium(medium) {
            Tier::Gpu
        } else {
            Tier::Lower
        }
    }
}

/// One `BlockStored` event, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct StoredBlocks<'a> {
    pub block_hashes: &'a [EngineHash],
    /// The engine hash of the block before the first one; None at a prompt's start.
    pub parent: Option<EngineHash>,
    /// The blocks' tokens, `block_hashes.len() * block_size` of them. None: the hashes
    /// are the index's own chain hashes (a caller that hashed with llmlb's scheme).
    pub token_ids: Option<&'a [u32]>,
    /// Tokens per engine block (with `token_ids`).
    pub block_size: usize,
    /// [`crate::hashing::chain_seed`] of the node's model and the event's adapter.
    pub seed: u64,
}

/// What a node's index credit must change by: the seam between this module and the
/// prefix index (and the router's guesses), so the bookkeeping is testable alone.
pub trait CreditSink {
    /// The node holds every block of `chain` (a chain from the prompt start).
    fn credit(&mut self, chain: &[u64]);
    /// The node lacks the last block of `chain`, and so everything below it.
    fn release(&mut self, chain: &[u64]);
    /// The node holds nothing.
    fn forget(&mut self);
}

/// Mixes a 64-bit key so sequential engine hashes (an engine that numbers its blocks)
/// still spread over the table.
#[derive(Default)]
pub struct MixHasher(u64);

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        let x = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^ (x >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Mixed = BuildHasherDefault<MixHasher>;

/// Index blocks that end inside one engine block, in chain order: one when the engine's
/// block size equals the index's (the usual case, kept inline), none or several else.
#[derive(Debug, Clone)]
enum IndexHashes {
    None,
    One(u64),
    Many(Box<[u64]>),
}

impl IndexHashes {
    fn from_slice(hashes: &[u64]) -> Self {
        match hashes {
            [] => IndexHashes::None,
            [one] => IndexHashes::One(*one),
            many => IndexHashes::Many(many.into()),
        }
    }

    fn as_slice(&self) -> &[u64] {
        match self {
            IndexHashes::None => &[],
            IndexHashes::One(hash) => std::slice::from_ref(hash),
            IndexHashes::Many(hashes) => hashes,
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            IndexHashes::Many(hashes) => hashes.len() * size_of::<u64>(),
            _ => 0,
        }
    }
}

/// Which of [`EngineBlock`]'s links are set.
const HAS_PARENT: u32 = 1;
const HAS_CHILD: u32 = 2;
const HAS_SIBLING: u32 = 4;

/// 56 bytes: a map of a million of them takes about 120 B per block with its buckets.
/// The blocks below one are a list (first child, then each child's next sibling), so a
/// removal finds what hangs below it without scanning the map.
#[derive(Debug, Clone)]
struct EngineBlock {
    /// The engine hash of the block before it (when [`HAS_PARENT`] is set).
    parent: EngineHash,
    first_child: EngineHash,
    next_sibling: EngineHash,
    index: IndexHashes,
    /// Index blocks before its first one (its first index hash's depth in the chain).
    depth: u32,
    links: u32,
}

impl EngineBlock {
    fn link(&self, flag: u32, hash: EngineHash) -> Option<EngineHash> {
        (self.links & flag != 0).then_some(hash)
    }

    fn parent(&self) -> Option<EngineHash> {
        self.link(HAS_PARENT, self.parent)
    }

    fn first_child(&self) -> Option<EngineHash> {
        self.link(HAS_CHILD, self.first_child)
    }

    fn next_sibling(&self) -> Option<EngineHash> {
        self.link(HAS_SIBLING, self.next_sibling)
    }

    fn set_first_child(&mut self, child: Option<EngineHash>) {
        self.first_child = child.unwrap_or_default();
        self.links = (self.links & !HAS_CHILD) | if child.is_some() { HAS_CHILD } else { 0 };
    }

    fn set_next_sibling(&mut self, sibling: Option<EngineHash>) {
        self.next_sibling = sibling.unwrap_or_default();
        self.links = (self.links & !HAS_SIBLING) | if sibling.is_some() { HAS_SIBLING } else { 0 };
    }

    fn is_leaf(&self) -> bool {
        self.links & HAS_CHILD == 0
    }

    fn index_hashes(&self) -> &[u64] {
        self.index.as_slice()
    }
}

/// One engine block's share of a stored event.
struct Mapped {
    index: IndexHashes,
    /// Tokens past the last index-block boundary at the block's end (only when engine
    /// blocks are smaller than index blocks).
    tail: Vec<u32>,
    depth: u32,
}

/// The chain at the end of an engine block: index hashes from the prompt start, and the
/// tokens past the last full index block.
#[derive(Debug, Clone, Default)]
struct ChainEnd {
    hashes: Vec<u64>,
    tail: Vec<u32>,
}

#[derive(Debug, Default)]
struct RankBlocks {
    blocks: HashMap<EngineHash, EngineBlock, Mixed>,
    /// Each block's [`Mapped::tail`], for the few blocks that have one.
    tails: HashMap<EngineHash, Box<[u32]>, Mixed>,
}

/// What one store, removal or clear changed, for the caller's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub stored_blocks: u64,
    pub removed_blocks: u64,
    /// Events that could not be placed: a parent never stored (or gone), tokens that do
    /// not fill the blocks, block sizes the index cannot align with.
    pub skipped_events: u64,
    /// Blocks stored in a lower tier (credited with `offloaded_prefix_weight`).
    pub offloaded_blocks: u64,
    /// The node's maps outgrew `prefix_cache_size` blocks (lost removals) and started
    /// over; what they had confirmed became guesses.
    pub overflowed: bool,
}

impl std::ops::AddAssign for Applied {
    fn add_assign(&mut self, other: Applied) {
        self.stored_blocks += other.stored_blocks;
        self.removed_blocks += other.removed_blocks;
        self.skipped_events += other.skipped_events;
        self.offloaded_blocks += other.offloaded_blocks;
        self.overflowed |= other.overflowed;
    }
}

/// One node's engine blocks, over its data-parallel ranks.
#[derive(Debug, Default)]
pub struct NodeCache {
    ranks: HashMap<u32, RankBlocks>,
    /// Engine blocks (over ranks) mapping to each index block.
    refs: HashMap<u64, u32, Mixed>,
    /// The chain the previous store on a rank ended on: consecutive chunks of one
    /// prompt's prefill continue it without walking the map back to the start.
    last: Option<(u32, EngineHash, ChainEnd)>,
}

impl NodeCache {
    /// Engine blocks held, over ranks.
    pub fn engine_blocks(&self) -> usize {
        self.ranks.values().map(|r| r.blocks.len()).sum()
    }

    /// Applies a store on `rank`; `index_block_size` is the index's tokens per block.
    pub fn store(
        &mut self,
        rank: u32,
        event: &StoredBlocks<'_>,
        index_block_size: usize,
        sink: &mut dyn CreditSink,
    ) -> Applied {
        self.store_in(rank, event, index_block_size, sink, None)
    }

    /// [`store`](Self::store) for a lower tier, whose chains may continue blocks only
    /// `gpu` holds.
    pub fn store_in(
        &mut self,
        rank: u32,
        event: &StoredBlocks<'_>,
        index_block_size: usize,
        sink: &mut dyn CreditSink,
        gpu: Option<&NodeCache>,
    ) -> Applied {
        let skipped = Applied {
            skipped_events: 1,
            ..Applied::default()
        };
        if event.block_hashes.is_empty() {
            return Applied::default();
        }
        let Some(mut end) = self.chain_end_in(rank, event.parent, gpu) else {
            return skipped;
        };
        let Some(per_block) = self.index_blocks_of(event, index_block_size, &mut end) else {
            return skipped;
        };
        let rank_blocks = self.ranks.entry(rank).or_default();
        let mut stored = 0;
        let mut parent = event.parent;
        for (&hash, mapped) in event.block_hashes.iter().zip(per_block) {
            // Stored again (a replay overlapping what arrived live): already counted.
            if !rank_blocks.blocks.contains_key(&hash) {
                for &h in mapped.index.as_slice() {
                    *self.refs.entry(h).or_default() += 1;
                }
                // Pushed at the head of its parent's list of children.
                let mut sibling = None;
                if let Some(p) = parent.and_then(|p| rank_blocks.blocks.get_mut(&p)) {
                    sibling = p.first_child();
                    p.set_first_child(Some(hash));
                }
                if !mapped.tail.is_empty() {
                    rank_blocks.tails.insert(hash, mapped.tail.into());
                }
                let mut block = EngineBlock {
                    parent: parent.unwrap_or_default(),
                    first_child: 0,
                    next_sibling: 0,
                    index: mapped.index,
                    depth: mapped.depth,
                    links: if parent.is_some() { HAS_PARENT } else { 0 },
                };
                block.set_next_sibling(sibling);
                rank_blocks.blocks.insert(hash, block);
                stored += 1;
            }
            parent = Some(hash);
        }
        if !end.hashes.is_empty() {
            sink.credit(&end.hashes);
        }
        let last = *event.block_hashes.last().expect("not empty");
        self.last = Some((rank, last, end));
        Applied {
            stored_blocks: stored,
            ..Applied::default()
        }
    }

    /// Applies a removal on `rank`.
    pub fn remove(
        &mut self,
        rank: u32,
        hashes: &[EngineHash],
        sink: &mut dyn CreditSink,
    ) -> Applied {
        self.remove_in(rank, hashes, sink, None)
    }

    /// [`remove`](Self::remove) for a lower tier whose chains may run through blocks
    /// only `gpu` holds.
    pub fn remove_in(
        &mut self,
        rank: u32,
        hashes: &[EngineHash],
        sink: &mut dyn CreditSink,
        gpu: Option<&NodeCache>,
    ) -> Applied {
        let Some(rank_blocks) = self.ranks.get(&rank) else {
            return Applied::default();
        };
        let mut gone: Vec<EngineHash> = hashes
            .iter()
            .copied()
            .filter(|h| rank_blocks.blocks.contains_key(h))
            .collect();
        gone.sort_unstable();
        gone.dedup();
        if gone.is_empty() {
            return Applied::default();
        }
        let removed = gone.len() as u64;
        let all = self.with_descendants(rank, gone);
        // Chains first, while every ancestor is still in the map.
        let (paths, cuts) = self.release_points(rank, &all, gpu);
        let mut released = Vec::new();
        for &hash in &all {
            self.forget_block(rank, hash, &mut released);
        }
        let mut cut_paths = vec![false; paths.len()];
        for (path, depth) in cuts {
            // Released only when no other engine block of the node maps to it; a cut
            // below one already made on the same path has nothing left to take.
            let chain = &paths[path][..=depth];
            if !cut_paths[path] && released.binary_search(&chain[depth]).is_ok() {
                sink.release(chain);
                cut_paths[path] = true;
            }
        }
        if self.last.as_ref().is_some_and(|(r, _, _)| *r == rank) {
            self.last = None;
        }
        Applied {
            removed_blocks: removed,
            ..Applied::default()
        }
    }

    /// For each block of `all` that completes an index block: the chain to its first
    /// one, as (path, depth) into a few full chains (a tail-first eviction is one path,
    /// walked once, deepest block first), shallowest cuts first.
    fn release_points(
        &self,
        rank: u32,
        all: &[EngineHash],
        fallback: Option<&NodeCache>,
    ) -> (Vec<Vec<u64>>, Vec<(usize, usize)>) {
        let blocks = &self.ranks[&rank].blocks;
        let mut order: Vec<&EngineBlock> = all
            .iter()
            .map(|h| &blocks[h])
            .filter(|b| !b.index_hashes().is_empty())
            .collect();
        order.sort_unstable_by_key(|b| std::cmp::Reverse(b.depth));
        let mut paths: Vec<Vec<u64>> = Vec::new();
        let mut cuts = Vec::with_capacity(order.len());
        for block in order {
            let depth = block.depth as usize;
            let first = block.index_hashes()[0];
            let on = paths.iter().position(|p| p.get(depth) == Some(&first));
            let path = match on {
                Some(path) => path,
                None => {
                    let Some(mut end) = self.chain_end_in(rank, block.parent(), fallback) else {
                        continue;
                    };
                    end.hashes.extend_from_slice(block.index_hashes());
                    paths.push(end.hashes);
                    paths.len() - 1
                }
            };
            cuts.push((path, depth));
        }
        cuts.sort_unstable_by_key(|&(_, depth)| depth);
        (paths, cuts)
    }

    /// The engine dropped everything on `rank` (None: every rank, e.g. a restart).
    pub fn clear(&mut self, rank: Option<u32>, sink: &mut dyn CreditSink) {
        match rank {
            None => self.ranks.clear(),
            Some(rank) => {
                self.ranks.remove(&rank);
            }
        }
        self.refs.clear();
        self.last = None;
        sink.forget();
        // What the other ranks still hold stays credited.
        let ranks: Vec<u32> = self.ranks.keys().copied().collect();
        for rank in ranks {
            self.recredit_rank(rank, sink);
        }
    }

    /// The chain of every block nothing hangs below, over ranks (what the node holds).
    pub fn leaf_chains(&self) -> Vec<Vec<u64>> {
        let mut chains = Vec::new();
        for (&rank, blocks) in &self.ranks {
            for (&hash, block) in &blocks.blocks {
                if !block.is_leaf() {
                    continue;
                }
                if let Some(end) = self.chain_end(rank, Some(hash)) {
                    if !end.hashes.is_empty() {
                        chains.push(end.hashes);
                    }
                }
            }
        }
        chains
    }

    fn recredit_rank(&mut self, rank: u32, sink: &mut dyn CreditSink) {
        let leaves: Vec<EngineHash> = self.ranks[&rank]
            .blocks
            .iter()
            .filter(|(_, b)| b.is_leaf())
            .map(|(&h, _)| h)
            .collect();
        for block in self.ranks[&rank].blocks.values() {
            for &h in block.index_hashes() {
                *self.refs.entry(h).or_default() += 1;
            }
        }
        for leaf in leaves {
            if let Some(end) = self.chain_end(rank, Some(leaf)) {
                if !end.hashes.is_empty() {
                    sink.credit(&end.hashes);
                }
            }
        }
    }

    /// The chain at the end of engine block `parent` on `rank` (the empty chain for
    /// None); None when the block is unknown.
    fn chain_end(&self, rank: u32, parent: Option<EngineHash>) -> Option<ChainEnd> {
        self.chain_end_in(rank, parent, None)
    }

    /// [`chain_end`](Self::chain_end), taking the blocks this map lacks from `fallback`
    /// (a lower tier's chain runs through blocks only GPU memory holds).
    fn chain_end_in(
        &self,
        rank: u32,
        parent: Option<EngineHash>,
        fallback: Option<&NodeCache>,
    ) -> Option<ChainEnd> {
        let Some(parent) = parent else {
            return Some(ChainEnd::default());
        };
        if let Some((r, h, end)) = &self.last {
            if *r == rank && *h == parent {
                return Some(end.clone());
            }
        }
        let find = |hash: &EngineHash| {
            (self.ranks.get(&rank).and_then(|r| r.blocks.get(hash)))
                .or_else(|| fallback?.ranks.get(&rank)?.blocks.get(hash))
        };
        let mut reversed: Vec<u64> = Vec::new();
        let mut at = Some(find(&parent)?);
        while let Some(block) = at {
            reversed.extend(block.index_hashes().iter().rev());
            at = match block.parent() {
                Some(p) => Some(find(&p)?),
                None => None,
            };
        }
        reversed.reverse();
        let tail = (self.ranks.get(&rank).and_then(|r| r.tails.get(&parent)))
            .or_else(|| fallback?.ranks.get(&rank)?.tails.get(&parent));
        Some(ChainEnd {
            hashes: reversed,
            tail: tail.map_or_else(Vec::new, |t| t.to_vec()),
        })
    }

    /// Takes in blocks an engine moved to this (lower) tier without their tokens or
    /// parents, as vLLM's offloading connector reports them: each is the block of the
    /// same engine hash in `gpu`, which must still know it.
    pub fn adopt(
        &mut self,
        rank: u32,
        hashes: &[EngineHash],
        gpu: &NodeCache,
        sink: &mut dyn CreditSink,
    ) -> Applied {
        let Some(known) = gpu.ranks.get(&rank) else {
            return Applied {
                skipped_events: u64::from(!hashes.is_empty()),
                ..Applied::default()
            };
        };
        let mut applied = Applied::default();
        let mut adopted = Vec::new();
        for &hash in hashes {
            let Some(block) = known.blocks.get(&hash) else {
                applied.skipped_events = 1;
                continue;
            };
            let rank_blocks = self.ranks.entry(rank).or_default();
            if rank_blocks.blocks.contains_key(&hash) {
                continue;
            }
            for &h in block.index_hashes() {
                *self.refs.entry(h).or_default() += 1;
            }
            let mut copy = block.clone();
            copy.set_first_child(None);
            copy.set_next_sibling(None);
            if let Some(p) = block.parent().and_then(|p| rank_blocks.blocks.get_mut(&p)) {
                copy.set_next_sibling(p.first_child());
                p.set_first_child(Some(hash));
            }
            if let Some(tail) = known.tails.get(&hash) {
                rank_blocks.tails.insert(hash, tail.clone());
            }
            rank_blocks.blocks.insert(hash, copy);
            adopted.push(hash);
            applied.stored_blocks += 1;
        }
        self.last = None;
        // One credit per chain: the adopted blocks no other adopted block continues.
        let parents: std::collections::HashSet<EngineHash> = (adopted.iter())
            .filter_map(|h| self.ranks[&rank].blocks[h].parent())
            .collect();
        for hash in adopted.iter().filter(|h| !parents.contains(h)) {
            if let Some(end) = self.chain_end_in(rank, Some(*hash), Some(gpu)) {
                if !end.hashes.is_empty() {
                    sink.credit(&end.hashes);
                }
            }
        }
        applied
    }

    /// Per engine block of `event`: the index hashes ending in it and the tokens left
    /// past them; extends `end` to the chain after the last block. None when the event
    /// cannot be mapped.
    fn index_blocks_of(
        &self,
        event: &StoredBlocks<'_>,
        index_block_size: usize,
        end: &mut ChainEnd,
    ) -> Option<Vec<Mapped>> {
        let n = event.block_hashes.len();
        let Some(tokens) = event.token_ids else {
            // The hashes are index hashes, one index block per engine block.
            let start = end.hashes.len();
            end.hashes.extend_from_slice(event.block_hashes);
            let one = |(i, &h): (usize, &u64)| Mapped {
                index: IndexHashes::One(h),
                tail: Vec::new(),
                depth: (start + i) as u32,
            };
            return Some(event.block_hashes.iter().enumerate().map(one).collect());
        };
        let size = event.block_size;
        let aligned = size > 0
            && (size.is_multiple_of(index_block_size) || index_block_size.is_multiple_of(size))
            && tokens.len() == n * size;
        if !aligned {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for block in tokens.chunks_exact(size) {
            let before = end.hashes.len();
            let mut pending = std::mem::take(&mut end.tail);
            pending.extend_from_slice(block);
            let full = pending.len() / index_block_size * index_block_size;
            let parent = end.hashes.last().copied().unwrap_or(event.seed);
            extend_token_chain(&mut end.hashes, parent, &pending[..full], index_block_size);
            end.tail = pending[full..].to_vec();
            out.push(Mapped {
                index: IndexHashes::from_slice(&end.hashes[before..]),
                tail: end.tail.clone(),
                depth: before as u32,
            });
        }
        Some(out)
    }

    /// `gone` (sorted) and every block below one of them on `rank`, sorted: blocks below
    /// a removed one are unreachable for the engine's prefix lookup, so they leave too.
    fn with_descendants(&self, rank: u32, gone: Vec<EngineHash>) -> Vec<EngineHash> {
        let blocks = &self.ranks[&rank].blocks;
        if gone.iter().all(|h| blocks[h].is_leaf()) {
            return gone;
        }
        let mut out: std::collections::HashSet<EngineHash> = gone.iter().copied().collect();
        let mut stack = gone;
        while let Some(hash) = stack.pop() {
            let mut child = blocks[&hash].first_child();
            while let Some(c) = child {
                if out.insert(c) {
                    stack.push(c);
                }
                child = blocks[&c].next_sibling();
            }
        }
        let mut out: Vec<EngineHash> = out.into_iter().collect();
        out.sort_unstable();
        out
    }

    /// Drops engine block `hash` from the map; pushes (sorted) the index hashes no
    /// engine block of the node maps to any more.
    fn forget_block(&mut self, rank: u32, hash: EngineHash, released: &mut Vec<u64>) {
        let rank_blocks = self.ranks.get_mut(&rank).expect("rank present");
        let Some(block) = rank_blocks.blocks.remove(&hash) else {
            return;
        };
        rank_blocks.tails.remove(&hash);
        if let Some(parent) = block.parent() {
            unlink_child(&mut rank_blocks.blocks, parent, hash, block.next_sibling());
        }
        for &h in block.index_hashes() {
            if let Some(count) = self.refs.get_mut(&h) {
                *count -= 1;
                if *count == 0 {
                    self.refs.remove(&h);
                    if let Err(i) = released.binary_search(&h) {
                        released.insert(i, h);
                    }
                }
            }
        }
    }

    /// Approximate bytes held: hashbrown's buckets (a power of two at least 8/7 of the
    /// capacity), each a key-value pair and a control byte, and what entries box.
    pub fn bytes(&self) -> usize {
        let per_rank: usize = (self.ranks.values())
            .map(|r| {
                let boxed: usize = r.blocks.values().map(|b| b.index.heap_bytes()).sum();
                let tails: usize = r.tails.values().map(|t| t.len() * size_of::<u32>()).sum();
                table_bytes::<(EngineHash, EngineBlock)>(r.blocks.capacity())
                    + table_bytes::<(EngineHash, Box<[u32]>)>(r.tails.capacity())
                    + boxed
                    + tails
            })
            .sum();
        per_rank + table_bytes::<(u64, u32)>(self.refs.capacity())
    }
}

/// Takes `child` out of `parent`'s list of children (`next` followed it).
fn unlink_child(
    blocks: &mut HashMap<EngineHash, EngineBlock, Mixed>,
    parent: EngineHash,
    child: EngineHash,
    next: Option<EngineHash>,
) {
    let Some(first) = blocks.get(&parent).and_then(EngineBlock::first_child) else {
        return;
    };
    if first == child {
        blocks
            .get_mut(&parent)
            .expect("present")
            .set_first_child(next);
        return;
    }
    let mut at = first;
    while let Some(sibling) = blocks.get(&at).and_then(EngineBlock::next_sibling) {
        if sibling == child {
            blocks.get_mut(&at).expect("present").set_next_sibling(next);
            return;
        }
        at = sibling;
    }
}

fn table_bytes<T>(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = (capacity * 8 / 7).next_power_of_two();
    buckets * (size_of::<T>() + 1)
}

#[cfg(test)]
mod tests;
