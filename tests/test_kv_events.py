"""The Python API for engine KV-cache events: single events, msgpack batches in vLLM's
and SGLang's encodings, and what they do to each node's prefix credit."""

from __future__ import annotations

import msgspec
import pytest
from llmlb_fast import InvalidInputError, Node, Router, RouterConfig, UnknownNodeError
from llmlb_fast.kv_events.wire import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEventBatch,
    encode_batch,
)

TOKENS = list(range(1000, 1064))  # four blocks of 16


def live_router(*node_ids: str, **config: float) -> Router:
    router = Router(
        RouterConfig(**config), [Node(n, f"{n}:8000") for n in node_ids], manual_clock=True
    )
    for node_id in node_ids:
        assert router.set_kv_events_state(node_id, "live") == "off"
    return router


def credit(router: Router, node_id: str, tokens: list[int] = TOKENS) -> tuple[int, int]:
    c = router.prefix_credit(token_ids=tokens)[node_id]
    return c.blocks, c.guessed_blocks


def test_stored_blocks_credit_the_chain_the_router_hashes_and_removal_cuts_it() -> None:
    router = live_router("a", "b")
    stored = router.kv_blocks_stored("a", [b"e0", b"e1"], None, TOKENS[:32])
    router.kv_blocks_stored("a", [b"e2", b"e3"], b"e1", TOKENS[32:])
    assert stored.stored_blocks == 2 and stored.skipped_events == 0
    assert credit(router, "a") == (4, 0)
    assert credit(router, "b") == (0, 0)
    assert router.nodes()[0].kv_engine_blocks == 4
    # The engine evicted its third block: the node keeps the two before it.
    assert router.kv_blocks_removed("a", [b"e2"]).removed_blocks == 1
    assert credit(router, "a") == (2, 0)
    router.kv_cache_cleared("a")
    assert credit(router, "a") == (0, 0)
    assert router.nodes()[0].kv_engine_blocks == 0


def test_int_hashes_engine_block_sizes_and_models_seed_the_chain() -> None:
    router = live_router("a")
    # One 32-token engine block is two index blocks; the model scopes the chain.
    router.kv_blocks_stored("a", [7, -8], None, TOKENS, block_size=32, model="m")
    assert credit(router, "a") == (0, 0)
    assert router.prefix_credit(token_ids=TOKENS, model="m")["a"].blocks == 4
    router.kv_blocks_removed("a", [-8])
    assert router.prefix_credit(token_ids=TOKENS, model="m")["a"].blocks == 2


def test_lower_tiers_are_credited_apart_with_their_weight() -> None:
    router = live_router("a", offloaded_prefix_weight=0.5)
    outcome = router.kv_blocks_stored("a", [1, 2, 3, 4], None, TOKENS, medium="CPU")
    assert (outcome.offloaded_blocks, outcome.stored_blocks) == (4, 0)
    assert credit(router, "a") == (0, 0)
    assert router.prefix_credit(token_ids=TOKENS)["a"].offloaded_blocks == 4
    assert router.route(token_ids=TOKENS).matched_blocks == 2  # four at half weight
    router.kv_blocks_removed("a", [3], medium="CPU")
    assert router.prefix_credit(token_ids=TOKENS)["a"].offloaded_blocks == 2
    router.kv_cache_cleared("a")
    assert router.prefix_credit(token_ids=TOKENS)["a"].offloaded_blocks == 0


def test_vllm_offloading_connector_batches_credit_the_gpu_chains_they_moved() -> None:
    """vLLM's OffloadingConnector: BlockStored(medium="CPU") of GPU block hashes, with
    no parent and no tokens (block_size 0 in newer versions)."""
    router = live_router("a")
    router.kv_blocks_stored("a", [b"g0", b"g1", b"g2", b"g3"], None, TOKENS)
    moved = ["BlockStored", [b"g0", b"g1", b"g2", b"g3"], None, [], 0, None, "CPU", None]
    evicted = ["BlockRemoved", [b"g0", b"g1", b"g2", b"g3"], "GPU"]
    payload = msgspec.msgpack.encode([1.0, [moved, evicted]])
    outcome = router.apply_kv_event_batch("a", payload)
    assert (outcome.offloaded_blocks, outcome.removed_blocks) == (4, 4)
    assert outcome.skipped_events == 0
    c = router.prefix_credit(token_ids=TOKENS)["a"]
    assert (c.blocks, c.offloaded_blocks) == (0, 4)


def test_a_store_under_an_unknown_parent_is_skipped() -> None:
    router = live_router("a")
    outcome = router.kv_blocks_stored("a", [2], 1, TOKENS[16:32])
    assert outcome.skipped_events == 1
    assert credit(router, "a") == (0, 0)


def test_data_parallel_ranks_hold_blocks_apart() -> None:
    router = live_router("a")
    router.kv_blocks_stored("a", [1, 2], None, TOKENS[:32], rank=0)
    router.kv_blocks_stored("a", [1, 2], None, TOKENS[:32], rank=1)
    router.kv_blocks_removed("a", [2], rank=0)
    assert credit(router, "a") == (2, 0)  # rank 1 still has both
    router.kv_cache_cleared("a", rank=1)
    assert credit(router, "a") == (1, 0)


def test_routed_prompts_are_guesses_that_expire_on_live_nodes_only() -> None:
    router = live_router("a", prefix_guess_ttl_s=2.0)
    router.upsert_node(Node("b", "b:8000"))  # no events
    for node_id, other in (("a", "b"), ("b", "a")):
        decision = router.route(token_ids=TOKENS, exclude=[other])
        assert decision.node_id == node_id
    assert credit(router, "a") == (0, 4)
    assert credit(router, "b") == (4, 0)
    router.set_time(4.1)  # two rotations of the guesses
    router.route(exclude=["b"])
    router.set_time(6.2)
    router.route(exclude=["b"])
    assert credit(router, "a") == (0, 0)
    assert credit(router, "b") == (4, 0)


def test_unconfirmed_turns_confirmed_credit_into_guesses() -> None:
    router = live_router("a")
    router.kv_blocks_stored("a", [1, 2], None, TOKENS[:32])
    assert router.set_kv_events_state("a", "unconfirmed") == "live"
    assert credit(router, "a") == (0, 2)
    assert router.nodes()[0].kv_events_state == "unconfirmed"


def test_vllm_array_batches_apply_in_order() -> None:
    router = live_router("a")
    batch = KVEventBatch(
        ts=12.5,
        events=[
            BlockStored([b"x0", b"x1", b"x2"], None, TOKENS[:48], 16, lora_id=None),
            BlockRemoved([b"x2"]),
            BlockStored([b"y"], b"x0", TOKENS[:16], 16, medium="CPU"),
        ],
        data_parallel_rank=0,
    )
    outcome = router.apply_kv_event_batch("a", encode_batch(batch))
    assert (outcome.stored_blocks, outcome.removed_blocks, outcome.offloaded_blocks) == (3, 1, 1)
    assert (outcome.ts, outcome.data_parallel_rank) == (12.5, 0)
    assert credit(router, "a") == (2, 0)
    assert router.prefix_credit(token_ids=TOKENS)["a"].offloaded_blocks == 1
    cleared = router.apply_kv_event_batch(
        "a", encode_batch(KVEventBatch(13.0, [AllBlocksCleared()]))
    )
    assert cleared.cleared == 1
    assert credit(router, "a") == (0, 0)


class _MapStored(msgspec.Struct, tag="BlockStored", omit_defaults=True):
    """Newer vLLM encodes events as maps with a "type" key."""

    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_name: str | None = None
    medium: str | None = None


class _MapFuture(msgspec.Struct, tag="BlockPinned"):
    block_hashes: list[int]


class _MapBatch(msgspec.Struct):
    ts: float
    events: list[_MapStored | _MapFuture]
    data_parallel_rank: int | None = None


def test_map_encoded_batches_lora_names_and_unknown_events() -> None:
    router = live_router("a")
    events: list[_MapStored | _MapFuture] = [
        _MapStored([5, 6], None, TOKENS[:32], 16, lora_name="ada"),
        _MapFuture([5]),
    ]
    payload = msgspec.msgpack.encode(_MapBatch(1.0, events, data_parallel_rank=1))
    outcome = router.apply_kv_event_batch("a", payload, model="m")
    assert (outcome.stored_blocks, outcome.unknown_events, outcome.data_parallel_rank) == (2, 1, 1)
    assert router.prefix_credit(token_ids=TOKENS, model="m", adapter="ada")["a"].blocks == 2
    assert router.prefix_credit(token_ids=TOKENS, model="m")["a"].blocks == 0


def test_sglang_array_batches_decode() -> None:
    """SGLang's publisher: array_like structs with int hashes (its field order)."""
    router = live_router("a")
    stored = ["BlockStored", [11, 12], None, TOKENS[:32], 16, None, "GPU"]
    payload = msgspec.msgpack.encode([3.0, [stored], None])
    assert router.apply_kv_event_batch("a", payload).stored_blocks == 2
    assert credit(router, "a") == (2, 0)


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",  # never used in msgpack
        msgspec.msgpack.encode({"events": []}),
        msgspec.msgpack.encode([1.0, [["BlockStored", "not-a-list", None, [], 16]]]),
        msgspec.msgpack.encode([1.0, [["BlockRemoved", [1]]], -1]),
        msgspec.msgpack.encode([1.0, []]) + b"\x00",
    ],
)
def test_malformed_batches_raise_and_change_nothing(payload: bytes) -> None:
    router = live_router("a")
    router.kv_blocks_stored("a", [1], None, TOKENS[:16])
    with pytest.raises(InvalidInputError):
        router.apply_kv_event_batch("a", payload)
    assert credit(router, "a") == (1, 0)


def test_bad_arguments_are_clear_errors() -> None:
    router = live_router("a")
    with pytest.raises(InvalidInputError, match="block_hashes\\[0\\]"):
        router.kv_blocks_stored("a", [1.5], None, TOKENS[:16])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="not one of"):
        router.set_kv_events_state("a", "on")
    with pytest.raises(UnknownNodeError):
        router.kv_blocks_removed("nope", [1])
    with pytest.raises(InvalidInputError, match="block_size"):
        router.kv_blocks_stored("a", [1], None, TOKENS[:16], block_size=0)
