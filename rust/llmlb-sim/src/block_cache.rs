//! A vLLM-style KV-cache block table with prefix caching.
//!
//! Full blocks are keyed by a chain key (equal key = equal prefix) and shared between
//! requests by reference count. A block no request references stays cached and becomes
//! evictable, least recently freed first; a request's blocks are freed tail first, as
//! vLLM's free queue does, so a prompt's tail goes before its shared head.
//!
//! With events recorded, the table reports what it caches and evicts the way vLLM's
//! KV-cache events do: a block is stored when its key first enters the cache (with the
//! key before it in its chain), removed when evicted.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use hashlink::LinkedHashSet;

/// Keys are hashes already; one multiply spreads any key (even a counter) over the
/// bits the tables use, far cheaper than the default SipHash.
#[derive(Default)]
struct MixHasher(u64);

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = (key ^ (key >> 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type Mix = BuildHasherDefault<MixHasher>;

/// A change of the cached set, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheEvent {
    /// `keys` entered the cache, a chain continuing `parent` (None: a prompt's start).
    Stored {
        keys: Vec<u64>,
        parent: Option<u64>,
    },
    Removed {
        keys: Vec<u64>,
    },
}

#[derive(Debug, Clone)]
pub struct BlockCache {
    capacity: usize,
    refs: HashMap<u64, u32, Mix>,
    /// Unreferenced cached blocks, least recently freed first.
    evictable: LinkedHashSet<u64, Mix>,
    evicted: u64,
    /// Recorded changes (None: not recorded).
    events: Option<Vec<CacheEvent>>,
}

impl BlockCache {
    pub fn new(capacity: usize) -> Self {
        BlockCache {
            capacity,
            refs: HashMap::default(),
            evictable: LinkedHashSet::default(),
            evicted: 0,
            events: None,
        }
    }

    /// Starts (or stops) recording [`CacheEvent`]s.
    pub fn record_events(&mut self, on: bool) {
        self.events = on.then(Vec::new);
    }

    /// The events recorded since the last call.
    pub fn take_events(&mut self) -> Vec<CacheEvent> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Records `key` stored after `parent`, extending the last event when it continues it.
    fn note_stored(&mut self, key: u64, parent: Option<u64>) {
        let Some(events) = &mut self.events else {
            return;
        };
        if let Some(CacheEvent::Stored { keys, .. }) = events.last_mut() {
            if parent.is_some() && keys.last() == parent.as_ref() {
                keys.push(key);
                return;
            }
        }
        events.push(CacheEvent::Stored {
            keys: vec![key],
            parent,
        });
    }

    fn note_removed(&mut self, key: u64) {
        let Some(events) = &mut self.events else {
            return;
        };
        match events.last_mut() {
            Some(CacheEvent::Removed { keys }) => keys.push(key),
            _ => events.push(CacheEvent::Removed { keys: vec![key] }),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Blocks held in the cache, referenced or not.
    pub fn cached_blocks(&self) -> usize {
        self.refs.len()
    }

    pub fn referenced_blocks(&self) -> usize {
        self.refs.len() - self.evictable.len()
    }

    /// Blocks evicted since the start.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Number of leading `keys` (at most `limit`) present in the cache.
    pub fn match_prefix(&self, keys: &[u64], limit: usize) -> usize {
        keys.iter()
            .take(limit)
            .take_while(|key| self.refs.contains_key(key))
            .count()
    }

    /// References `keys` (a chain continuing `parent`), cached or new; the caller made
    /// room for the new ones.
    pub fn acquire(&mut self, keys: &[u64], parent: Option<u64>) {
        let mut before = parent;
        for &key in keys {
            match self.refs.get_mut(&key) {
                Some(count) => {
                    if *count == 0 {
                        self.evictable.remove(&key);
                    }
                    *count += 1;
                }
                None => {
                    self.refs.insert(key, 1);
                    self.note_stored(key, before);
                }
            }
            before = Some(key);
        }
    }

    /// Drops one reference to each key; freed blocks become evictable, tail first.
    /// A key that is not referenced (a caller bug) is returned as the error, and the
    /// cache is left as it was.
    pub fn release(&mut self, keys: &[u64]) -> Result<(), u64> {
        for (done, &key) in keys.iter().rev().enumerate() {
            match self.refs.get_mut(&key) {
                Some(count) if *count > 0 => {
                    *count -= 1;
                    if *count == 0 {
                        self.evictable.insert(key);
                    }
                }
                _ => {
                    self.undo_release(&keys[keys.len() - done..]);
                    return Err(key);
                }
            }
        }
        Ok(())
    }

    fn undo_release(&mut self, keys: &[u64]) {
        for &key in keys {
            let count = self.refs.get_mut(&key).expect("released above");
            if *count == 0 {
                self.evictable.remove(&key);
            }
            *count += 1;
        }
    }

    /// Caches blocks no request references (generated text), as far as `free_blocks`
    /// and evictions allow; blocks already cached and unreferenced become most recent.
    pub fn insert_unreferenced(&mut self, keys: &[u64], mut free_blocks: i64, parent: Option<u64>) {
        let mut before = parent;
        for &key in keys {
            let parent = before.replace(key);
            if let Some(&count) = self.refs.get(&key) {
                if count == 0 {
                    self.evictable.to_back(&key);
                }
                continue;
            }
            if free_blocks <= 0 {
                if self.evictable.is_empty() {
                    return;
                }
                self.evict(1);
                free_blocks += 1;
            }
            self.refs.insert(key, 0);
            self.evictable.insert(key);
            self.note_stored(key, parent);
            free_blocks -= 1;
        }
    }

    /// Evicts up to `blocks` least recently freed blocks; returns how many.
    pub fn evict(&mut self, blocks: usize) -> usize {
        let n = blocks.min(self.evictable.len());
        for _ in 0..n {
            let key = self.evictable.pop_front().expect("n <= len");
            self.refs.remove(&key);
            self.note_removed(key);
        }
        self.evicted += n as u64;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_blocks_are_evictable_only_when_nobody_holds_them() {
        let mut cache = BlockCache::new(8);
        cache.acquire(&[1, 2, 3], None);
        cache.acquire(&[1, 2, 4], None);
        assert_eq!((cache.cached_blocks(), cache.referenced_blocks()), (4, 4));
        cache.release(&[1, 2, 3]).unwrap();
        assert_eq!(cache.referenced_blocks(), 3);
        assert_eq!(cache.evict(8), 1, "only block 3 is free");
        assert_eq!(cache.match_prefix(&[1, 2, 3], 3), 2);
    }

    #[test]
    fn freed_tail_first_so_the_shared_head_is_evicted_last() {
        let mut cache = BlockCache::new(8);
        cache.acquire(&[1, 2, 3], None);
        cache.release(&[1, 2, 3]).unwrap();
        cache.evict(1);
        assert_eq!(cache.match_prefix(&[1, 2, 3], 3), 2);
        assert_eq!(cache.evicted(), 1);
    }

    #[test]
    fn unreferenced_inserts_evict_older_blocks_when_full() {
        let mut cache = BlockCache::new(2);
        cache.insert_unreferenced(&[1, 2], 2, None);
        cache.insert_unreferenced(&[1, 3], 0, None);
        // 1 became most recent, so 2 was evicted to make room for 3.
        assert_eq!(cache.match_prefix(&[1, 3], 2), 2);
        assert_eq!(cache.match_prefix(&[2], 1), 0);
    }

    #[test]
    fn releasing_an_unheld_block_fails_and_changes_nothing() {
        let mut cache = BlockCache::new(4);
        cache.acquire(&[1, 2], None);
        assert_eq!(cache.release(&[9, 1, 2]), Err(9));
        assert_eq!(cache.release(&[1, 2, 2]), Err(2), "2 is held once");
        assert_eq!((cache.referenced_blocks(), cache.evict(4)), (2, 0));
        cache.release(&[1, 2]).unwrap();
        assert_eq!(cache.evict(4), 2);
    }

    #[test]
    fn events_report_first_stores_with_parents_and_evictions_in_order() {
        let mut cache = BlockCache::new(3);
        cache.record_events(true);
        cache.acquire(&[1, 2], None);
        cache.acquire(&[1, 2], None); // cached: nothing new
        cache.acquire(&[3], Some(2));
        cache.release(&[1, 2, 3]).unwrap();
        cache.release(&[1, 2]).unwrap();
        cache.insert_unreferenced(&[9], 0, Some(5)); // full: evicts 3 (freed first)
        assert_eq!(
            cache.take_events(),
            vec![
                CacheEvent::Stored {
                    keys: vec![1, 2, 3],
                    parent: None
                },
                CacheEvent::Removed { keys: vec![3] },
                CacheEvent::Stored {
                    keys: vec![9],
                    parent: Some(5)
                },
            ]
        );
        assert!(cache.take_events().is_empty());
    }

    #[test]
    fn events_are_not_recorded_unless_asked() {
        let mut cache = BlockCache::new(2);
        cache.acquire(&[1], None);
        assert!(cache.take_events().is_empty());
    }
}
