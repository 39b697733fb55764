use super::*;
use crate::hashing::{chain_hash_tokens, HASH_SEED};

/// Records what the index would be told, and keeps the set of credited chains' blocks.
#[derive(Default)]
struct Recorder {
    credits: Vec<Vec<u64>>,
    releases: Vec<Vec<u64>>,
    forgets: usize,
}

impl CreditSink for Recorder {
    fn credit(&mut self, chain: &[u64]) {
        self.credits.push(chain.to_vec());
    }
    fn release(&mut self, chain: &[u64]) {
        self.releases.push(chain.to_vec());
    }
    fn forget(&mut self) {
        self.forgets += 1;
    }
}

fn tokens(n: u32, offset: u32) -> Vec<u32> {
    (offset..offset + n).collect()
}

fn event<'a>(
    hashes: &'a [u64],
    parent: Option<u64>,
    tokens: &'a [u32],
    size: usize,
) -> StoredBlocks<'a> {
    StoredBlocks {
        block_hashes: hashes,
        parent,
        token_ids: Some(tokens),
        block_size: size,
        seed: HASH_SEED,
    }
}

#[test]
fn a_store_credits_the_chain_the_router_would_hash() {
    let prompt = tokens(48, 0);
    let mut cache = NodeCache::default();
    let mut sink = Recorder::default();
    cache.store(0, &event(&[11, 12], None, &prompt[..32], 16), 16, &mut sink);
    cache.store(0, &event(&[13], Some(12), &prompt[32..], 16), 16, &mut sink);
    let expected = chain_hash_tokens(&prompt, 16, HASH_SEED);
    assert_eq!(sink.credits, vec![expected[..2].to_vec(), expected.clone()]);
    assert_eq!(cache.engine_blocks(), 3);
}

#[test]
fn engine_blocks_larger_or_smaller_than_index_blocks_map_to_the_same_chain() {
    let prompt = tokens(64, 100);
    let expected = chain_hash_tokens(&prompt, 16, HASH_SEED);
    let mut big = NodeCache::default();
    let mut sink = Recorder::default();
    big.store(0, &event(&[1, 2], None, &prompt, 32), 16, &mut sink);
    assert_eq!(sink.credits.last().unwrap(), &expected);

    let mut small = NodeCache::default();
    let mut sink = Recorder::default();
    let hashes: Vec<u64> = (1..=8).collect();
    small.store(
        0,
        &event(&hashes[..3], None, &prompt[..24], 8),
        16,
        &mut sink,
    );
    small.store(
        0,
        &event(&hashes[3..], Some(3), &prompt[24..], 8),
        16,
        &mut sink,
    );
    assert_eq!(sink.credits.last().unwrap(), &expected);
    // A removed block that completes no index block still takes the one it is part of.
    let mut sink = Recorder::default();
    small.remove(0, &[3], &mut sink);
    assert_eq!(sink.releases, vec![expected[..2].to_vec()]);
}

#[test]
fn a_removal_releases_from_that_block_and_drops_what_hung_below() {
    let prompt = tokens(48, 0);
    let expected = chain_hash_tokens(&prompt, 16, HASH_SEED);
    let mut cache = NodeCache::default();
    let mut sink = Recorder::default();
    cache.store(0, &event(&[1, 2, 3], None, &prompt, 16), 16, &mut sink);
    cache.remove(0, &[2], &mut sink);
    assert_eq!(sink.releases, vec![expected[..2].to_vec()]);
    assert_eq!(
        cache.engine_blocks(),
        1,
        "block 3 is unreachable and dropped"
    );
    // Its own removal later is a no-op; a store under it cannot be placed.
    let mut sink = Recorder::default();
    cache.remove(0, &[3], &mut sink);
    assert!(sink.releases.is_empty());
    let applied = cache.store(0, &event(&[4], Some(3), &prompt[..16], 16), 16, &mut sink);
    assert_eq!(applied.skipped_events, 1);
}

#[test]
fn a_tail_first_eviction_is_one_release_per_cut() {
    let prompt = tokens(16 * 50, 0);
    let hashes: Vec<u64> = (1..=50).collect();
    let mut cache = NodeCache::default();
    let mut sink = Recorder::default();
    cache.store(0, &event(&hashes, None, &prompt, 16), 16, &mut sink);
    cache.remove(0, &hashes[40..], &mut sink);
    let expected = chain_hash_tokens(&prompt, 16, HASH_SEED);
    assert_eq!(
        sink.releases,
        vec![expected[..41].to_vec()],
        "one cut, the shallowest"
    );
}

#[test]
fn a_block_held_by_another_rank_stays_credited() {
    let prompt = tokens(32, 0);
    let mut cache = NodeCache::default();
    let mut sink = Recorder::default();
    cache.store(0, &event(&[1, 2], None, &prompt, 16), 16, &mut sink);
    cache.store(1, &event(&[5], None, &prompt[..16], 16), 16, &mut sink);
    cache.remove(0, &[1], &mut sink);
    let expected = chain_hash_tokens(&prompt, 16, HASH_SEED);
    // Block 2 went with block 1 on rank 0; rank 1 still has the first index block.
    assert_eq!(sink.releases, vec![expected.clone()]);
    let mut sink = Recorder::default();
    cache.clear(Some(1), &mut sink);
    assert_eq!(sink.forgets, 1);
    assert!(
        sink.credits.is_empty(),
        "rank 0 holds nothing that completes a chain"
    );
}

#[test]
fn misaligned_or_short_token_lists_are_skipped() {
    let mut cache = NodeCache::default();
    let mut sink = Recorder::default();
    let t = tokens(24, 0);
    assert_eq!(
        cache
            .store(0, &event(&[1], None, &t, 24), 16, &mut sink)
            .skipped_events,
        1
    );
    assert_eq!(
        cache
            .store(0, &event(&[1, 2], None, &t[..16], 16), 16, &mut sink)
            .skipped_events,
        1
    );
    assert!(sink.credits.is_empty());
}

#[test]
fn hashes_without_tokens_are_the_index_chain() {
    let mut cache = NodeCache::default();
    let mut sink = Recorder::default();
    let plain = |hashes: &'static [u64], parent| StoredBlocks {
        block_hashes: hashes,
        parent,
        token_ids: None,
        block_size: 16,
        seed: HASH_SEED,
    };
    cache.store(0, &plain(&[7, 8], None), 16, &mut sink);
    cache.store(0, &plain(&[9], Some(8)), 16, &mut sink);
    assert_eq!(sink.credits.last().unwrap(), &vec![7, 8, 9]);
    cache.remove(0, &[9], &mut sink);
    assert_eq!(sink.releases, vec![vec![7, 8, 9]]);
}

#[test]
fn an_engine_block_entry_stays_small() {
    assert_eq!(size_of::<EngineBlock>(), 56);
}
