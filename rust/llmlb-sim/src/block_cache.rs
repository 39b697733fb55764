//! A vLLM-style KV-cache block table with prefix caching.
//!
//! Full blocks are keyed by a chain key (equal key = equal prefix) and shared between
//! requests by reference count. A block no request references stays cached and becomes
//! evictable, least recently freed first; a request's blocks are freed tail first, as
//! vLLM's free queue does, so a prompt's tail goes before its shared head.

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

#[derive(Debug, Clone)]
pub struct BlockCache {
    capacity: usize,
    refs: HashMap<u64, u32, Mix>,
    /// Unreferenced cached blocks, least recently freed first.
    evictable: LinkedHashSet<u64, Mix>,
    evicted: u64,
}

impl BlockCache {
    pub fn new(capacity: usize) -> Self {
        BlockCache {
            capacity,
            refs: HashMap::default(),
            evictable: LinkedHashSet::default(),
            evicted: 0,
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

    /// References `keys`, cached or new; the caller made room for the new ones.
    pub fn acquire(&mut self, keys: &[u64]) {
        for &key in keys {
            let count = self.refs.entry(key).or_insert(0);
            if *count == 0 {
                self.evictable.remove(&key);
            }
            *count += 1;
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
    pub fn insert_unreferenced(&mut self, keys: &[u64], mut free_blocks: i64) {
        for &key in keys {
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
            free_blocks -= 1;
        }
    }

    /// Evicts up to `blocks` least recently freed blocks; returns how many.
    pub fn evict(&mut self, blocks: usize) -> usize {
        let n = blocks.min(self.evictable.len());
        for _ in 0..n {
            let key = self.evictable.pop_front().expect("n <= len");
            self.refs.remove(&key);
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
        cache.acquire(&[1, 2, 3]);
        cache.acquire(&[1, 2, 4]);
        assert_eq!((cache.cached_blocks(), cache.referenced_blocks()), (4, 4));
        cache.release(&[1, 2, 3]).unwrap();
        assert_eq!(cache.referenced_blocks(), 3);
        assert_eq!(cache.evict(8), 1, "only block 3 is free");
        assert_eq!(cache.match_prefix(&[1, 2, 3], 3), 2);
    }

    #[test]
    fn freed_tail_first_so_the_shared_head_is_evicted_last() {
        let mut cache = BlockCache::new(8);
        cache.acquire(&[1, 2, 3]);
        cache.release(&[1, 2, 3]).unwrap();
        cache.evict(1);
        assert_eq!(cache.match_prefix(&[1, 2, 3], 3), 2);
        assert_eq!(cache.evicted(), 1);
    }

    #[test]
    fn unreferenced_inserts_evict_older_blocks_when_full() {
        let mut cache = BlockCache::new(2);
        cache.insert_unreferenced(&[1, 2], 2);
        cache.insert_unreferenced(&[1, 3], 0);
        // 1 became most recent, so 2 was evicted to make room for 3.
        assert_eq!(cache.match_prefix(&[1, 3], 2), 2);
        assert_eq!(cache.match_prefix(&[2], 1), 0);
    }

    #[test]
    fn releasing_an_unheld_block_fails_and_changes_nothing() {
        let mut cache = BlockCache::new(4);
        cache.acquire(&[1, 2]);
        assert_eq!(cache.release(&[9, 1, 2]), Err(9));
        assert_eq!(cache.release(&[1, 2, 2]), Err(2), "2 is held once");
        assert_eq!((cache.referenced_blocks(), cache.evict(4)), (2, 0));
        cache.release(&[1, 2]).unwrap();
        assert_eq!(cache.evict(4), 2);
    }
}
