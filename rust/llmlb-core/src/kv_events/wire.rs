//! Decoding of one `KVEventBatch` payload, as vLLM and SGLang publish it over ZMQ (the
//! third frame of `(topic, sequence, payload)`).
//!
//! Both are msgspec structs encoded as msgpack, in either of two layouts:
//! - `array_like` (SGLang, vLLM before the map form): the batch is `[ts, events,
//!   data_parallel_rank?]`, an event `[tag, field, ...]` in declaration order;
//! - maps (current vLLM events): an event is `{"type": tag, field: value, ...}`, and the
//!   batch may be `{"ts": ..., "events": [...], "data_parallel_rank": ...}`.
//!
//! Block hashes are ints (their low 64 bits) or bytes (folded with
//! [`super::engine_hash_of_bytes`]). Unknown event tags are skipped (a newer engine may
//! publish more kinds); anything else that does not fit is an error for the whole batch,
//! so a malformed payload changes nothing.

use rmpv::Value;

use super::{engine_hash_of_bytes, EngineHash};

#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub block_hashes: Vec<EngineHash>,
    pub parent_block_hash: Option<EngineHash>,
    pub token_ids: Vec<u32>,
    pub block_size: usize,
    pub lora_name: Option<String>,
    pub medium: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum KvEvent {
    Stored(StoredEvent),
    Removed {
        block_hashes: Vec<EngineHash>,
        medium: Option<String>,
    },
    Cleared,
    /// A tag this decoder does not know.
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct KvEventBatch {
    pub ts: f64,
    pub events: Vec<KvEvent>,
    pub data_parallel_rank: Option<i64>,
}

/// Positions of `BlockStored`'s fields in the array layout (after the tag), as vLLM and
/// SGLang declare them.
const STORED_FIELDS: [&str; 7] = [
    "block_hashes",
    "parent_block_hash",
    "token_ids",
    "block_size",
    "lora_id",
    "medium",
    "lora_name",
];
const REMOVED_FIELDS: [&str; 2] = ["block_hashes", "medium"];

type Fields<'a> = Vec<(&'a str, &'a Value)>;

pub fn decode_batch(payload: &[u8]) -> Result<KvEventBatch, String> {
    let mut reader = payload;
    let value = rmpv::decode::read_value(&mut reader).map_err(|e| format!("not msgpack: {e}"))?;
    if !reader.is_empty() {
        return Err(format!("{} bytes after the batch", reader.len()));
    }
    let (ts, events, rank) = match &value {
        Value::Array(items) => (items.first(), items.get(1), items.get(2)),
        Value::Map(entries) => (
            lookup(entries, "ts"),
            lookup(entries, "events"),
            lookup(entries, "data_parallel_rank"),
        ),
        other => return Err(format!("a batch is an array or a map, not {}", kind(other))),
    };
    let ts = ts
        .and_then(Value::as_f64)
        .ok_or("the batch has no numeric ts")?;
    let Some(Value::Array(events)) = events else {
        return Err("the batch has no events array".into());
    };
    let data_parallel_rank = match rank {
        None | Some(Value::Nil) => None,
        Some(v) => Some(v.as_i64().ok_or("data_parallel_rank is not an int")?),
    };
    let events = (events.iter().enumerate())
        .map(|(i, e)| decode_event(e).map_err(|why| format!("event {i}: {why}")))
        .collect::<Result<_, _>>()?;
    Ok(KvEventBatch {
        ts,
        events,
        data_parallel_rank,
    })
}

fn decode_event(value: &Value) -> Result<KvEvent, String> {
    let (tag, fields): (&str, Fields<'_>) = match value {
        Value::Array(items) => {
            let tag = items.first().and_then(Value::as_str).ok_or("no tag")?;
            let names: &[&str] = match tag {
                "BlockStored" => &STORED_FIELDS,
                "BlockRemoved" => &REMOVED_FIELDS,
                _ => &[],
            };
            (tag, names.iter().copied().zip(&items[1..]).collect())
        }
        Value::Map(entries) => {
            let tag = lookup(entries, "type")
                .and_then(Value::as_str)
                .ok_or("no type")?;
            let named = entries.iter().filter_map(|(k, v)| Some((k.as_str()?, v)));
            (tag, named.collect())
        }
        other => {
            return Err(format!(
                "an event is an array or a map, not {}",
                kind(other)
            ))
        }
    };
    let field = |name: &str| fields.iter().find(|(n, _)| *n == name).map(|&(_, v)| v);
    Ok(match tag {
        "BlockStored" => KvEvent::Stored(StoredEvent {
            block_hashes: hashes(field("block_hashes"))?,
            parent_block_hash: optional(field("parent_block_hash"), hash)?,
            token_ids: token_ids(field("token_ids"))?,
            // 0 with no tokens: vLLM's offloading connector (blocks moved to a lower tier).
            block_size: field("block_size")
                .and_then(Value::as_u64)
                .filter(|&n| n <= u32::MAX as u64)
                .ok_or("block_size is not a non-negative int")? as usize,
            lora_name: optional(field("lora_name"), text)?,
            medium: optional(field("medium"), text)?,
        }),
        "BlockRemoved" => KvEvent::Removed {
            block_hashes: hashes(field("block_hashes"))?,
            medium: optional(field("medium"), text)?,
        },
        "AllBlocksCleared" => KvEvent::Cleared,
        other => KvEvent::Unknown(other.to_owned()),
    })
}

fn lookup<'a>(entries: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    entries
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

fn optional<T>(
    value: Option<&Value>,
    read: impl Fn(&Value) -> Result<T, String>,
) -> Result<Option<T>, String> {
    match value {
        None | Some(Value::Nil) => Ok(None),
        Some(v) => read(v).map(Some),
    }
}

fn hash(value: &Value) -> Result<EngineHash, String> {
    match value {
        Value::Integer(n) => n
            .as_u64()
            .or_else(|| n.as_i64().map(|i| i as u64))
            .ok_or_else(|| "a block hash is out of range".into()),
        Value::Binary(bytes) => Ok(engine_hash_of_bytes(bytes)),
        other => Err(format!(
            "a block hash is an int or bytes, not {}",
            kind(other)
        )),
    }
}

fn hashes(value: Option<&Value>) -> Result<Vec<EngineHash>, String> {
    match value {
        Some(Value::Array(items)) => items.iter().map(hash).collect(),
        _ => Err("block_hashes is not an array".into()),
    }
}

fn token_ids(value: Option<&Value>) -> Result<Vec<u32>, String> {
    let Some(Value::Array(items)) = value else {
        return Err("token_ids is not an array".into());
    };
    let token = |v: &Value| {
        (v.as_u64())
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| "a token id is not a u32".to_owned())
    };
    items.iter().map(token).collect()
}

fn text(value: &Value) -> Result<String, String> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("expected a string, not {}", kind(value)))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Boolean(_) => "a bool",
        Value::Integer(_) => "an int",
        Value::F32(_) | Value::F64(_) => "a float",
        Value::String(_) => "a string",
        Value::Binary(_) => "bytes",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        Value::Ext(..) => "an extension",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::encode::write_value;

    fn encode(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        write_value(&mut out, value).unwrap();
        out
    }

    fn s(x: &str) -> Value {
        Value::from(x)
    }

    fn ints(xs: &[u64]) -> Value {
        Value::Array(xs.iter().map(|&x| Value::from(x)).collect())
    }

    fn stored(hashes: &[u64], parent: Option<u64>, tokens: &[u64]) -> StoredEvent {
        StoredEvent {
            block_hashes: hashes.to_vec(),
            parent_block_hash: parent,
            token_ids: tokens.iter().map(|&t| t as u32).collect(),
            block_size: 2,
            lora_name: None,
            medium: Some("GPU".into()),
        }
    }

    #[test]
    fn array_layout_as_sglang_and_older_vllm_publish() {
        let batch = Value::Array(vec![
            Value::from(1.5),
            Value::Array(vec![
                Value::Array(vec![
                    s("BlockStored"),
                    ints(&[7, 8]),
                    Value::Nil,
                    ints(&[1, 2, 3, 4]),
                    Value::from(2),
                    Value::Nil,
                    s("GPU"),
                ]),
                Value::Array(vec![s("BlockRemoved"), ints(&[7]), s("GPU")]),
                Value::Array(vec![s("AllBlocksCleared")]),
            ]),
        ]);
        let decoded = decode_batch(&encode(&batch)).unwrap();
        assert_eq!(decoded.ts, 1.5);
        assert_eq!(decoded.data_parallel_rank, None);
        assert_eq!(
            decoded.events,
            vec![
                KvEvent::Stored(stored(&[7, 8], None, &[1, 2, 3, 4])),
                KvEvent::Removed {
                    block_hashes: vec![7],
                    medium: Some("GPU".into())
                },
                KvEvent::Cleared,
            ]
        );
    }

    #[test]
    fn map_layout_as_current_vllm_publishes_with_bytes_hashes() {
        let event = Value::Map(vec![
            (s("type"), s("BlockStored")),
            (
                s("block_hashes"),
                Value::Array(vec![Value::from(&b"\x01\x02"[..])]),
            ),
            (s("parent_block_hash"), Value::from(9)),
            (s("token_ids"), ints(&[5, 6])),
            (s("block_size"), Value::from(2)),
            (s("lora_name"), s("adapter")),
            (s("medium"), s("GPU")),
            (s("group_idx"), Value::from(0)),
        ]);
        let batch = Value::Map(vec![
            (s("ts"), Value::from(2.0)),
            (s("events"), Value::Array(vec![event])),
            (s("data_parallel_rank"), Value::from(1)),
        ]);
        let decoded = decode_batch(&encode(&batch)).unwrap();
        assert_eq!(decoded.data_parallel_rank, Some(1));
        let KvEvent::Stored(e) = &decoded.events[0] else {
            panic!("a store")
        };
        assert_eq!(e.block_hashes, vec![engine_hash_of_bytes(b"\x01\x02")]);
        assert_eq!(e.parent_block_hash, Some(9));
        assert_eq!(e.lora_name.as_deref(), Some("adapter"));
    }

    #[test]
    fn malformed_batches_are_errors_and_unknown_tags_are_kept_as_unknown() {
        assert!(decode_batch(b"\xc1").is_err(), "reserved byte");
        assert!(decode_batch(&encode(&Value::from(3))).is_err());
        let bad_hash = Value::Array(vec![
            Value::from(0.0),
            Value::Array(vec![Value::Array(vec![
                s("BlockRemoved"),
                ints(&[1]),
                Value::Nil,
            ])]),
        ]);
        let mut bytes = encode(&bad_hash);
        bytes.push(0);
        assert!(decode_batch(&bytes).is_err(), "trailing bytes");
        let future = Value::Array(vec![
            Value::from(0.0),
            Value::Array(vec![Value::Array(vec![s("BlockMoved"), ints(&[1])])]),
        ]);
        assert_eq!(
            decode_batch(&encode(&future)).unwrap().events,
            vec![KvEvent::Unknown("BlockMoved".into())]
        );
        let token_too_big = Value::Array(vec![
            Value::from(0.0),
            Value::Array(vec![Value::Array(vec![
                s("BlockStored"),
                ints(&[1]),
                Value::Nil,
                ints(&[1 << 40, 2]),
                Value::from(2),
            ])]),
        ]);
        assert!(decode_batch(&encode(&token_too_big)).is_err());
    }
}
