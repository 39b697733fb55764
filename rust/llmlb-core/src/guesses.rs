//! Prefix credit for prompts just routed to a node whose engine publishes KV events.
//!
//! Such a node's entries in the main index are what its engine confirmed; a prompt routed
//! there is not cached until its prefill runs, yet the next request sharing it should
//! follow it. So the prompt is credited here, and here it expires: two generations of a
//! small index, the older dropped every `ttl` (a guess lives between one and two TTLs),
//! with no per-entry clock. Removals the engine reports are applied here too, so a guess
//! made before an eviction does not outlive it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::prefix_index::{PrefixIndex, PrefixMatch};

#[derive(Debug)]
pub struct GuessIndex {
    generations: [PrefixIndex; 2],
    current: AtomicUsize,
    next_rotation_ns: AtomicU64,
}

impl GuessIndex {
    pub fn new(capacity: usize) -> Self {
        GuessIndex {
            generations: [PrefixIndex::new(capacity), PrefixIndex::new(capacity)],
            current: AtomicUsize::new(0),
            next_rotation_ns: AtomicU64::new(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.generations.iter().all(PrefixIndex::is_empty)
    }

    /// Longest guessed prefix per node, over both generations.
    pub fn lookup(&self, hashes: &[u64], stamp: u64) -> PrefixMatch {
        let [a, b] = &self.generations;
        let mut found = a.lookup(hashes, stamp);
        found.merge_max(&b.lookup(hashes, stamp));
        found
    }

    pub fn insert(&self, hashes: &[u64], slot: u16, owner: u64, stamp: u64) {
        self.generations[self.current.load(Ordering::Acquire)]
            .insert_from(hashes, 0, slot, owner, stamp);
    }

    pub fn release_from(&self, hashes: &[u64], slot: u16) {
        self.generations.iter().for_each(|g| {
            g.release_from(hashes, slot);
        });
    }

    pub fn forget_node(&self, slot: u16) {
        self.generations.iter().for_each(|g| g.forget_node(slot));
    }

    pub fn bind_node(&self, slot: u16, owner: u64) {
        self.generations
            .iter()
            .for_each(|g| g.bind_node(slot, owner, None));
    }

    pub fn retire_node(&self, slot: u16) {
        self.generations.iter().for_each(|g| g.retire_node(slot));
    }

    /// Drops the older generation once a TTL has passed since the last rotation.
    pub fn maybe_rotate(&self, now: u64, ttl_ns: u64) {
        let due = self.next_rotation_ns.load(Ordering::Relaxed);
        if now < due {
            return;
        }
        let next = now.saturating_add(ttl_ns);
        if self
            .next_rotation_ns
            .compare_exchange(due, next, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return; // another thread rotates
        }
        let older = 1 - self.current.load(Ordering::Acquire);
        self.generations[older].clear_entries();
        self.current.store(older, Ordering::Release);
    }

    /// Bytes held by both generations.
    pub fn bytes(&self) -> usize {
        self.generations.iter().map(|g| g.stats().bytes).sum()
    }
}
