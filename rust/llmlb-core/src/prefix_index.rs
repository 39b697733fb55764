//! The prefix index: a radix tree over chains of block hashes (see [`crate::hashing`]).
//!
//! Each entry is one block of some prompt; its key is the chain hash, which already
//! names the whole prefix, so the tree is stored flat: a map from hash to a slab slot,
//! with parent links and child counts for the tree shape. An entry records which nodes
//! hold that prefix (node slots) and when it was last used (an epoch stamp, written
//! with a relaxed atomic so lookups can touch entries under the read lock).
//!
//! Bounds: at most `capacity` entries overall, evicting least recently used leaves in
//! batches; and, for a node that declares its KV capacity, at most that many blocks
//! credited to it, evicting its own least recently used holdings — so the index does
//! not promise caches the engine has long evicted.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::mem::size_of;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use smallvec::SmallVec;

const NO_PARENT: u32 = u32::MAX;
/// Evict down to this share of a bound, so eviction runs once per many inserts.
const EVICT_TO: f64 = 0.95;
/// Let a node's holdings exceed its budget by this share before sweeping it.
const NODE_SLACK: f64 = 1.05;

/// Keys are already xxh3 outputs: hashing them again would only cost time.
#[derive(Default)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
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

type HashToSlot = HashMap<u64, u32, BuildHasherDefault<IdentityHasher>>;
type Holders = SmallVec<[u16; 4]>;

#[derive(Debug)]
struct Entry {
    hash: u64,
    parent: u32,
    children: u32,
    last_used: AtomicU64,
    holders: Holders,
}

/// For each node holding part of a prompt, how many leading blocks it holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PrefixMatch {
    pub depth_by_slot: SmallVec<[(u16, u32); 8]>,
    pub max_depth: u32,
}

impl PrefixMatch {
    pub fn depth_of(&self, slot: u16) -> u32 {
        self.depth_by_slot
            .iter()
            .find(|(s, _)| *s == slot)
            .map_or(0, |&(_, d)| d)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct IndexStats {
    pub entries: usize,
    pub capacity: usize,
    pub bytes: usize,
    pub bytes_per_entry: f64,
    pub lookups: u64,
    pub lookups_with_hit: u64,
    pub blocks_looked_up: u64,
    pub blocks_matched: u64,
    pub evicted: u64,
}

#[derive(Debug, Default)]
struct Tree {
    map: HashToSlot,
    entries: Vec<Entry>,
    free: Vec<u32>,
    blocks_by_node: Vec<u32>,
    budget_by_node: Vec<Option<u32>>,
    capacity: usize,
    evicted: u64,
    spilled_holders: usize,
}

#[derive(Debug, Default)]
pub struct PrefixIndex {
    tree: RwLock<Tree>,
    epoch: AtomicU64,
    lookups: AtomicU64,
    lookups_with_hit: AtomicU64,
    blocks_looked_up: AtomicU64,
    blocks_matched: AtomicU64,
}

impl PrefixIndex {
    pub fn new(capacity: usize) -> Self {
        let index = PrefixIndex::default();
        index.tree.write().capacity = capacity.max(1);
        index
    }

    /// Longest-prefix match of `hashes`; touches the matched entries.
    pub fn lookup(&self, hashes: &[u64]) -> PrefixMatch {
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        let result = self.tree.read().lookup(hashes, epoch);
        self.lookups.fetch_add(1, Ordering::Relaxed);
        self.blocks_looked_up
            .fetch_add(hashes.len() as u64, Ordering::Relaxed);
        if result.max_depth > 0 {
            self.lookups_with_hit.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Counts the blocks the chosen node already had, for the hit rate.
    pub fn record_served(&self, matched_blocks: u32) {
        self.blocks_matched
            .fetch_add(matched_blocks as u64, Ordering::Relaxed);
    }

    /// Records that node `slot` now holds every block of `hashes`.
    pub fn insert(&self, hashes: &[u64], slot: u16) {
        if hashes.is_empty() {
            return;
        }
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        let mut tree = self.tree.write();
        tree.insert(hashes, slot, epoch);
        tree.enforce_node_budget(slot);
        tree.enforce_capacity();
    }

    /// Drops everything credited to a node (removed, or it reported its cache cleared).
    pub fn forget_node(&self, slot: u16) {
        let mut tree = self.tree.write();
        let held: Vec<u32> = tree.slots_held_by(slot);
        for entry in held {
            tree.release_holding(entry, slot);
        }
    }

    /// Bounds a node's credited blocks (None: only the global capacity applies).
    pub fn set_node_budget(&self, slot: u16, blocks: Option<u32>) {
        let mut tree = self.tree.write();
        tree.ensure_node(slot);
        if tree.budget_by_node[slot as usize] != blocks {
            tree.budget_by_node[slot as usize] = blocks;
            tree.enforce_node_budget(slot);
        }
    }

    pub fn set_capacity(&self, capacity: usize) {
        let mut tree = self.tree.write();
        tree.capacity = capacity.max(1);
        tree.enforce_capacity();
    }

    pub fn blocks_held_by(&self, slot: u16) -> u32 {
        let tree = self.tree.read();
        tree.blocks_by_node.get(slot as usize).copied().unwrap_or(0)
    }

    pub fn stats(&self) -> IndexStats {
        let tree = self.tree.read();
        let entries = tree.map.len();
        let bytes = tree.bytes();
        IndexStats {
            entries,
            capacity: tree.capacity,
            bytes,
            bytes_per_entry: if entries > 0 {
                bytes as f64 / entries as f64
            } else {
                0.0
            },
            lookups: self.lookups.load(Ordering::Relaxed),
            lookups_with_hit: self.lookups_with_hit.load(Ordering::Relaxed),
            blocks_looked_up: self.blocks_looked_up.load(Ordering::Relaxed),
            blocks_matched: self.blocks_matched.load(Ordering::Relaxed),
            evicted: tree.evicted,
        }
    }
}

impl Tree {
    fn lookup(&self, hashes: &[u64], epoch: u64) -> PrefixMatch {
        let mut result = PrefixMatch::default();
        // Nodes holding every block so far; a node's depth ends where it drops out.
        let mut alive: Holders = SmallVec::new();
        for (depth, hash) in hashes.iter().enumerate() {
            let Some(&slot) = self.map.get(hash) else {
                break;
            };
            let entry = &self.entries[slot as usize];
            if depth == 0 {
                alive = entry.holders.clone();
            } else {
                let depth = depth as u32;
                alive.retain(|node| {
                    let keep = entry.holders.contains(node);
                    if !keep {
                        result.depth_by_slot.push((*node, depth));
                    }
                    keep
                });
            }
            if alive.is_empty() {
                break;
            }
            entry.last_used.store(epoch, Ordering::Relaxed);
            result.max_depth = depth as u32 + 1;
        }
        let max_depth = result.max_depth;
        result
            .depth_by_slot
            .extend(alive.into_iter().map(|node| (node, max_depth)));
        result
    }

    fn ensure_node(&mut self, slot: u16) {
        let needed = slot as usize + 1;
        if self.blocks_by_node.len() < needed {
            self.blocks_by_node.resize(needed, 0);
            self.budget_by_node.resize(needed, None);
        }
    }

    fn insert(&mut self, hashes: &[u64], node: u16, epoch: u64) {
        self.ensure_node(node);
        let mut parent = NO_PARENT;
        for &hash in hashes {
            let slot = match self.map.get(&hash) {
                Some(&slot) => slot,
                None => self.create(hash, parent),
            };
            let entry = &mut self.entries[slot as usize];
            entry.last_used.store(epoch, Ordering::Relaxed);
            if !entry.holders.contains(&node) {
                let was_spilled = entry.holders.spilled();
                entry.holders.push(node);
                if entry.holders.spilled() && !was_spilled {
                    self.spilled_holders += 1;
                }
                self.blocks_by_node[node as usize] += 1;
            }
            parent = slot;
        }
    }

    fn create(&mut self, hash: u64, parent: u32) -> u32 {
        let entry = Entry {
            hash,
            parent,
            children: 0,
            last_used: AtomicU64::new(0),
            holders: SmallVec::new(),
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.entries[slot as usize] = entry;
                slot
            }
            None => {
                self.entries.push(entry);
                (self.entries.len() - 1) as u32
            }
        };
        if parent != NO_PARENT {
            self.entries[parent as usize].children += 1;
        }
        self.map.insert(hash, slot);
        slot
    }

    /// Removes an entry that has no children, and any ancestors left empty by it.
    fn remove_leaf(&mut self, mut slot: u32) {
        loop {
            let entry = &mut self.entries[slot as usize];
            debug_assert_eq!(entry.children, 0);
            for &node in &entry.holders {
                self.blocks_by_node[node as usize] -= 1;
            }
            if entry.holders.spilled() {
                self.spilled_holders -= 1;
            }
            entry.holders = SmallVec::new();
            let (hash, parent) = (entry.hash, entry.parent);
            self.map.remove(&hash);
            self.free.push(slot);
            self.evicted += 1;
            if parent == NO_PARENT {
                return;
            }
            let parent_entry = &mut self.entries[parent as usize];
            parent_entry.children -= 1;
            if parent_entry.children > 0 || !parent_entry.holders.is_empty() {
                return;
            }
            slot = parent;
        }
    }

    /// Takes `node` off an entry; removes the entry if nothing else keeps it.
    fn release_holding(&mut self, slot: u32, node: u16) {
        let entry = &mut self.entries[slot as usize];
        let Some(pos) = entry.holders.iter().position(|&n| n == node) else {
            return;
        };
        entry.holders.swap_remove(pos);
        self.blocks_by_node[node as usize] -= 1;
        if entry.holders.is_empty() && entry.children == 0 {
            self.remove_leaf(slot);
        }
    }

    fn slots_held_by(&self, node: u16) -> Vec<u32> {
        self.map
            .values()
            .copied()
            .filter(|&s| self.entries[s as usize].holders.contains(&node))
            .collect()
    }

    fn enforce_capacity(&mut self) {
        if self.map.len() <= self.capacity {
            return;
        }
        let target = ((self.capacity as f64 * EVICT_TO) as usize).min(self.capacity - 1);
        while self.map.len() > target {
            let mut leaves: Vec<(u64, u32)> = self
                .map
                .values()
                .map(|&s| (&self.entries[s as usize], s))
                .filter(|(e, _)| e.children == 0)
                .map(|(e, s)| (e.last_used.load(Ordering::Relaxed), s))
                .collect();
            let excess = self.map.len() - target;
            if leaves.len() > excess {
                leaves.select_nth_unstable(excess);
                leaves.truncate(excess);
            }
            for (_, slot) in leaves {
                // A batch may already have removed this slot through an ancestor cascade.
                if self.entries[slot as usize].children == 0 && self.map.contains_key(&self.entries[slot as usize].hash) {
                    self.remove_leaf(slot);
                }
            }
        }
    }

    fn enforce_node_budget(&mut self, node: u16) {
        let Some(budget) = self.budget_by_node.get(node as usize).copied().flatten() else {
            return;
        };
        let held = self.blocks_by_node[node as usize];
        if (held as f64) <= budget as f64 * NODE_SLACK {
            return;
        }
        let target = (budget as f64 * EVICT_TO) as u32;
        let mut holdings: Vec<(u64, u32, u32)> = self
            .slots_held_by(node)
            .into_iter()
            .map(|s| {
                let e = &self.entries[s as usize];
                // Among equally old entries, deeper ones (fewer children first) go first.
                (e.last_used.load(Ordering::Relaxed), e.children, s)
            })
            .collect();
        holdings.sort_unstable();
        let excess = (held - target) as usize;
        for &(_, _, slot) in holdings.iter().take(excess) {
            if self.map.contains_key(&self.entries[slot as usize].hash) {
                self.release_holding(slot, node);
            }
        }
    }

    fn bytes(&self) -> usize {
        let slab = self.entries.capacity() * size_of::<Entry>();
        // hashbrown: one (key, value) pair plus one control byte per bucket.
        let map = self.map.capacity() * (size_of::<(u64, u32)>() + 1);
        let spilled = self.spilled_holders * 8 * size_of::<u16>();
        slab + map + spilled + self.free.capacity() * size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(ids: &[u64]) -> Vec<u64> {
        ids.iter().map(|i| i * 1_000_003 + 7).collect()
    }

    #[test]
    fn longest_prefix_per_node() {
        let index = PrefixIndex::new(100);
        index.insert(&chain(&[1, 2, 3]), 0);
        index.insert(&chain(&[1, 2]), 1);
        index.insert(&chain(&[1, 2, 3, 4]), 2);
        let m = index.lookup(&chain(&[1, 2, 3, 9]));
        assert_eq!(m.max_depth, 3);
        assert_eq!(m.depth_of(0), 3);
        assert_eq!(m.depth_of(1), 2);
        assert_eq!(m.depth_of(2), 3);
        assert_eq!(m.depth_of(5), 0);
        assert_eq!(index.lookup(&chain(&[8])).max_depth, 0);
    }

    #[test]
    fn capacity_evicts_least_recently_used_leaves() {
        let index = PrefixIndex::new(10);
        for pair in [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]] {
            index.insert(&chain(&pair), 0);
        }
        index.lookup(&chain(&[1, 2]));
        index.insert(&chain(&[11]), 0);
        assert_eq!(index.stats().entries, 9, "evicted down to 95% of capacity");
        assert_eq!(index.lookup(&chain(&[1, 2])).max_depth, 2, "recently used kept");
        assert_eq!(index.lookup(&chain(&[3, 4])).max_depth, 1, "oldest leaf went first");
        assert_eq!(index.lookup(&chain(&[5, 6])).max_depth, 1, "second oldest leaf");
        assert_eq!(index.lookup(&chain(&[7, 8])).max_depth, 2);
        assert_eq!(index.stats().evicted, 2);
    }

    #[test]
    fn forgetting_a_node_keeps_others() {
        let index = PrefixIndex::new(100);
        index.insert(&chain(&[1, 2, 3]), 0);
        index.insert(&chain(&[1, 2]), 1);
        index.forget_node(0);
        let m = index.lookup(&chain(&[1, 2, 3]));
        assert_eq!((m.depth_of(0), m.depth_of(1)), (0, 2));
        assert_eq!(index.stats().entries, 2);
        assert_eq!(index.blocks_held_by(0), 0);
        index.forget_node(1);
        assert_eq!(index.stats().entries, 0);
    }

    #[test]
    fn node_budget_bounds_credited_blocks() {
        let index = PrefixIndex::new(1000);
        index.set_node_budget(0, Some(10));
        for i in 0..50 {
            index.insert(&chain(&[100 + i]), 0);
        }
        assert!(index.blocks_held_by(0) <= 11);
        assert_eq!(index.lookup(&chain(&[149])).depth_of(0), 1, "newest kept");
        assert_eq!(index.lookup(&chain(&[100])).depth_of(0), 0, "oldest dropped");
    }

    #[test]
    fn many_holders_spill_and_are_counted() {
        let index = PrefixIndex::new(100);
        for node in 0..10 {
            index.insert(&chain(&[1]), node);
        }
        assert_eq!(index.lookup(&chain(&[1])).depth_by_slot.len(), 10);
        assert!(index.stats().bytes > 0);
    }
}
