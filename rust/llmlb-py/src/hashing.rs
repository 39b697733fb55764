//! `hash_token_blocks`: the core's block-hash chain, for callers that hash prompts once
//! and route with `Router.route(block_hashes=...)`.

use llmlb_core::hashing::extend_token_chain;
use pyo3::prelude::*;
use pyo3::types::{PyRange, PyRangeMethods};

use crate::errors::invalid_input;
use crate::prompt_args::{self, token_ids_u32};

/// Chain hashes of the full `block_size`-token blocks of `token_ids`, continuing the
/// chain after `parent` (the hash of the block before them), or, at a prompt's start,
/// from the seed of `model` and `adapter` (as `Router.route` seeds them).
/// A `range` of token ids is read without building its integers, a buffer of integers
/// (`array.array('I')`, a numpy array) without building Python ints.
#[pyfunction]
#[pyo3(signature = (token_ids, *, block_size = 16, parent = None, model = None, adapter = None))]
pub fn hash_token_blocks(
    py: Python<'_>,
    token_ids: &Bound<'_, PyAny>,
    block_size: usize,
    parent: Option<u64>,
    model: Option<&str>,
    adapter: Option<&str>,
) -> PyResult<Vec<u64>> {
    if block_size == 0 {
        return Err(invalid_input("block_size must be >= 1"));
    }
    if parent.is_some() && (model.is_some() || adapter.is_some()) {
        return Err(invalid_input(
            "parent continues a chain that model and adapter already seeded; give one or the other",
        ));
    }
    let tokens = match token_ids.cast::<PyRange>() {
        Ok(range) => range_u32(range)?,
        Err(_) => prompt_args::token_ids(token_ids)?,
    };
    let mut hashes = Vec::with_capacity(tokens.len() / block_size);
    py.detach(|| {
        extend_token_chain(
            &mut hashes,
            parent.unwrap_or_else(|| llmlb_core::hashing::chain_seed(model, adapter)),
            &tokens,
            block_size,
        )
    });
    Ok(hashes)
}

/// Seed of a prompt's first block for `model` and `adapter` (`HASH_SEED` when neither
/// is named): `xxh3_64(model, seed=HASH_SEED)`, then `xxh3_64(adapter, seed=that)`.
#[pyfunction]
#[pyo3(signature = (model = None, adapter = None))]
pub fn chain_seed(model: Option<&str>, adapter: Option<&str>) -> u64 {
    llmlb_core::hashing::chain_seed(model, adapter)
}

fn range_u32(range: &Bound<'_, PyRange>) -> PyResult<Vec<u32>> {
    let (start, stop, step) = (range.start()?, range.stop()?, range.step()?);
    let ids: Vec<i64> = if step > 0 {
        (start..stop)
            .step_by(step as usize)
            .map(|i| i as i64)
            .collect()
    } else {
        (stop + 1..=start)
            .rev()
            .step_by(step.unsigned_abs())
            .map(|i| i as i64)
            .collect()
    };
    token_ids_u32(ids)
}
