//! Prompt → chain of block hashes.
//!
//! A prompt is cut into fixed-size blocks (token ids, or UTF-8 bytes when only text is
//! given); a trailing partial block is not indexed, as in vLLM. Block `i` is hashed with
//! xxh3-64 seeded by the hash of block `i-1`, so hash `i` covers the whole prefix up to
//! block `i`. Block 0 is seeded by the request's model scope ([`chain_seed`]): the same
//! tokens sent to two models (or two LoRA adapters of one model) are different cache
//! entries on the engine, so they must never share a chain. Token ids are encoded as
//! little-endian u32, so Python can reproduce every hash with the `xxhash` package:
//! `xxh3_64_intdigest(struct.pack("<16I", *block), seed=prev)`, starting from
//! `prev = chain_seed(model, adapter)`.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of the first block: the ASCII bytes of "llmlb".
pub const HASH_SEED: u64 = 0x006c_6c6d_6c62;

/// Seed of a chain's first block: [`HASH_SEED`] when no model is named; else
/// `xxh3_64(model, seed=HASH_SEED)`, then, when an adapter is named,
/// `xxh3_64(adapter, seed=that)` (a missing model hashes as the empty string).
pub fn chain_seed(model: Option<&str>, adapter: Option<&str>) -> u64 {
    match (model, adapter) {
        (None, None) => HASH_SEED,
        (model, adapter) => {
            let seed = xxh3_64_with_seed(model.unwrap_or("").as_bytes(), HASH_SEED);
            adapter.map_or(seed, |a| xxh3_64_with_seed(a.as_bytes(), seed))
        }
    }
}

/// Chain of the full `block_size`-byte blocks of `data`, from `seed` ([`chain_seed`]).
pub fn chain_hash_bytes(data: &[u8], block_size: usize, seed: u64) -> Vec<u64> {
    let mut hashes = Vec::with_capacity(data.len() / block_size.max(1));
    let mut seed = seed;
    for block in data.chunks_exact(block_size.max(1)) {
        seed = xxh3_64_with_seed(block, seed);
        hashes.push(seed);
    }
    hashes
}

/// Chain of the full `block_size`-token blocks of `tokens`, from `seed` ([`chain_seed`]).
pub fn chain_hash_tokens(tokens: &[u32], block_size: usize, seed: u64) -> Vec<u64> {
    let mut hashes = Vec::with_capacity(tokens.len() / block_size.max(1));
    extend_token_chain(&mut hashes, seed, tokens, block_size);
    hashes
}

/// Appends to `hashes` the chain of the full blocks of `tokens`, continuing from the
/// hash `parent` of the block before them ([`chain_seed`] at the start of a prompt), so a
/// growing conversation only hashes its new blocks.
pub fn extend_token_chain(hashes: &mut Vec<u64>, parent: u64, tokens: &[u32], block_size: usize) {
    let block_size = block_size.max(1);
    let mut buf = vec![0; block_size * 4];
    let mut seed = parent;
    for block in tokens.chunks_exact(block_size) {
        // Into a fixed-size buffer: growing a Vec token by token cost more than hashing.
        for (bytes, token) in buf.chunks_exact_mut(4).zip(block) {
            bytes.copy_from_slice(&token.to_le_bytes());
        }
        seed = xxh3_64_with_seed(&buf, seed);
        hashes.push(seed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_block_is_not_hashed() {
        assert_eq!(chain_hash_bytes(b"abcdefg", 4, HASH_SEED).len(), 1);
        assert_eq!(chain_hash_tokens(&[1, 2, 3], 2, HASH_SEED).len(), 1);
    }

    #[test]
    fn equal_prefixes_give_equal_chains_until_they_diverge() {
        let a = chain_hash_bytes(b"aaaabbbbcccc", 4, HASH_SEED);
        let b = chain_hash_bytes(b"aaaabbbbdddd", 4, HASH_SEED);
        assert_eq!(a[..2], b[..2]);
        assert_ne!(a[2], b[2]);
    }

    #[test]
    fn hash_covers_the_whole_prefix() {
        let a = chain_hash_bytes(b"xxxxbbbb", 4, HASH_SEED);
        let b = chain_hash_bytes(b"yyyybbbb", 4, HASH_SEED);
        assert_ne!(a[1], b[1], "same second block, different first block");
    }

    #[test]
    fn a_chain_continues_from_its_last_hash() {
        let tokens: Vec<u32> = (0..10).collect();
        let whole = chain_hash_tokens(&tokens, 2, HASH_SEED);
        let mut parts = chain_hash_tokens(&tokens[..4], 2, HASH_SEED);
        extend_token_chain(&mut parts, whole[1], &tokens[4..], 2);
        assert_eq!(parts, whole);
    }

    #[test]
    fn the_model_scope_seeds_the_chain() {
        let tokens: Vec<u32> = (0..8).collect();
        let plain = chain_hash_tokens(&tokens, 4, chain_seed(None, None));
        let a = chain_hash_tokens(&tokens, 4, chain_seed(Some("a"), None));
        let b = chain_hash_tokens(&tokens, 4, chain_seed(Some("b"), None));
        let a_lora = chain_hash_tokens(&tokens, 4, chain_seed(Some("a"), Some("x")));
        assert_eq!(plain, chain_hash_tokens(&tokens, 4, HASH_SEED));
        for (i, x) in [&plain, &a, &b, &a_lora].iter().enumerate() {
            for y in [&plain, &a, &b, &a_lora].iter().skip(i + 1) {
                assert!(x.iter().all(|h| !y.contains(h)), "chains share a block");
            }
        }
        assert_eq!(
            chain_seed(Some("a"), None),
            xxh3_64_with_seed(b"a", HASH_SEED)
        );
    }

    #[test]
    fn tokens_are_little_endian_u32() {
        let tokens = chain_hash_tokens(&[1, 258], 2, HASH_SEED);
        let bytes = chain_hash_bytes(&[1, 0, 0, 0, 2, 1, 0, 0], 8, HASH_SEED);
        assert_eq!(tokens, bytes);
    }
}
