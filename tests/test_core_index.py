"""Prompt hashing and the prefix index: chain hashes, longest match, capacity bounds."""

from __future__ import annotations

import struct
from array import array

import llmlb_fast
import model
import pytest
from conftest import RouterFactory
from llmlb_fast import Node


def index_stats(router: llmlb_fast.Router) -> dict[str, float]:
    stats = router.stats()["prefix_index"]
    assert isinstance(stats, dict)
    return stats


def test_hash_seed_is_documented_value() -> None:
    assert llmlb_fast.HASH_SEED == model.HASH_SEED == int.from_bytes(b"llmlb", "big")


def test_model_hashes_chain_whole_prefixes() -> None:
    a = model.chain_hash_bytes(b"aaaabbbbcccc", 4)
    b = model.chain_hash_bytes(b"aaaabbbbdddd", 4)
    assert len(a) == 3 and a[:2] == b[:2] and a[2] != b[2]
    assert model.chain_hash_bytes(b"xxxxbbbb", 4)[1] != model.chain_hash_bytes(b"yyyybbbb", 4)[1]
    assert len(model.chain_hash_bytes(b"abcdefg", 4)) == 1, "a trailing partial block is not hashed"


def test_token_ids_hash_as_little_endian_u32(make_router: RouterFactory) -> None:
    """A token prompt and the text of its little-endian bytes share one chain of hashes."""
    router = make_router(["a", "b"], token_block_size=2, char_block_size=8, policy="prefix_aware")
    tokens = [1, 258, 3, 4]
    as_text = struct.pack("<4I", *tokens).decode("ascii")
    first = router.route(as_text)
    assert first.prompt_tokens == 4  # 16 bytes at 4 bytes per token
    second = router.route(token_ids=tokens)
    assert (second.node_id, second.matched_blocks, second.reason) == (
        first.node_id,
        2,
        "prefix_hit",
    )
    assert model.chain_hash_tokens(tokens, 2) == model.chain_hash_bytes(as_text.encode(), 8)


def test_hash_token_blocks_is_the_model_chain_and_continues_from_a_parent() -> None:
    tokens = list(range(100, 141))
    whole = llmlb_fast.hash_token_blocks(tokens, block_size=8)
    assert whole == model.chain_hash_tokens(tokens, 8) and len(whole) == 5
    head = llmlb_fast.hash_token_blocks(tokens[:16], block_size=8)
    assert head + llmlb_fast.hash_token_blocks(tokens[16:], block_size=8, parent=head[-1]) == whole
    assert llmlb_fast.hash_token_blocks(range(100, 141), block_size=8) == whole
    assert llmlb_fast.hash_token_blocks(range(140, 99, -1), block_size=8) == (
        llmlb_fast.hash_token_blocks(tokens[::-1], block_size=8)
    )
    with pytest.raises(llmlb_fast.InvalidInputError, match="token id"):
        llmlb_fast.hash_token_blocks(range(2**32 - 2, 2**32 + 20))


def test_routing_by_block_hashes_matches_routing_by_token_ids(make_router: RouterFactory) -> None:
    router = make_router(["a", "b", "c"], token_block_size=4, policy="prefix_aware")
    tokens = list(range(1, 31))
    by_tokens = router.route(token_ids=tokens)
    hashes = llmlb_fast.hash_token_blocks(tokens[:20], block_size=4)
    by_hashes = router.route(block_hashes=hashes, prompt_tokens=22)
    assert (by_hashes.node_id, by_hashes.matched_blocks, by_hashes.prompt_tokens) == (
        by_tokens.node_id,
        5,
        22,
    )
    assert router.route(block_hashes=hashes).prompt_tokens == 20, "defaults to whole blocks"


def test_text_blocks_are_utf8_bytes(make_router: RouterFactory) -> None:
    router = make_router(["a"], char_block_size=4)
    decision = router.route("ééé")  # 6 bytes: one full block
    router.route("éé!!")  # the same first 4 bytes
    assert decision.prompt_tokens == 1
    assert router.route("éé").matched_blocks == 1


def test_longest_prefix_per_node(make_router: RouterFactory) -> None:
    router = make_router(["a", "b", "c"], char_block_size=4, policy="round_robin")
    router.route("1111222233")  # a holds 2 blocks
    router.route("1111")  # b holds 1
    router.route("11112222333344")  # c holds 3
    decision = router.route("111122223333xxxx", policy="least_request")
    matched = {c.node_id: c.matched_blocks for c in decision.candidates}
    assert matched == {"a": 2, "b": 1, "c": 3}
    assert router.route("2222").matched_blocks == 0, "matches start at the first block"


def test_prefix_cache_size_evicts_least_recently_used(make_router: RouterFactory) -> None:
    router = make_router(["a"], char_block_size=4, prefix_cache_size=10)
    prompts = [f"{i}{i}{i}{i}{i}{i}{i}{i}" for i in range(1, 6)]  # two blocks each
    for second, prompt in enumerate(prompts):
        router.set_time(second)
        router.route(prompt)
    assert index_stats(router)["entries"] == 10
    router.set_time(10)
    assert router.route(prompts[0]).matched_blocks == 2  # touches the first prompt
    router.route("zzzz")  # one entry too many: evicts down to 95% of capacity
    stats = index_stats(router)
    assert (stats["entries"], stats["evicted"]) == (9, 2)
    assert router.route(prompts[0]).matched_blocks == 2, "recently used survives"
    assert router.route(prompts[2]).matched_blocks == 2
    assert router.route(prompts[1]).matched_blocks == 0, "the oldest prompt went, whole"
    for i in range(200):
        router.route(f"{i:08d}")
    assert index_stats(router)["entries"] <= 10


def test_a_long_prompt_is_evicted_tail_first(make_router: RouterFactory) -> None:
    router = make_router(["a"], char_block_size=4, prefix_cache_size=10)
    long = "".join(f"{i:04d}" for i in range(8))  # eight blocks
    router.route(long)
    router.set_time(1)
    router.route("xxxxyyyy")
    router.set_time(2)
    router.route("zzzz")  # 11 entries: the two oldest blocks go, from the long prompt's tail
    assert router.route(long, policy="least_request").matched_blocks == 6


def test_a_long_prompt_matches_where_it_branches(make_router: RouterFactory) -> None:
    """One run per new prompt, split where a later prompt leaves it: the matched depth is
    found by binary search inside runs, and must be exact at every branch point."""
    router = make_router(["a", "b"], policy="prefix_aware")
    tokens = list(range(32_768))  # 2048 blocks
    first = router.route(token_ids=tokens)
    for depth in (2047, 1024, 1, 1500, 1023):
        branch = tokens[: depth * 16] + [99_999] * 16
        decision = router.route(token_ids=branch)
        assert (decision.node_id, decision.matched_blocks) == (first.node_id, depth)
    assert router.route(token_ids=tokens).matched_blocks == 2048
    assert index_stats(router)["entries"] == 2048 + 5


def test_token_ids_may_be_buffers(make_router: RouterFactory) -> None:
    """array('I'), numpy arrays and memoryviews are read without building Python ints,
    and route exactly as the list of the same ids."""
    np = pytest.importorskip("numpy")
    tokens = list(range(7, 7 + 100))
    expected = llmlb_fast.hash_token_blocks(tokens, block_size=4)
    buffers = [
        array("I", tokens),
        array("q", tokens),
        array("H", tokens),
        np.array(tokens, dtype=np.uint32),
        np.array(tokens),  # int64
        np.array(tokens, dtype=">u4"),
        np.repeat(np.array(tokens, dtype=np.uint32), 2)[::2],  # not contiguous
        memoryview(array("I", tokens)),
        tuple(tokens),
    ]
    for ids in buffers:
        assert llmlb_fast.hash_token_blocks(ids, block_size=4) == expected, ids
    router = make_router(["a", "b"], token_block_size=4, policy="prefix_aware")
    first = router.route(token_ids=tokens)
    for ids in buffers:
        decision = router.route(token_ids=ids)
        router.complete(decision.request_id)
        assert (decision.node_id, decision.matched_blocks, decision.prompt_tokens) == (
            first.node_id,
            25,
            100,
        ), ids
    with pytest.raises(llmlb_fast.InvalidInputError, match=r"token_ids\[1\] = -5"):
        router.route(token_ids=np.array([1, -5]))
    with pytest.raises(llmlb_fast.InvalidInputError, match=r"token_ids\[0\] = 4294967296"):
        router.route(token_ids=array("Q", [2**32]))
    with pytest.raises(TypeError):
        router.route(token_ids=np.array([1.5, 2.0]))
    with pytest.raises(TypeError):
        router.route(token_ids=np.zeros((2, 2), dtype=np.uint32))


def test_node_kv_capacity_bounds_its_credited_blocks(make_router: RouterFactory) -> None:
    node = Node("a", kv_capacity_tokens=10 * 16)  # 10 blocks of 16 tokens
    router = make_router([node], token_block_size=16)
    for i in range(50):
        router.route(token_ids=[i] * 16)
    assert router.nodes()[0].prefix_blocks <= 10
    assert router.route(token_ids=[49] * 16).matched_blocks == 1, "newest kept"
    assert router.route(token_ids=[0] * 16).matched_blocks == 0, "oldest dropped"
    router.update_metrics("a", kv_capacity_tokens=2 * 16)  # the engine reports less
    assert router.nodes()[0].prefix_blocks <= 2


def test_index_reports_memory_and_hit_rate(make_router: RouterFactory) -> None:
    router = make_router(["a"], char_block_size=4)
    router.route("aaaabbbb")
    router.route("aaaacccc")
    stats = index_stats(router)
    assert stats["entries"] == 3
    assert stats["bytes"] > 0 and stats["bytes_per_entry"] == stats["bytes"] / 3
    assert (stats["lookups"], stats["blocks_looked_up"], stats["blocks_matched"]) == (2, 4, 1)
    assert stats["block_hit_rate"] == 0.25
