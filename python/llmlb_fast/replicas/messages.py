"""What router replicas tell each other: one msgpack-encoded :class:`Batch` per send.

A batch carries one replica's messages in the order they happened. Every message is an
array (``array_like``) tagged by a small integer, so a routing decision of a 2k-token
prompt (128 token blocks) costs about 1.2 KB, most of it the prompt's chain hashes,
which the receivers need to credit the node with the prefix (their prefix index is a
tree keyed by the whole chain, so the part the node already held cannot be left out).
"""

from __future__ import annotations

import msgspec


class Routed(msgspec.Struct, array_like=True, tag=0):
    """The replica routed ``request_id`` to ``node_id`` (``RouteDecision``'s figures).
    ``age_s``: how long before the batch was sent; ``prefill_tokens`` is 0 once the
    request had its first token (snapshots)."""

    request_id: str
    node_id: str
    block_hashes: list[int]
    text_blocks: bool
    prompt_tokens: int
    prefill_tokens: int
    # None when sent again (a snapshot): the engine-hit comparison counted it once.
    matched_tokens: int | None
    age_s: float = 0.0


class FirstToken(msgspec.Struct, array_like=True, tag=1):
    request_id: str


class Ended(msgspec.Struct, array_like=True, tag=2):
    request_id: str


class Snapshot(msgspec.Struct, array_like=True, tag=3):
    """Everything the replica has in flight: replaces what receivers counted for it."""

    in_flight: list[Routed]


class Hello(msgspec.Struct, array_like=True, tag=4):
    """The sender joined or reconnected (or lost some of ``target``'s batches): peers
    (only ``target`` when set) answer with a :class:`Snapshot`."""

    target: str = ""


class NodeUpserted(msgspec.Struct, array_like=True, tag=5):
    """A node registered through this replica (``Node``'s fields; the endpoint of its
    KV event stream, when it publishes one)."""

    node_id: str
    address: str
    peak_tflops: float
    gpu_memory_bytes: int | None
    max_concurrency: int | None
    prefill_tokens_per_s: float
    kv_capacity_tokens: int | None
    labels: dict[str, str]
    models: list[str]
    kv_events: dict[str, object] | None = None


class NodeRemoved(msgspec.Struct, array_like=True, tag=6):
    node_id: str


class BreakerChanged(msgspec.Struct, array_like=True, tag=7):
    node_id: str
    state: str
    reason: str


Message = (
    Routed | FirstToken | Ended | Snapshot | Hello | NodeUpserted | NodeRemoved | BreakerChanged
)


class Batch(msgspec.Struct, array_like=True):
    """``epoch`` changes when the replica restarts (its earlier requests are gone);
    ``seq`` counts its batches within an epoch, so a receiver sees a lost one."""

    replica: str
    epoch: str
    seq: int
    sent_at: float
    messages: list[Message]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Batch)


def encode(batch: Batch) -> bytes:
    return _encoder.encode(batch)


def decode(payload: bytes) -> Batch:
    """Raises msgspec.ValidationError / DecodeError on a malformed batch."""
    return _decoder.decode(payload)
