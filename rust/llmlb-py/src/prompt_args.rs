//! Token ids from Python: a list or tuple of ints, or a buffer of integers
//! (`array.array('I')`, a numpy array, a memoryview). A list costs a Python int per id
//! (~10 ns: 1.3 ms for 128k ids, more than routing them); a buffer is copied once and
//! decoded here (~0.05 ms for 128k u32 ids). Anything else is read as a sequence of ints,
//! as before (so `bytes` are ids 0-255).

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyMemoryView, PyTuple};

use llmlb_core as core;

use crate::errors::invalid_input;

/// Token ids as u32, with a clear error for anything else.
pub(crate) fn token_ids_u32(ids: Vec<i64>) -> PyResult<Vec<u32>> {
    ids.into_iter()
        .enumerate()
        .map(|(i, id)| token_id(i, id as i128))
        .collect()
}

fn token_id(i: usize, id: i128) -> PyResult<u32> {
    u32::try_from(id).map_err(|_| {
        invalid_input(format!(
            "token_ids[{i}] = {id} is not a token id (expected 0 <= id < 2**32)"
        ))
    })
}

pub(crate) fn token_ids(ids: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    if ids.is_instance_of::<PyList>() || ids.is_instance_of::<PyTuple>() {
        return token_ids_u32(ids.extract()?);
    }
    let Ok(view) = PyMemoryView::from(ids) else {
        return token_ids_u32(ids.extract()?);
    };
    let Some(layout) = IntLayout::of(&view)? else {
        return token_ids_u32(ids.extract()?);
    };
    let bytes = view.call_method0("tobytes")?;
    layout.decode(bytes.cast::<PyBytes>()?.as_bytes())
}

/// How a one-dimensional buffer stores its integers (a struct-module format).
#[derive(Debug, Clone, Copy, PartialEq)]
struct IntLayout {
    size: usize,
    signed: bool,
    little_endian: bool,
}

impl IntLayout {
    /// None for buffers of anything but integers, or of more than one dimension.
    fn of(view: &Bound<'_, PyMemoryView>) -> PyResult<Option<IntLayout>> {
        let format: String = view.getattr("format")?.extract()?;
        let ndim: usize = view.getattr("ndim")?.extract()?;
        let size: usize = view.getattr("itemsize")?.extract()?;
        let (order, code) = match format.as_bytes() {
            [order @ (b'@' | b'=' | b'<' | b'>' | b'!'), code] => (*order, *code),
            [code] => (b'@', *code),
            _ => return Ok(None),
        };
        let signed = match code {
            b'b' | b'h' | b'i' | b'l' | b'q' | b'n' => true,
            b'B' | b'H' | b'I' | b'L' | b'Q' | b'N' => false,
            _ => return Ok(None),
        };
        if ndim != 1 || !matches!(size, 1 | 2 | 4 | 8) {
            return Ok(None);
        }
        let little_endian = match order {
            b'<' => true,
            b'>' | b'!' => false,
            _ => cfg!(target_endian = "little"),
        };
        Ok(Some(IntLayout {
            size,
            signed,
            little_endian,
        }))
    }

    fn decode(self, bytes: &[u8]) -> PyResult<Vec<u32>> {
        match (self.size, self.signed) {
            // Every u32 is a token id: nothing to check.
            (4, false) if self.little_endian => Ok(u32s(bytes, u32::from_le_bytes)),
            (4, false) => Ok(u32s(bytes, u32::from_be_bytes)),
            (1, false) => self.ints(bytes, u8::from_le_bytes, u8::from_be_bytes),
            (1, true) => self.ints(bytes, i8::from_le_bytes, i8::from_be_bytes),
            (2, false) => self.ints(bytes, u16::from_le_bytes, u16::from_be_bytes),
            (2, true) => self.ints(bytes, i16::from_le_bytes, i16::from_be_bytes),
            (4, true) => self.ints(bytes, i32::from_le_bytes, i32::from_be_bytes),
            (_, false) => self.ints(bytes, u64::from_le_bytes, u64::from_be_bytes),
            (_, true) => self.ints(bytes, i64::from_le_bytes, i64::from_be_bytes),
        }
    }

    fn ints<T: Into<i128>, const N: usize>(
        self,
        bytes: &[u8],
        little: impl Fn([u8; N]) -> T,
        big: impl Fn([u8; N]) -> T,
    ) -> PyResult<Vec<u32>> {
        if self.little_endian {
            checked(bytes, little)
        } else {
            checked(bytes, big)
        }
    }
}

fn items<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    (bytes.chunks_exact(N)).map(|item| item.try_into().expect("chunks of N bytes"))
}

fn u32s(bytes: &[u8], int: impl Fn([u8; 4]) -> u32) -> Vec<u32> {
    items(bytes).map(int).collect()
}

fn checked<T: Into<i128>, const N: usize>(
    bytes: &[u8],
    int: impl Fn([u8; N]) -> T,
) -> PyResult<Vec<u32>> {
    let mut ids = Vec::with_capacity(bytes.len() / N);
    for (i, item) in items(bytes).enumerate() {
        ids.push(token_id(i, int(item).into())?);
    }
    Ok(ids)
}

/// The prompt of a `route`-style call: one of text, token ids and block hashes (with
/// `prompt_tokens` only beside hashes; default a full block per hash), or none.
pub(crate) fn prompt<'a>(
    text: Option<&'a str>,
    tokens: &'a Option<Vec<u32>>,
    block_hashes: &'a Option<Vec<u64>>,
    prompt_tokens: Option<u32>,
    block_size: usize,
) -> PyResult<core::Prompt<'a>> {
    if prompt_tokens.is_some() && block_hashes.is_none() {
        return Err(invalid_input("prompt_tokens goes with block_hashes"));
    }
    Ok(match (text, tokens, block_hashes) {
        (Some(text), None, None) => core::Prompt::Text(text),
        (None, Some(tokens), None) => core::Prompt::Tokens(tokens),
        (None, None, Some(hashes)) => core::Prompt::Hashes {
            hashes,
            prompt_tokens: prompt_tokens
                .unwrap_or((hashes.len() * block_size).try_into().unwrap_or(u32::MAX)),
        },
        (None, None, None) => core::Prompt::Empty,
        _ => {
            return Err(invalid_input(
                "give one of prompt, token_ids and block_hashes",
            ))
        }
    })
}
