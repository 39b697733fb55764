"""vLLM's KV-cache event messages, as msgspec structs with vLLM's field names and tags.

vLLM (``vllm/distributed/kv_events.py``) publishes each batch as a ZMQ multipart
message ``(topic, sequence, payload)``: the sequence is 8 bytes big-endian, the payload a
msgpack ``KVEventBatch``. Events are tagged structs (``array_like``: ``[tag, field,
...]`` in declaration order); SGLang publishes the same layout. Newer vLLM versions
may encode events as maps (``{"type": tag, ...}``): the router's decoder
(``Router.apply_kv_event_batch``, in Rust) reads both; these structs are what the
simulated nodes and the tests publish.

The replay socket (a ZMQ ROUTER) answers ``[identity, b"", start_seq]`` with one
``[identity, b"", seq, payload]`` per buffered batch from ``start_seq`` on, then
``[identity, b"", END_SEQ, b""]``.
"""

from __future__ import annotations

import msgspec

BlockHash = int | bytes
"""vLLM's ``ExternalBlockHash``: bytes (sha256 hashes) or an int (with
``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES``, or SGLang)."""

END_SEQ = (-1).to_bytes(8, "big", signed=True)
"""The replay socket's end-of-replay marker."""


class KVCacheEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    """Base of the tagged events."""


class BlockStored(KVCacheEvent):
    block_hashes: list[BlockHash]
    parent_block_hash: BlockHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = "GPU"
    lora_name: str | None = None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[BlockHash]
    medium: str | None = "GPU"


class AllBlocksCleared(KVCacheEvent):
    pass


KvEvent = BlockStored | BlockRemoved | AllBlocksCleared


class KVEventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[KvEvent]
    data_parallel_rank: int | None = None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(KVEventBatch)


def encode_batch(batch: KVEventBatch) -> bytes:
    return _encoder.encode(batch)


def decode_batch(payload: bytes) -> KVEventBatch:
    """For tests and tools; the router decodes in Rust."""
    return _decoder.decode(payload)


def encode_seq(seq: int) -> bytes:
    return seq.to_bytes(8, "big", signed=True)


def decode_seq(frame: bytes) -> int:
    """A sequence frame; raises ValueError unless it is 8 bytes."""
    if len(frame) != 8:
        raise ValueError(f"a sequence frame is 8 bytes, not {len(frame)}")
    return int.from_bytes(frame, "big", signed=True)
