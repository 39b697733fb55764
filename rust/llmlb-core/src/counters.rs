//! Statistics counters sharded per thread, so routing threads do not fight over one
//! cache line for figures that are only read when someone asks for stats.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

const SHARDS: usize = 16;

fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// `N` named-by-position counters.
#[derive(Debug)]
pub struct ShardedCounters<const N: usize> {
    shards: Box<[CachePadded<[AtomicU64; N]>]>,
}

impl<const N: usize> Default for ShardedCounters<N> {
    fn default() -> Self {
        ShardedCounters {
            shards: (0..SHARDS)
                .map(|_| CachePadded::new(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }
}

impl<const N: usize> ShardedCounters<N> {
    pub fn add(&self, counter: usize, value: u64) {
        self.shards[shard()][counter].fetch_add(value, Ordering::Relaxed);
    }

    pub fn sum(&self, counter: usize) -> u64 {
        self.shards
            .iter()
            .map(|s| s[counter].load(Ordering::Relaxed))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_across_threads() {
        let counters = std::sync::Arc::new(ShardedCounters::<2>::default());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = counters.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(0, 1);
                        c.add(1, 2);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!((counters.sum(0), counters.sum(1)), (4000, 8000));
    }
}
