"""Issue 11's rules through the Python API: saturation judged on this request (room for
its uncached part), a backlog released at the first token or the end, max_tokens in the
cost, prefixes scoped by model, capability-fair imbalance, prompts larger than any KV
cache refused."""

from __future__ import annotations

import pytest
from conftest import RouterFactory
from llmlb_fast import InvalidInputError, Node, Router, chain_seed, hash_token_blocks
from llmlb_fast._core import HASH_SEED

CAPACITY = 100_000


def nodes(*ids: str, peak_tflops: float = 989.0) -> list[Node]:
    return [Node(i, f"{i}:8000", kv_capacity_tokens=CAPACITY, peak_tflops=peak_tflops) for i in ids]


def finish(router: Router, request_id: str) -> None:
    router.first_token(request_id)
    assert router.complete(request_id) is not None


def test_a_holder_at_97_percent_with_room_for_the_rest_keeps_the_conversation(
    make_router: RouterFactory,
) -> None:
    router = make_router(nodes("a", "b"))
    history = list(range(8_000))
    first = router.route(token_ids=history)
    finish(router, first.request_id)
    other = "b" if first.node_id == "a" else "a"
    router.update_metrics(first.node_id, kv_cache_usage=0.97, num_requests_running=60.0)
    router.update_metrics(other, kv_cache_usage=0.5, num_requests_running=60.0)
    turn = router.route(token_ids=[*history, *range(50_000, 50_200)], expected_output_tokens=300)
    assert turn.node_id == first.node_id
    assert all(c.skipped is None for c in turn.candidates)


def test_a_prompt_that_does_not_fit_pays_the_wait_for_room(make_router: RouterFactory) -> None:
    router = make_router(nodes("a", "b"))
    router.update_metrics("a", kv_cache_usage=0.99)  # 1,000 tokens free
    router.update_metrics("b", kv_cache_usage=0.90)  # 10,000 tokens free
    decision = router.route(token_ids=list(range(4_000)), expected_output_tokens=100)
    assert decision.node_id == "b"


def test_max_tokens_sizes_the_room_a_request_needs(make_router: RouterFactory) -> None:
    router = make_router(nodes("a"))
    router.update_metrics("a", kv_cache_usage=0.95)  # 5,000 tokens free

    def score(max_tokens: int | None, start: int) -> float:
        decision = router.route(
            token_ids=list(range(start, start + 1_000)), expected_output_tokens=max_tokens
        )
        finish(router, decision.request_id)
        [candidate] = decision.candidates
        assert candidate.score is not None
        return candidate.score

    fits = score(2_000, 0)
    capped = score(10**6, 10_000)  # capped at max_output_tokens (4,096): does not fit
    default = score(None, 20_000)  # default_output_tokens (256): fits
    assert capped > fits
    assert default < capped


def test_first_token_and_completion_release_the_backlog(make_router: RouterFactory) -> None:
    router = make_router(nodes("a", "b"))
    huge = router.route(token_ids=list(range(90_000)))
    status = {s.id: s for s in router.nodes()}[huge.node_id]
    assert status.pending_prefill_tokens == 90_000
    assert status.backlog_tokens == 90_000
    assert router.first_token(huge.request_id)
    status = {s.id: s for s in router.nodes()}[huge.node_id]
    assert (status.pending_prefill_tokens, status.backlog_tokens) == (0, 0.0)
    assert not router.first_token("never-routed")
    # A huge prompt that fails before its first token frees its node just the same.
    failed = router.route(token_ids=list(range(200_000, 290_000)))
    router.complete(failed.request_id, "error")
    assert {s.id: s.backlog_tokens for s in router.nodes()}[failed.node_id] == 0.0


def test_an_idle_engine_report_clears_the_backlog(make_router: RouterFactory) -> None:
    router = make_router(nodes("a"))
    router.route(token_ids=list(range(20_000)))
    router.update_metrics("a", num_requests_running=0.0, num_requests_waiting=0.0)
    assert router.nodes()[0].backlog_tokens == 0.0


def test_a_prompt_longer_than_every_kv_cache_is_refused(make_router: RouterFactory) -> None:
    router = make_router([*nodes("a"), Node("b", "b:8000", kv_capacity_tokens=50_000)])
    with pytest.raises(InvalidInputError, match="longer than the KV cache of every node"):
        router.route(token_ids=list(range(CAPACITY + 16)))
    assert router.in_flight_total == 0
    # One node big enough: it takes the prompt; the small one is skipped for it.
    decision = router.route(token_ids=list(range(60_000)))
    assert decision.node_id == "a"
    assert {c.node_id: c.skipped for c in decision.candidates}["b"] == "prompt_exceeds_kv_capacity"


def test_prefixes_are_scoped_by_model_and_adapter(make_router: RouterFactory) -> None:
    router = make_router(nodes("a", "b"))
    prompt = list(range(4_000))
    finish(router, router.route(token_ids=prompt, model="llama").request_id)
    assert router.route(token_ids=prompt, model="llama").matched_blocks == 250
    assert router.route(token_ids=prompt, model="mistral").matched_blocks == 0
    assert router.route(token_ids=prompt, model="llama", adapter="sql").matched_blocks == 0
    assert router.route(token_ids=prompt).matched_blocks == 0


def test_clients_reproduce_the_model_scoped_chain(make_router: RouterFactory) -> None:
    router = make_router(nodes("a"))
    tokens = list(range(64))
    finish(router, router.route(token_ids=tokens, model="llama", adapter="sql").request_id)
    hashes = hash_token_blocks(tokens, model="llama", adapter="sql")
    assert router.route(block_hashes=hashes, prompt_tokens=64).matched_blocks == 4
    assert hash_token_blocks(tokens) == hash_token_blocks(tokens, parent=HASH_SEED)
    assert hash_token_blocks(tokens, model="llama")[:1] == hash_token_blocks(
        tokens[:16], parent=chain_seed("llama")
    )
    with pytest.raises(InvalidInputError, match="one or the other"):
        hash_token_blocks(tokens, model="llama", parent=1)


def test_prefix_aware_compares_load_per_capability(make_router: RouterFactory) -> None:
    """A small node holding the prefix falls back sooner than a big one would."""
    small, big = Node("small", "s:1", peak_tflops=312.0), Node("big", "b:1", peak_tflops=989.0)
    params = {"prefix_aware": {"balance_abs_threshold": 2.0, "balance_rel_threshold": 1.5}}
    router = make_router([small, big], policy="prefix_aware", policies=params)
    system = "You are a helpful assistant. " * 8
    first = router.route(system + "q0", exclude=["big"])
    assert first.node_id == "small"
    # 4 requests on the small node, 3 on the big one: raw loads are balanced, but per
    # unit of capability the small node (0.48 of the mean) carries 8.3 against 2.3.
    for i in range(3):
        router.route(system + f"q{i + 1}", exclude=["big"])
    for i in range(3):
        router.route(f"other {i}", exclude=["small"])
    decision = router.route(system + "next")
    assert (decision.node_id, decision.reason) == ("big", "fallback_imbalance")
