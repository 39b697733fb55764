//! The prefix index: a radix tree over chains of block hashes (see [`crate::hashing`]).
//!
//! Hash `i` of a chain names the whole prefix up to block `i`. The tree is stored as
//! *runs*: stretches of consecutive blocks with no branch inside, each found through a
//! map from its first hash (a new 32k-token prompt is one run, not 2000 entries). Within
//! a run, "block `k` of the query is block `k` of the run" holds for a leading stretch
//! and then never again, so the matched length is a binary search: a lookup costs a map
//! probe and a binary search per run on its path, not a probe per block. Callers must
//! therefore pass real chains (each hash determined by the blocks up to it); a hash that
//! would break the tree's shape is where indexing of that prompt stops.
//!
//! A run records, per node slot holding part of it, how many of its leading blocks the
//! node holds. Invariants, kept by every change under the write lock:
//! - a run exists => its parent exists and ends where it starts (runs go leaf first);
//! - a node holds blocks of a run => it holds all of the parent run (nodes are credited
//!   with whole prefixes, and lose blocks tail first, only where they hold no child run).
//!
//! So a node's matched depth is read off the deepest run it holds on the path (the
//! lookup still intersects holder sets run by run, so it equals the block-by-block walk).
//!
//! Recency is per run: a router-clock stamp written with a relaxed atomic so lookups
//! touch runs under the read lock, and at most once per [`TOUCH_RESOLUTION_NS`] so a run
//! every request shares does not bounce between cores. Lookups and inserts touch each
//! run they enter (a handful per prompt). A lookup that ends inside a run refreshes all
//! of it; the insert that follows splits the run where the prompt leaves it, so only a
//! prompt that ends inside a longer one refreshes blocks it did not match.
//!
//! Bounds: at most `capacity` blocks overall, evicting the least recently used leaf runs
//! tail first; and, for a node that declares its KV capacity, at most that many blocks
//! credited to it, dropping its own least recently used leaf holdings tail first — so
//! the index does not promise caches the engine has long evicted. Both are min-heaps of
//! (stamp, run) records, checked lazily against the runs (second chance for runs touched
//! since), so bounding costs what it evicts, not a scan of the index.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::mem::size_of;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::counters::ShardedCounters;
use smallvec::SmallVec;

/// Evict down to this share of a bound, so eviction runs once per many inserts.
const EVICT_TO: f64 = 0.95;
/// Owner of a slot no node was bound to (what direct users of the index insert as).
pub const UNBOUND: u64 = 0;
/// Owner of a slot whose node was removed: nothing is credited to it until rebound.
pub const RETIRED: u64 = u64::MAX;

/// LRU stamps closer than this are not rewritten.
pub const TOUCH_RESOLUTION_NS: u64 = 1_000_000;
/// Let a node's holdings exceed its budget by this share before sweeping it.
const NODE_SLACK: f64 = 1.05;
/// Eviction heaps are compacted when stale records outnumber live ones by this much.
const HEAP_SLACK_RECORDS: usize = 1024;

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

type RunId = u32;
const NO_RUN: RunId = RunId::MAX;

/// A node slot's share of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Holder {
    slot: u16,
    /// Leading blocks of the run the node holds (at least one).
    held: u32,
    /// Child runs the node holds blocks of (then `held` is the whole run).
    kids: u32,
}

/// Sorted by slot, so the lookup can intersect holder sets in one merge pass (a system
/// prompt may be on every node).
type Holders = SmallVec<[Holder; 1]>;

#[derive(Debug)]
struct Run {
    /// Chain hashes of its blocks, in order. Runs only shrink or split, so a boxed slice
    /// (no spare capacity) is enough.
    hashes: Box<[u64]>,
    /// Depth of its first block.
    start: u32,
    parent: RunId,
    /// Runs starting where this one ends (a subtree can be walked down, for a node whose
    /// engine reports a block gone: everything it held below goes with it).
    children: SmallVec<[RunId; 2]>,
    last_used: AtomicU64,
    holders: Holders,
}

impl Run {
    fn len(&self) -> u32 {
        self.hashes.len() as u32
    }

    fn first(&self) -> u64 {
        self.hashes[0]
    }

    fn holder(&self, slot: u16) -> Option<usize> {
        self.holders.binary_search_by_key(&slot, |h| h.slot).ok()
    }

    /// Blocks at its tail no node holds, when it is a leaf (nothing hangs off them).
    fn unheld_tail(&self) -> u32 {
        if !self.children.is_empty() {
            return 0;
        }
        self.len() - self.holders.iter().map(|h| h.held).max().unwrap_or(0)
    }
}

/// An eviction candidate: (stamp, sequence number, first hash of a run), the stamp being
/// when the run was last used as the record was made. Equal stamps (a manual clock)
/// go first in, first out.
type Record = Reverse<(u64, u64, u64)>;

fn record(seq: &mut u64, stamp: u64, hash: u64) -> Record {
    *seq += 1;
    Reverse((stamp, *seq, hash))
}

/// Pushes a record, growing the heap by a quarter when full: doubling would leave up to
/// half of it spare, in a structure with a record or two per run.
fn push(heap: &mut BinaryHeap<Record>, record: Record) {
    if heap.len() == heap.capacity() {
        heap.reserve_exact(heap.len() / 4 + 64);
    }
    heap.push(record);
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

    /// Keeps, per slot, the deeper of this match and `other`.
    pub fn merge_max(&mut self, other: &PrefixMatch) {
        for &(slot, depth) in &other.depth_by_slot {
            match self.depth_by_slot.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, d)) => *d = (*d).max(depth),
                None => self.depth_by_slot.push((slot, depth)),
            }
        }
        self.max_depth = self.max_depth.max(other.max_depth);
    }

    /// Adds, per slot, `weight` of the blocks `other` holds past this match's depth (a
    /// lower tier: what is not in GPU memory continues from there).
    pub fn merge_weighted(&mut self, other: &PrefixMatch, weight: f64) {
        for &(slot, lower) in &other.depth_by_slot {
            let upper = self.depth_of(slot);
            if lower <= upper {
                continue;
            }
            let depth = upper + (weight * (lower - upper) as f64) as u32;
            match self.depth_by_slot.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, d)) => *d = depth,
                None if depth > 0 => self.depth_by_slot.push((slot, depth)),
                None => {}
            }
            self.max_depth = self.max_depth.max(depth);
        }
    }

    /// Depth of every slot below `slots`, for callers that ask about many nodes.
    pub fn dense_depths(&self, slots: usize) -> Vec<u32> {
        let mut depths = vec![0; slots];
        for &(slot, depth) in &self.depth_by_slot {
            if let Some(d) = depths.get_mut(slot as usize) {
                *d = depth;
            }
        }
        depths
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct IndexStats {
    /// Blocks indexed.
    pub entries: usize,
    pub capacity: usize,
    /// Runs the blocks are stored in.
    pub runs: usize,
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
    by_first_hash: HashMap<u64, RunId, BuildHasherDefault<IdentityHasher>>,
    runs: Vec<Option<Run>>,
    free: Vec<RunId>,
    blocks: usize,
    /// Every leaf run has a record here.
    leaves: BinaryHeap<Record>,
    /// Who holds each slot now ([`UNBOUND`], a node's incarnation, or [`RETIRED`]):
    /// an insert for a previous owner of a reused slot is dropped.
    owner_by_node: Vec<u64>,
    blocks_by_node: Vec<u32>,
    runs_by_node: Vec<u32>,
    budget_by_node: Vec<Option<u32>>,
    /// Per node with a budget: every run it holds and holds no child of has a record here.
    leaves_by_node: Vec<Option<BinaryHeap<Record>>>,
    /// Numbers the eviction records.
    seq: u64,
    capacity: usize,
    evicted: u64,
}

const LOOKUPS: usize = 0;
const LOOKUPS_WITH_HIT: usize = 1;
const BLOCKS_LOOKED_UP: usize = 2;
const BLOCKS_MATCHED: usize = 3;

#[derive(Debug, Default)]
pub struct PrefixIndex {
    tree: RwLock<Tree>,
    counters: ShardedCounters<4>,
}

impl PrefixIndex {
    pub fn new(capacity: usize) -> Self {
        let index = PrefixIndex::default();
        index.tree.write().capacity = capacity.max(1);
        index
    }

    /// Longest-prefix match of `hashes`; touches the runs matched into with `stamp`.
    pub fn lookup(&self, hashes: &[u64], stamp: u64) -> PrefixMatch {
        let result = self.tree.read().lookup(hashes, stamp);
        self.counters.add(LOOKUPS, 1);
        self.counters.add(BLOCKS_LOOKED_UP, hashes.len() as u64);
        if result.max_depth > 0 {
            self.counters.add(LOOKUPS_WITH_HIT, 1);
        }
        result
    }

    /// [`lookup`](Self::lookup) for inspection: not counted in the hit-rate figures.
    pub fn peek(&self, hashes: &[u64], stamp: u64) -> PrefixMatch {
        self.tree.read().lookup(hashes, stamp)
    }

    /// Counts the blocks the chosen node already had, for the hit rate.
    pub fn record_served(&self, matched_blocks: u32) {
        self.counters.add(BLOCKS_MATCHED, matched_blocks as u64);
    }

    /// Records that node `slot` now holds every block of `hashes`, used at `stamp`.
    pub fn insert(&self, hashes: &[u64], slot: u16, stamp: u64) {
        self.insert_from(hashes, 0, slot, UNBOUND, stamp);
    }

    /// Like [`insert`](Self::insert) after a lookup showed the node holding the first
    /// `held` blocks: nothing to do (no write lock) when that is all of them; else the
    /// whole path is credited (a run at a time), which also mends what eviction took
    /// since the lookup. Dropped unless `owner` still holds the slot (the node may have
    /// been removed meanwhile).
    pub fn insert_from(&self, hashes: &[u64], held: usize, slot: u16, owner: u64, stamp: u64) {
        if held >= hashes.len() {
            return;
        }
        let mut tree = self.tree.write();
        tree.ensure_node(slot);
        if tree.owner_by_node[slot as usize] != owner {
            return;
        }
        tree.insert(hashes, slot, stamp);
        tree.enforce_node_budget(slot);
        tree.enforce_capacity();
        tree.compact_heaps(slot);
    }

    /// Node `slot` no longer holds the last block of `hashes` (a chain from the prompt
    /// start), nor anything below it: the engine reported it gone, and an engine's prefix
    /// lookup stops at the first block it lacks. Returns the blocks taken off the node.
    pub fn release_from(&self, hashes: &[u64], slot: u16) -> u32 {
        if hashes.is_empty() {
            return 0;
        }
        let mut tree = self.tree.write();
        if tree.blocks_by_node.len() <= slot as usize {
            return 0;
        }
        let before = tree.blocks_by_node[slot as usize];
        if let Some((id, offset)) = tree.locate(hashes) {
            tree.release_subtree(id, offset, slot);
        }
        before - tree.blocks_by_node[slot as usize]
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.tree.read().blocks == 0
    }

    /// Drops every entry; keeps which node holds each slot and their budgets.
    pub fn clear_entries(&self) {
        let mut tree = self.tree.write();
        let owners = std::mem::take(&mut tree.owner_by_node);
        let budgets = std::mem::take(&mut tree.budget_by_node);
        let (capacity, evicted, seq) = (tree.capacity, tree.evicted, tree.seq);
        *tree = Tree {
            capacity,
            evicted,
            seq,
            ..Tree::default()
        };
        for (slot, (owner, budget)) in owners.into_iter().zip(budgets).enumerate() {
            tree.ensure_node(slot as u16);
            tree.owner_by_node[slot] = owner;
            tree.set_budget(slot as u16, budget);
        }
    }

    /// Drops everything credited to a node (it reported its cache cleared).
    pub fn forget_node(&self, slot: u16) {
        self.tree.write().forget_node(slot);
    }

    /// Gives a slot to a new node (`owner`: its incarnation) with its block budget.
    pub fn bind_node(&self, slot: u16, owner: u64, budget: Option<u32>) {
        let mut tree = self.tree.write();
        tree.ensure_node(slot);
        tree.owner_by_node[slot as usize] = owner;
        tree.set_budget(slot, budget);
    }

    /// A removed node: drops its entries and refuses late inserts for it.
    pub fn retire_node(&self, slot: u16) {
        let mut tree = self.tree.write();
        tree.forget_node(slot);
        tree.owner_by_node[slot as usize] = RETIRED;
    }

    /// Bounds a node's credited blocks (None: only the global capacity applies).
    pub fn set_node_budget(&self, slot: u16, blocks: Option<u32>) {
        let mut tree = self.tree.write();
        tree.ensure_node(slot);
        if tree.budget_by_node[slot as usize] != blocks {
            tree.set_budget(slot, blocks);
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
        let entries = tree.blocks;
        let bytes = tree.bytes();
        IndexStats {
            entries,
            capacity: tree.capacity,
            runs: tree.by_first_hash.len(),
            bytes,
            bytes_per_entry: if entries > 0 {
                bytes as f64 / entries as f64
            } else {
                0.0
            },
            lookups: self.counters.sum(LOOKUPS),
            lookups_with_hit: self.counters.sum(LOOKUPS_WITH_HIT),
            blocks_looked_up: self.counters.sum(BLOCKS_LOOKED_UP),
            blocks_matched: self.counters.sum(BLOCKS_MATCHED),
            evicted: tree.evicted,
        }
    }
}

fn touch(last_used: &AtomicU64, stamp: u64) {
    if stamp >= last_used.load(Ordering::Relaxed) + TOUCH_RESOLUTION_NS {
        last_used.store(stamp, Ordering::Relaxed);
    }
}

/// How many leading blocks of `run` the query `rest` shares, given it shares the first:
/// equal chain hashes at one position imply equal ones at every earlier position.
fn matched_len(run: &[u64], rest: &[u64]) -> usize {
    let (mut lo, mut hi) = (1, run.len().min(rest.len()));
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if run[mid - 1] == rest[mid - 1] {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// Visits each alive slot (every holder, at the root) with its holding of a run, if any.
fn merge(alive: Option<&[u16]>, holders: &[Holder], mut visit: impl FnMut(u16, Option<&Holder>)) {
    let Some(alive) = alive else {
        holders.iter().for_each(|h| visit(h.slot, Some(h)));
        return;
    };
    let mut j = 0;
    for &slot in alive {
        while j < holders.len() && holders[j].slot < slot {
            j += 1;
        }
        visit(slot, holders.get(j).filter(|h| h.slot == slot));
    }
}

/// Records a node's leaf holding, if the node has a budget (else nothing evicts by it).
fn note_holding(heap: &mut Option<BinaryHeap<Record>>, seq: &mut u64, stamp: u64, hash: u64) {
    if let Some(heap) = heap {
        push(heap, record(seq, stamp, hash));
    }
}

fn live(runs: &[Option<Run>], id: RunId) -> &Run {
    runs[id as usize].as_ref().expect("a live run")
}

fn live_mut(runs: &mut [Option<Run>], id: RunId) -> &mut Run {
    runs[id as usize].as_mut().expect("a live run")
}

impl Tree {
    fn run(&self, id: RunId) -> &Run {
        live(&self.runs, id)
    }

    /// The child of `parent` (NO_RUN: a root) that starts at `depth` with block `hash`.
    fn find(&self, hash: u64, depth: usize, parent: RunId) -> Option<RunId> {
        let &id = self.by_first_hash.get(&hash)?;
        let run = self.run(id);
        (run.start as usize == depth && run.parent == parent).then_some(id)
    }

    fn lookup(&self, hashes: &[u64], stamp: u64) -> PrefixMatch {
        let mut depth_by_slot = SmallVec::new();
        // Slots holding every block before `depth` (None at the root: any holder).
        let mut alive: Option<SmallVec<[u16; 8]>> = None;
        let (mut depth, mut parent) = (0, NO_RUN);
        while let Some(id) = hashes.get(depth).and_then(|&h| self.find(h, depth, parent)) {
            let run = self.run(id);
            let matched = matched_len(&run.hashes, &hashes[depth..]);
            let through = matched == run.hashes.len();
            let mut next = SmallVec::new();
            let mut entered = false;
            merge(alive.as_deref(), &run.holders, |slot, holding| {
                let held = holding.map_or(0, |h| (h.held as usize).min(matched));
                entered |= held > 0;
                if through && held == matched {
                    next.push(slot);
                } else {
                    depth_by_slot.push((slot, (depth + held) as u32));
                }
            });
            if entered {
                touch(&run.last_used, stamp);
            }
            depth += matched;
            parent = id;
            let done = next.is_empty();
            alive = Some(next);
            if done {
                break;
            }
        }
        depth_by_slot.extend(
            alive
                .unwrap_or_default()
                .into_iter()
                .map(|s| (s, depth as u32)),
        );
        let max_depth = depth_by_slot.iter().map(|&(_, d)| d).max().unwrap_or(0);
        PrefixMatch {
            depth_by_slot,
            max_depth,
        }
    }

    fn ensure_node(&mut self, slot: u16) {
        let needed = slot as usize + 1;
        if self.blocks_by_node.len() < needed {
            self.owner_by_node.resize(needed, UNBOUND);
            self.blocks_by_node.resize(needed, 0);
            self.runs_by_node.resize(needed, 0);
            self.budget_by_node.resize(needed, None);
            self.leaves_by_node.resize_with(needed, || None);
        }
    }

    /// Credits `slot` with every block of `hashes`, run by run from the root: the run the
    /// prompt leaves the tree in is split there, and the blocks past it are one new run.
    fn insert(&mut self, hashes: &[u64], slot: u16, stamp: u64) {
        self.ensure_node(slot);
        let (mut depth, mut parent) = (0, NO_RUN);
        while depth < hashes.len() {
            let rest = &hashes[depth..];
            let Some(mut id) = self.find(rest[0], depth, parent) else {
                // A hash that starts a run elsewhere is not part of a chain: stop there.
                if !self.by_first_hash.contains_key(&rest[0]) {
                    let id = self.create(rest, depth as u32, parent, stamp);
                    self.credit(id, slot, rest.len() as u32, stamp);
                }
                return;
            };
            let matched = matched_len(&self.run(id).hashes, rest);
            if matched < self.run(id).hashes.len() && matched < rest.len() {
                let Some(head) = self.split(id, matched) else {
                    return;
                };
                id = head;
            }
            touch(&self.run(id).last_used, stamp);
            self.credit(id, slot, matched as u32, stamp);
            depth += matched;
            parent = id;
        }
    }

    fn create(&mut self, hashes: &[u64], start: u32, parent: RunId, stamp: u64) -> RunId {
        let run = Run {
            hashes: hashes.into(),
            start,
            parent,
            children: SmallVec::new(),
            last_used: AtomicU64::new(stamp),
            holders: Holders::new(),
        };
        self.blocks += hashes.len();
        push(&mut self.leaves, record(&mut self.seq, stamp, hashes[0]));
        let id = self.alloc(run);
        if parent != NO_RUN {
            live_mut(&mut self.runs, parent).children.push(id);
        }
        self.by_first_hash.insert(hashes[0], id);
        id
    }

    fn alloc(&mut self, run: Run) -> RunId {
        if let Some(id) = self.free.pop() {
            self.runs[id as usize] = Some(run);
            return id;
        }
        if self.runs.len() == self.runs.capacity() {
            // Grows by a quarter, not double: the slab is most of a short run's bytes.
            self.runs.reserve_exact(self.runs.len() / 4 + 64);
        }
        self.runs.push(Some(run));
        (self.runs.len() - 1) as RunId
    }

    /// Credits `slot` with the first `held` blocks of run `id`; it holds the parent run.
    fn credit(&mut self, id: RunId, slot: u16, held: u32, stamp: u64) {
        let run = live_mut(&mut self.runs, id);
        let (first, parent) = (run.first(), run.parent);
        match run.holders.binary_search_by_key(&slot, |h| h.slot) {
            Ok(i) => {
                let added = held.saturating_sub(run.holders[i].held);
                run.holders[i].held += added;
                self.blocks_by_node[slot as usize] += added;
            }
            Err(i) => {
                run.holders.insert(
                    i,
                    Holder {
                        slot,
                        held,
                        kids: 0,
                    },
                );
                self.blocks_by_node[slot as usize] += held;
                self.runs_by_node[slot as usize] += 1;
                let heap = &mut self.leaves_by_node[slot as usize];
                note_holding(heap, &mut self.seq, stamp, first);
                if parent != NO_RUN {
                    let parent = live_mut(&mut self.runs, parent);
                    let i = parent.holder(slot).expect("the parent run is held");
                    parent.holders[i].kids += 1;
                }
            }
        }
    }

    /// Cuts run `id` after its first `k` blocks and returns the new head run; the tail
    /// keeps the id, so its children's parent links stay right. None when the tail's
    /// first hash already starts another run (not a chain: nothing is split).
    fn split(&mut self, id: RunId, k: usize) -> Option<RunId> {
        let run = self.run(id);
        if self.by_first_hash.contains_key(&run.hashes[k]) {
            return None;
        }
        let k32 = k as u32;
        let head = Run {
            hashes: run.hashes[..k].into(),
            start: run.start,
            parent: run.parent,
            children: SmallVec::from_slice(&[id]),
            last_used: AtomicU64::new(run.last_used.load(Ordering::Relaxed)),
            holders: (run.holders.iter())
                .map(|h| Holder {
                    slot: h.slot,
                    held: h.held.min(k32),
                    kids: (h.held > k32) as u32,
                })
                .collect(),
        };
        let (head_first, grandparent) = (head.hashes[0], head.parent);
        let head_id = self.alloc(head);
        if grandparent != NO_RUN {
            let siblings = &mut live_mut(&mut self.runs, grandparent).children;
            if let Some(c) = siblings.iter_mut().find(|c| **c == id) {
                *c = head_id;
            }
        }
        let tail = live_mut(&mut self.runs, id);
        tail.hashes = tail.hashes[k..].into();
        tail.start += k32;
        tail.parent = head_id;
        tail.holders.retain(|h| h.held > k32);
        tail.holders.iter_mut().for_each(|h| h.held -= k32);
        let (first, last_used) = (tail.first(), tail.last_used.load(Ordering::Relaxed));
        if tail.children.is_empty() {
            push(&mut self.leaves, record(&mut self.seq, last_used, first));
        }
        for h in &tail.holders {
            self.runs_by_node[h.slot as usize] += 1;
            if h.kids == 0 {
                let heap = &mut self.leaves_by_node[h.slot as usize];
                note_holding(heap, &mut self.seq, last_used, first);
            }
        }
        self.by_first_hash.insert(head_first, head_id);
        self.by_first_hash.insert(first, id);
        Some(head_id)
    }

    /// Drops the last `n` blocks of leaf run `id`, then whatever of its ancestors no
    /// node holds any more.
    fn drop_tail(&mut self, mut id: RunId, mut n: u32) {
        while n > 0 {
            let Some(parent) = self.cut(id, n) else {
                return;
            };
            id = parent;
            n = self.run(id).unheld_tail();
        }
    }

    /// Drops the last `n` blocks of leaf run `id` from it and its holders; returns the
    /// parent when the run is gone.
    fn cut(&mut self, id: RunId, n: u32) -> Option<RunId> {
        let run = live_mut(&mut self.runs, id);
        let keep = run.len() - n;
        let (first, parent) = (run.first(), run.parent);
        run.hashes = run.hashes[..keep as usize].into();
        let mut emptied: SmallVec<[u16; 8]> = SmallVec::new();
        for h in run.holders.iter_mut().filter(|h| h.held > keep) {
            self.blocks_by_node[h.slot as usize] -= h.held - keep;
            h.held = keep;
            if keep == 0 {
                emptied.push(h.slot);
            }
        }
        run.holders.retain(|h| h.held > 0);
        self.blocks -= n as usize;
        self.evicted += n as u64;
        for slot in emptied {
            self.runs_by_node[slot as usize] -= 1;
            self.lost_child_holding(parent, slot);
        }
        if keep > 0 {
            return None;
        }
        self.runs[id as usize] = None;
        self.free.push(id);
        self.by_first_hash.remove(&first);
        if parent == NO_RUN {
            return None;
        }
        let p = live_mut(&mut self.runs, parent);
        p.children.retain(|c| *c != id);
        if p.children.is_empty() {
            push(
                &mut self.leaves,
                record(
                    &mut self.seq,
                    p.last_used.load(Ordering::Relaxed),
                    p.first(),
                ),
            );
        }
        Some(parent)
    }

    /// `slot` lost its holding of a child of run `id`.
    fn lost_child_holding(&mut self, id: RunId, slot: u16) {
        if id == NO_RUN {
            return;
        }
        let run = live_mut(&mut self.runs, id);
        let i = run.holder(slot).expect("the parent run is held");
        run.holders[i].kids -= 1;
        if run.holders[i].kids == 0 {
            let stamp = run.last_used.load(Ordering::Relaxed);
            let heap = &mut self.leaves_by_node[slot as usize];
            note_holding(heap, &mut self.seq, stamp, run.first());
        }
    }

    /// Takes the last `n` blocks of run `id` off `slot`, which holds no child of it.
    fn release(&mut self, id: RunId, slot: u16, n: u32) {
        let run = live_mut(&mut self.runs, id);
        let i = run.holder(slot).expect("held");
        run.holders[i].held -= n;
        self.blocks_by_node[slot as usize] -= n;
        if run.holders[i].held == 0 {
            let parent = run.parent;
            run.holders.remove(i);
            self.runs_by_node[slot as usize] -= 1;
            self.lost_child_holding(parent, slot);
        }
        let unheld = self.run(id).unheld_tail();
        self.drop_tail(id, unheld);
    }

    /// The run holding the last block of chain `hashes`, and that block's offset in it.
    fn locate(&self, hashes: &[u64]) -> Option<(RunId, u32)> {
        let (mut depth, mut parent) = (0, NO_RUN);
        loop {
            let id = self.find(hashes[depth], depth, parent)?;
            let run = self.run(id);
            let matched = matched_len(&run.hashes, &hashes[depth..]);
            if depth + matched == hashes.len() {
                return Some((id, matched as u32 - 1));
            }
            if matched < run.hashes.len() {
                return None; // the chain leaves the tree inside this run
            }
            depth += matched;
            parent = id;
        }
    }

    /// Takes from `slot` its blocks of run `id` from `offset` on and everything it holds
    /// in the runs below, deepest first (so each release finds no child holding).
    fn release_subtree(&mut self, id: RunId, offset: u32, slot: u16) {
        let Some(held) = self
            .run(id)
            .holder(slot)
            .map(|i| self.run(id).holders[i].held)
        else {
            return;
        };
        if held <= offset {
            return;
        }
        let mut order = Vec::new();
        let mut stack = vec![id];
        while let Some(run_id) = stack.pop() {
            order.push(run_id);
            let run = self.run(run_id);
            let holds_kids = run.holder(slot).is_some_and(|i| run.holders[i].kids > 0);
            if holds_kids {
                let held_by_slot = |c: &&RunId| self.run(**c).holder(slot).is_some();
                stack.extend(run.children.iter().filter(held_by_slot));
            }
        }
        for &run_id in order.iter().rev() {
            // A release may prune runs nobody holds any more; skip those.
            let Some(run) = self.runs[run_id as usize].as_ref() else {
                continue;
            };
            let Some(held) = run.holder(slot).map(|i| run.holders[i].held) else {
                continue;
            };
            let keep = if run_id == id { offset } else { 0 };
            if held > keep {
                self.release(run_id, slot, held - keep);
            }
        }
    }

    fn forget_node(&mut self, slot: u16) {
        self.ensure_node(slot);
        let mut held = Vec::new();
        for (id, run) in self.runs.iter_mut().enumerate() {
            if let Some(run) = run {
                if let Some(i) = run.holder(slot) {
                    run.holders.remove(i);
                    held.push(id as RunId);
                }
            }
        }
        self.blocks_by_node[slot as usize] = 0;
        self.runs_by_node[slot as usize] = 0;
        if let Some(heap) = &mut self.leaves_by_node[slot as usize] {
            heap.clear();
        }
        for id in held {
            // An earlier prune may have taken this run with its child.
            if self.runs[id as usize].is_some() {
                let unheld = self.run(id).unheld_tail();
                self.drop_tail(id, unheld);
            }
        }
    }

    fn enforce_capacity(&mut self) {
        if self.blocks <= self.capacity {
            return;
        }
        let target = ((self.capacity as f64 * EVICT_TO) as usize).min(self.capacity - 1);
        while self.blocks > target {
            let Some(popped @ Reverse((stamp, _, hash))) = self.leaves.pop() else {
                break;
            };
            let Some(&id) = self.by_first_hash.get(&hash) else {
                continue;
            };
            let run = self.run(id);
            if !run.children.is_empty() {
                continue; // a record comes back when its last child goes
            }
            let last_used = run.last_used.load(Ordering::Relaxed);
            if last_used > stamp {
                push(&mut self.leaves, record(&mut self.seq, last_used, hash));
                continue;
            }
            let n = (self.blocks - target).min(run.hashes.len()) as u32;
            if n < run.len() {
                push(&mut self.leaves, popped);
            }
            self.drop_tail(id, n);
        }
    }

    fn budget_heap(&mut self, slot: u16) -> &mut BinaryHeap<Record> {
        let heap = self.leaves_by_node[slot as usize].as_mut();
        heap.expect("a node with a budget has a heap")
    }

    /// A node's budget; its eviction heap exists while it has one.
    fn set_budget(&mut self, slot: u16, budget: Option<u32>) {
        self.budget_by_node[slot as usize] = budget;
        let has_heap = self.leaves_by_node[slot as usize].is_some();
        if budget.is_none() {
            self.leaves_by_node[slot as usize] = None;
        } else if !has_heap {
            self.leaves_by_node[slot as usize] = Some(self.leaf_holdings(slot));
        }
        self.enforce_node_budget(slot);
    }

    /// Records of every run `slot` holds and holds no child of.
    fn leaf_holdings(&mut self, slot: u16) -> BinaryHeap<Record> {
        let mut heap = BinaryHeap::new();
        for run in self.runs.iter().flatten() {
            if run.holder(slot).is_some_and(|i| run.holders[i].kids == 0) {
                let stamp = run.last_used.load(Ordering::Relaxed);
                push(&mut heap, record(&mut self.seq, stamp, run.first()));
            }
        }
        heap
    }

    fn enforce_node_budget(&mut self, slot: u16) {
        let Some(budget) = self.budget_by_node.get(slot as usize).copied().flatten() else {
            return;
        };
        if (self.blocks_by_node[slot as usize] as f64) <= budget as f64 * NODE_SLACK {
            return;
        }
        let target = (budget as f64 * EVICT_TO) as u32;
        while self.blocks_by_node[slot as usize] > target {
            let Some(popped @ Reverse((stamp, _, hash))) = self.budget_heap(slot).pop() else {
                break;
            };
            let Some(&id) = self.by_first_hash.get(&hash) else {
                continue;
            };
            let run = self.run(id);
            let Some(holding) = run.holder(slot).map(|i| run.holders[i]) else {
                continue;
            };
            if holding.kids > 0 {
                continue; // a record comes back when its last child holding goes
            }
            let last_used = run.last_used.load(Ordering::Relaxed);
            if last_used > stamp {
                let heap = &mut self.leaves_by_node[slot as usize];
                note_holding(heap, &mut self.seq, last_used, hash);
                continue;
            }
            let n = (self.blocks_by_node[slot as usize] - target).min(holding.held);
            if n < holding.held {
                push(self.budget_heap(slot), popped);
            }
            self.release(id, slot, n);
        }
    }

    /// Drops stale and duplicate eviction records once they outnumber live ones.
    fn compact_heaps(&mut self, slot: u16) {
        if self.leaves.len() > 2 * self.by_first_hash.len() + HEAP_SLACK_RECORDS {
            let heap = std::mem::take(&mut self.leaves);
            self.leaves = self.live_records(heap, |run| run.children.is_empty());
        }
        let held = self.runs_by_node[slot as usize] as usize;
        let heap = &mut self.leaves_by_node[slot as usize];
        if heap
            .as_ref()
            .is_some_and(|h| h.len() > 2 * held + HEAP_SLACK_RECORDS)
        {
            let heap = heap.take().unwrap_or_default();
            self.leaves_by_node[slot as usize] = Some(self.live_records(heap, |run| {
                run.holder(slot).is_some_and(|i| run.holders[i].kids == 0)
            }));
        }
    }

    /// The records of `heap` whose run still qualifies, the newest one per run.
    fn live_records(
        &self,
        heap: BinaryHeap<Record>,
        qualifies: impl Fn(&Run) -> bool,
    ) -> BinaryHeap<Record> {
        let mut records = heap.into_vec();
        records.retain(|Reverse((_, _, hash))| {
            (self.by_first_hash.get(hash)).is_some_and(|&id| qualifies(self.run(id)))
        });
        records.sort_unstable_by_key(|&Reverse((stamp, seq, hash))| (hash, Reverse((stamp, seq))));
        records.dedup_by_key(|Reverse((_, _, hash))| *hash);
        records.shrink_to_fit();
        BinaryHeap::from(records)
    }

    fn bytes(&self) -> usize {
        // hashbrown: one (key, value) pair plus one control byte per bucket.
        let map = self.by_first_hash.capacity() * (size_of::<(u64, RunId)>() + 1);
        let slab = self.runs.capacity() * size_of::<Option<Run>>()
            + self.free.capacity() * size_of::<RunId>();
        let runs: usize = (self.runs.iter().flatten())
            .map(|run| {
                let mut spilled = if run.holders.spilled() {
                    run.holders.capacity() * size_of::<Holder>()
                } else {
                    0
                };
                if run.children.spilled() {
                    spilled += run.children.capacity() * size_of::<RunId>();
                }
                run.hashes.len() * size_of::<u64>() + spilled
            })
            .sum();
        let records = self.leaves.capacity()
            + (self.leaves_by_node.iter().flatten())
                .map(BinaryHeap::capacity)
                .sum::<usize>();
        let per_node = size_of::<u64>()
            + 2 * size_of::<u32>()
            + size_of::<Option<u32>>()
            + size_of::<Option<BinaryHeap<Record>>>();
        map + slab
            + runs
            + records * size_of::<Record>()
            + self.blocks_by_node.capacity() * per_node
    }
}

#[cfg(test)]
impl Tree {
    /// The invariants of the module doc, and the bookkeeping eviction relies on.
    fn check(&self) {
        let mut blocks_by_node = vec![0u32; self.blocks_by_node.len()];
        let mut runs_by_node = vec![0u32; self.runs_by_node.len()];
        let mut children: HashMap<RunId, u32> = HashMap::new();
        let mut kids: HashMap<(RunId, u16), u32> = HashMap::new();
        let live: Vec<(RunId, &Run)> = (self.runs.iter().enumerate())
            .filter_map(|(id, run)| Some((id as RunId, run.as_ref()?)))
            .collect();
        assert_eq!(live.len(), self.by_first_hash.len());
        let blocks: usize = live.iter().map(|(_, run)| run.hashes.len()).sum();
        assert_eq!(blocks, self.blocks);
        for &(id, run) in &live {
            assert_eq!(self.by_first_hash.get(&run.first()), Some(&id));
            assert!(run.holders.windows(2).all(|w| w[0].slot < w[1].slot));
            if run.parent == NO_RUN {
                assert_eq!(run.start, 0);
            } else {
                let parent = self.run(run.parent);
                assert_eq!(
                    run.start,
                    parent.start + parent.len(),
                    "starts where its parent ends"
                );
                *children.entry(run.parent).or_default() += 1;
            }
            for h in &run.holders {
                assert!((1..=run.len()).contains(&h.held));
                blocks_by_node[h.slot as usize] += h.held;
                runs_by_node[h.slot as usize] += 1;
                if run.parent != NO_RUN {
                    let parent = self.run(run.parent);
                    let whole = parent.holder(h.slot).map(|i| parent.holders[i].held);
                    assert_eq!(whole, Some(parent.len()), "holds all of the parent run");
                    *kids.entry((run.parent, h.slot)).or_default() += 1;
                }
            }
        }
        assert_eq!(blocks_by_node, self.blocks_by_node);
        assert_eq!(runs_by_node, self.runs_by_node);
        let recorded = |heap: &BinaryHeap<Record>, hash| heap.iter().any(|r| r.0 .2 == hash);
        for &(id, run) in &live {
            assert_eq!(
                run.children.len() as u32,
                children.get(&id).copied().unwrap_or(0)
            );
            assert!(run.children.iter().all(|&c| self.run(c).parent == id));
            if run.children.is_empty() {
                assert_eq!(run.unheld_tail(), 0, "a leaf's blocks are held");
                assert!(recorded(&self.leaves, run.first()), "a leaf has a record");
            }
            for h in &run.holders {
                assert_eq!(h.kids, kids.get(&(id, h.slot)).copied().unwrap_or(0));
                let heap = &self.leaves_by_node[h.slot as usize];
                assert_eq!(
                    heap.is_some(),
                    self.budget_by_node[h.slot as usize].is_some()
                );
                if let Some(heap) = heap.as_ref().filter(|_| h.kids == 0) {
                    assert!(recorded(heap, run.first()), "a leaf holding has a record");
                }
            }
        }
    }

    /// Each indexed block's hash and the slots holding it.
    fn blocks_view(&self) -> HashMap<u64, Vec<u16>> {
        let mut view = HashMap::new();
        for run in self.runs.iter().flatten() {
            for (k, &hash) in run.hashes.iter().enumerate() {
                let holders = run.holders.iter().filter(|h| h.held as usize > k);
                view.insert(hash, holders.map(|h| h.slot).collect());
            }
        }
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hashing::chain_hash_tokens;
    use proptest::prelude::*;

    /// Stamps one second apart, as a router clock would give.
    #[derive(Default)]
    struct Stamps(std::cell::Cell<u64>);

    impl Stamps {
        fn next(&self) -> u64 {
            self.0.set(self.0.get() + 1_000_000_000);
            self.0.get()
        }
    }

    fn chain(ids: &[u32]) -> Vec<u64> {
        chain_hash_tokens(ids, 1, crate::hashing::HASH_SEED)
    }

    fn check(index: &PrefixIndex) {
        index.tree.read().check();
    }

    /// The longest match block by block, as the index computed it before runs.
    fn linear_lookup(blocks: &HashMap<u64, Vec<u16>>, hashes: &[u64]) -> Vec<(u16, u32)> {
        let mut depths = Vec::new();
        let mut alive: Vec<u16> = Vec::new();
        let mut max_depth = 0;
        for (depth, hash) in hashes.iter().enumerate() {
            let Some(holders) = blocks.get(hash) else {
                break;
            };
            if depth == 0 {
                alive = holders.clone();
            } else {
                let (kept, dropped): (Vec<u16>, Vec<u16>) =
                    alive.iter().partition(|s| holders.contains(s));
                depths.extend(dropped.into_iter().map(|s| (s, depth as u32)));
                alive = kept;
            }
            if alive.is_empty() {
                break;
            }
            max_depth = depth as u32 + 1;
        }
        depths.extend(alive.into_iter().map(|s| (s, max_depth)));
        sorted(depths)
    }

    fn sorted(mut depths: Vec<(u16, u32)>) -> Vec<(u16, u32)> {
        depths.sort_unstable();
        depths
    }

    #[test]
    fn longest_prefix_per_node() {
        let t = Stamps::default();
        let index = PrefixIndex::new(100);
        index.insert(&chain(&[1, 2, 3]), 0, t.next());
        index.insert(&chain(&[1, 2]), 1, t.next());
        index.insert(&chain(&[1, 2, 3, 4]), 2, t.next());
        let m = index.lookup(&chain(&[1, 2, 3, 9]), t.next());
        assert_eq!(m.max_depth, 3);
        assert_eq!(m.depth_of(0), 3);
        assert_eq!(m.depth_of(1), 2);
        assert_eq!(m.depth_of(2), 3);
        assert_eq!(m.depth_of(5), 0);
        assert_eq!(index.lookup(&chain(&[8]), t.next()).max_depth, 0);
        check(&index);
    }

    #[test]
    fn a_new_prompt_is_one_run_and_a_branch_splits_it() {
        let t = Stamps::default();
        let index = PrefixIndex::new(100_000);
        let long: Vec<u32> = (0..2000).collect();
        index.insert(&chain(&long), 0, t.next());
        assert_eq!((index.stats().entries, index.stats().runs), (2000, 1));
        let mut branch = long[..1000].to_vec();
        branch.extend(5000..5500);
        index.insert(&chain(&branch), 1, t.next());
        assert_eq!((index.stats().entries, index.stats().runs), (2500, 3));
        let m = index.lookup(&chain(&branch), t.next());
        assert_eq!((m.depth_of(0), m.depth_of(1)), (1000, 1500));
        assert!(index.stats().bytes_per_entry < 40.0, "{:?}", index.stats());
        check(&index);
    }

    #[test]
    fn capacity_evicts_the_least_recently_used_prompt_tail_first() {
        let t = Stamps::default();
        let index = PrefixIndex::new(10);
        for pair in [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]] {
            index.insert(&chain(&pair), 0, t.next());
        }
        index.lookup(&chain(&[1, 2]), t.next());
        index.insert(&chain(&[11]), 0, t.next());
        assert_eq!(index.stats().entries, 9, "evicted down to 95% of capacity");
        assert_eq!(index.stats().evicted, 2);
        let depth = |ids: &[u32]| index.lookup(&chain(ids), t.next()).max_depth;
        assert_eq!(depth(&[1, 2]), 2, "recently used kept");
        assert_eq!(depth(&[3, 4]), 0, "the oldest prompt went, whole");
        assert_eq!(depth(&[5, 6]), 2);
        check(&index);
    }

    #[test]
    fn capacity_takes_a_long_prompt_tail_first() {
        let t = Stamps::default();
        let index = PrefixIndex::new(10);
        let long = chain(&(100..108).collect::<Vec<_>>());
        index.insert(&long, 1, t.next());
        index.insert(&chain(&[20, 21]), 0, t.next());
        index.insert(&chain(&[30]), 0, t.next());
        assert_eq!(index.lookup(&long, t.next()).depth_of(1), 6);
        assert_eq!(index.stats().entries, 9);
        check(&index);
    }

    #[test]
    fn forgetting_a_node_keeps_others() {
        let t = Stamps::default();
        let index = PrefixIndex::new(100);
        index.insert(&chain(&[1, 2, 3]), 0, t.next());
        index.insert(&chain(&[1, 2]), 1, t.next());
        index.forget_node(0);
        let m = index.lookup(&chain(&[1, 2, 3]), t.next());
        assert_eq!((m.depth_of(0), m.depth_of(1)), (0, 2));
        assert_eq!(index.stats().entries, 2);
        assert_eq!(index.blocks_held_by(0), 0);
        check(&index);
        index.forget_node(1);
        assert_eq!(index.stats().entries, 0);
        check(&index);
    }

    #[test]
    fn node_budget_bounds_credited_blocks() {
        let t = Stamps::default();
        let index = PrefixIndex::new(1000);
        index.set_node_budget(0, Some(10));
        for i in 0..50 {
            index.insert(&chain(&[100 + i]), 0, t.next());
        }
        assert!(index.blocks_held_by(0) <= 11);
        assert_eq!(
            index.lookup(&chain(&[149]), t.next()).depth_of(0),
            1,
            "newest kept"
        );
        assert_eq!(
            index.lookup(&chain(&[100]), t.next()).depth_of(0),
            0,
            "oldest dropped"
        );
        check(&index);
    }

    #[test]
    fn node_budget_spares_entries_used_since_they_were_credited() {
        let t = Stamps::default();
        let index = PrefixIndex::new(1000);
        index.set_node_budget(0, Some(20));
        let kept = chain(&[1, 2, 3]);
        index.insert(&kept, 0, t.next());
        for i in 0..19 {
            index.insert(&chain(&[100 + i]), 0, t.next());
            // Looked up again and again: recently used although credited first.
            assert_eq!(index.lookup(&kept, t.next()).depth_of(0), 3);
        }
        assert!(index.blocks_held_by(0) <= 19, "the budget was enforced");
        assert_eq!(index.lookup(&kept, t.next()).depth_of(0), 3);
        assert_eq!(index.lookup(&chain(&[100]), t.next()).depth_of(0), 0);
        check(&index);
    }

    #[test]
    fn a_long_chain_is_evicted_tail_first() {
        let t = Stamps::default();
        let index = PrefixIndex::new(1000);
        index.set_node_budget(0, Some(10));
        let long = chain(&(1..=12).collect::<Vec<_>>());
        index.insert(&long, 0, t.next());
        let held = index.blocks_held_by(0) as usize;
        assert!(held < 12);
        assert_eq!(index.lookup(&long, t.next()).depth_of(0) as usize, held);
        check(&index);
    }

    #[test]
    fn a_shared_prefix_outlives_the_branches_a_budget_drops() {
        let t = Stamps::default();
        let index = PrefixIndex::new(1000);
        index.set_node_budget(0, Some(20));
        let system: Vec<u32> = (0..8).collect();
        for branch in 0..10 {
            let mut prompt = system.clone();
            prompt.extend([100 + branch, 200 + branch]);
            index.insert(&chain(&prompt), 0, t.next());
            check(&index);
        }
        assert_eq!(index.lookup(&chain(&system), t.next()).depth_of(0), 8);
    }

    #[test]
    fn eviction_records_stay_bounded() {
        let t = Stamps::default();
        let index = PrefixIndex::new(1000);
        index.set_node_budget(0, Some(1000));
        let blocks = chain(&[1, 2, 3, 4]);
        for i in 0..5000 {
            index.insert(&blocks[..1 + i % 4], 0, t.next());
            index.insert(&chain(&[9, i as u32 % 7]), 0, t.next());
            index.forget_node(0);
        }
        let tree = index.tree.read();
        assert!(tree.leaves_by_node[0].as_ref().unwrap().len() <= HEAP_SLACK_RECORDS + 16);
        assert!(tree.leaves.len() <= 2 * tree.by_first_hash.len() + HEAP_SLACK_RECORDS + 16);
        tree.check();
    }

    #[test]
    fn hashes_that_are_no_chain_do_not_break_the_tree() {
        let t = Stamps::default();
        let index = PrefixIndex::new(1000);
        for hashes in [
            &[5, 5, 5][..],
            &[1, 5],
            &[5, 1, 5, 1],
            &[2, 3],
            &[3, 2],
            &[2, 5, 3],
        ] {
            index.insert(hashes, 0, t.next());
            index.insert(hashes, 1, t.next());
            index.lookup(hashes, t.next());
            check(&index);
        }
    }

    #[test]
    fn many_holders_spill_and_are_counted() {
        let t = Stamps::default();
        let index = PrefixIndex::new(100);
        for node in 0..10 {
            index.insert(&chain(&[1]), node, t.next());
        }
        assert_eq!(index.lookup(&chain(&[1]), t.next()).depth_by_slot.len(), 10);
        assert!(index.stats().bytes > 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, Vec<u32>),
        Lookup(Vec<u32>),
        Forget(u16),
        Budget(u16, Option<u32>),
    }

    /// Prompts over a 3-token alphabet, one token a block: they share and branch a lot.
    fn prompt() -> impl Strategy<Value = Vec<u32>> {
        prop::collection::vec(0u32..3, 1..14)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u16..4, prompt()).prop_map(|(s, p)| Op::Insert(s, p)),
            4 => prompt().prop_map(Op::Lookup),
            1 => (0u16..4).prop_map(Op::Forget),
            1 => (0u16..4, prop::option::of(4u32..40)).prop_map(|(s, b)| Op::Budget(s, b)),
        ]
    }

    /// Clock steps: none, under the touch resolution, or a second.
    fn step() -> impl Strategy<Value = u64> {
        prop_oneof![Just(0), Just(TOUCH_RESOLUTION_NS / 2), Just(1_000_000_000)]
    }

    proptest! {
        /// On random trees with evictions (a small capacity, node budgets, forgets), the
        /// run-wise lookup gives what a block-by-block walk of the same index gives, and
        /// every invariant holds after every operation.
        #[test]
        fn lookup_equals_the_linear_walk(
            capacity in 8usize..120,
            ops in prop::collection::vec((op(), step()), 1..80),
        ) {
            let index = PrefixIndex::new(capacity);
            let mut now = 0;
            for (op, step) in ops {
                now += step;
                match op {
                    Op::Insert(slot, p) => index.insert(&chain(&p), slot, now),
                    Op::Lookup(p) => {
                        let hashes = chain(&p);
                        let expected = linear_lookup(&index.tree.read().blocks_view(), &hashes);
                        let got = index.lookup(&hashes, now);
                        let max = expected.iter().map(|&(_, d)| d).max().unwrap_or(0);
                        prop_assert_eq!(sorted(got.depth_by_slot.to_vec()), expected);
                        prop_assert_eq!(got.max_depth, max);
                    }
                    Op::Forget(slot) => index.forget_node(slot),
                    Op::Budget(slot, budget) => index.set_node_budget(slot, budget),
                }
                let tree = index.tree.read();
                tree.check();
                prop_assert!(tree.blocks <= capacity);
                for (slot, budget) in tree.budget_by_node.iter().enumerate() {
                    if let Some(budget) = budget {
                        prop_assert!(tree.blocks_by_node[slot] as f64 <= *budget as f64 * NODE_SLACK);
                    }
                }
            }
        }

        /// Without eviction the index holds exactly what each node was credited with: a
        /// set of blocks per node, matched contiguously from the root (tests/model.py).
        #[test]
        fn without_eviction_it_matches_sets_of_blocks(
            ops in prop::collection::vec(op(), 1..80),
        ) {
            let index = PrefixIndex::new(1_000_000);
            let mut sets: Vec<std::collections::HashSet<u64>> = vec![Default::default(); 4];
            let t = Stamps::default();
            for op in ops {
                match op {
                    Op::Insert(slot, p) => {
                        let hashes = chain(&p);
                        index.insert(&hashes, slot, t.next());
                        sets[slot as usize].extend(hashes);
                    }
                    Op::Lookup(p) => {
                        let hashes = chain(&p);
                        let got = index.lookup(&hashes, t.next());
                        for (slot, set) in sets.iter().enumerate() {
                            let expected = hashes.iter().take_while(|h| set.contains(h)).count();
                            prop_assert_eq!(got.depth_of(slot as u16) as usize, expected);
                        }
                    }
                    Op::Forget(slot) => {
                        index.forget_node(slot);
                        sets[slot as usize].clear();
                    }
                    Op::Budget(..) => {}
                }
                check(&index);
            }
        }
    }
}
