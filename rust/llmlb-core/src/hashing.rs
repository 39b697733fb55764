//! Prompt → chain of block hashes.
//!
//! A prompt is cut into fixed-size blocks (token ids, or UTF-8 bytes when only text is
//! given); a trailing partial block is not indexed, as in vLLM. Block `i` is hashed with
//! xxh3-64 seeded by the hash of block `i-1` (block 0 by [`HASH_SEED`]), so hash `i`
//! covers the whole prefix up to block `i`. Token ids are encoded as little-endian u32,
//! so Python can reproduce every hash with the `xxhash` package:
//! `xxh3_64_intdigest(struct.pack("<16I", *block), seed=prev)`.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of the first block: the ASCII bytes of "llmlb".
pub const HASH_SEED: u64 = 0x006c_6c6d_6c62;

pub fn chain_hash_bytes(data: &[u8], block_size: usize) -> Vec<u64> {
    let mut hashes = Vec::with_capacity(data.len() / block_size.max(1));
    let mut seed = HASH_SEED;
    for block in data.chunks_exact(block_size.max(1)) {
        seed = xxh3_64_with_seed(block, seed);
        hashes.push(seed);
    }
    hashes
}

pub fn chain_hash_tokens(tokens: &[u32], block_size: usize) -> Vec<u64> {
    let mut hashes = Vec::with_capacity(tokens.len() / block_size.max(1));
    extend_token_chain(&mut hashes, HASH_SEED, tokens, block_size);
    hashes
}

/// Appends to `hashes` the chain of the full blocks of `tokens`, continuing from the
/// hash `parent` of the block before them ([`HASH_SEED`] at the start of a prompt), so a
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
        assert_eq!(chain_hash_bytes(b"abcdefg", 4).len(), 1);
        assert_eq!(chain_hash_tokens(&[1, 2, 3], 2).len(), 1);
    }

    #[test]
    fn equal_prefixes_give_equal_chains_until_they_diverge() {
        let a = chain_hash_bytes(b"aaaabbbbcccc", 4);
        let b = chain_hash_bytes(b"aaaabbbbdddd", 4);
        assert_eq!(a[..2], b[..2]);
        assert_ne!(a[2], b[2]);
    }

    #[test]
    fn hash_covers_the_whole_prefix() {
        let a = chain_hash_bytes(b"xxxxbbbb", 4);
        let b = chain_hash_bytes(b"yyyybbbb", 4);
        assert_ne!(a[1], b[1], "same second block, different first block");
    }

    #[test]
    fn a_chain_continues_from_its_last_hash() {
        let tokens: Vec<u32> = (0..10).collect();
        let whole = chain_hash_tokens(&tokens, 2);
        let mut parts = chain_hash_tokens(&tokens[..4], 2);
        extend_token_chain(&mut parts, whole[1], &tokens[4..], 2);
        assert_eq!(parts, whole);
    }

    #[test]
    fn tokens_are_little_endian_u32() {
        let tokens = chain_hash_tokens(&[1, 258], 2);
        let bytes = chain_hash_bytes(&[1, 0, 0, 0, 2, 1, 0, 0], 8);
        assert_eq!(tokens, bytes);
    }
}
