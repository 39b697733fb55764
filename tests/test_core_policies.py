"""Each policy on hand-built cases: prefix hits and fallbacks, GPU saturation, breakers."""

from __future__ import annotations

import model
import pytest
from conftest import RouterFactory
from llmlb_fast import (
    POLICIES,
    NoAvailableNodeError,
    Node,
    RouteDecision,
    RouterConfig,
    UnknownModelError,
)

SYSTEM = "You are a helpful assistant. " * 8  # 232 bytes: 3 blocks of 64


def candidate(decision: RouteDecision, node_id: str) -> tuple[float | None, int, str | None]:
    c = next(c for c in decision.candidates if c.node_id == node_id)
    return c.score, c.matched_blocks, c.skipped


def test_prefix_aware_sends_a_known_prefix_to_its_holder(make_router: RouterFactory) -> None:
    router = make_router(["a", "b", "c"], policy="prefix_aware")
    first = router.route(SYSTEM + "question one")
    assert first.reason == "fallback_least_request"
    assert first.matched_blocks == 0
    second = router.route(SYSTEM + "question two")
    assert second.reason == "prefix_hit"
    assert second.node_id == first.node_id, "the holder wins despite one more request"
    assert second.matched_blocks == 3
    assert second.matched_tokens == 3 * 64 // 4
    assert candidate(second, first.node_id)[1] == 3
    others = [c for c in second.candidates if c.node_id != first.node_id]
    assert all(c.matched_blocks == 0 for c in others)


def test_prefix_aware_falls_back_when_nothing_matches(make_router: RouterFactory) -> None:
    router = make_router(["a", "b"], policy="prefix_aware")
    router.route("x" * 200, request_id="busy")
    decision = router.route("completely different prompt " * 4)
    assert decision.reason == "fallback_least_request"
    on_chosen = router.in_flight_request_ids(decision.node_id)
    assert on_chosen == [decision.request_id], "the idle node, not the busy one"


def test_shared_system_prompt_does_not_pull_all_load_onto_one_node(
    make_router: RouterFactory,
) -> None:
    router = make_router(["a", "b", "c", "d"], policy="prefix_aware")
    decisions = [router.route(SYSTEM + f"user question number {i}") for i in range(400)]
    loads = [s.in_flight for s in router.nodes()]
    assert sum(loads) == 400
    # The holder may lead the idlest node by at most the configured imbalance.
    assert max(loads) - min(loads) <= 8 + 1
    reasons = {d.reason for d in decisions}
    assert {"prefix_hit", "fallback_imbalance"} <= reasons
    assert all(d.matched_blocks == 3 for d in decisions if d.reason == "prefix_hit")


def test_least_request_weighs_capability_and_free_memory(make_router: RouterFactory) -> None:
    router = make_router(
        [Node("small", peak_tflops=100.0), Node("big", peak_tflops=1000.0)],
        policy="least_request",
    )
    for _ in range(5):
        router.route(None)
    loads = {s.id: s.in_flight for s in router.nodes()}
    assert loads == {"small": 0, "big": 5}, "ten times the capability takes the first five"
    router.update_metrics("big", kv_cache_usage=0.9)
    router.update_metrics("small", kv_cache_usage=0.0)
    decision = router.route(None)
    assert decision.node_id == "small"
    big_score, _, _ = candidate(decision, "big")
    small_score, _, _ = candidate(decision, "small")
    assert big_score is not None and small_score is not None
    assert big_score > small_score


def test_least_request_ignores_memory_below_the_knee(make_router: RouterFactory) -> None:
    router = make_router(["a", "b"], policy="least_request")
    router.update_metrics("a", kv_cache_usage=0.2)
    router.update_metrics("b", kv_cache_usage=0.7)
    first = router.route(None)
    scores = {c.node_id: c.score for c in first.candidates}
    assert scores["a"] == scores["b"], "both below 80% use: memory does not tilt the choice"
    router.complete(first.request_id)
    router.update_metrics("b", kv_cache_usage=0.9)
    scores = {c.node_id: c.score for c in router.route(None).candidates}
    assert scores["b"] == pytest.approx(2 * scores["a"]), "90% use halves the capacity"


def test_engine_counts_move_forward_by_what_was_routed_since(make_router: RouterFactory) -> None:
    router = make_router(["a", "b"], policy="least_request")
    router.update_metrics("a", num_requests_running=10.0)  # other routers' requests on a
    for _ in range(3):
        router.route(None, exclude=["b"])
    loads = {c.node_id: c.load for c in router.route(None).candidates}
    assert loads == {"a": 13.0, "b": 0.0}, "the 10 reported plus the 3 routed after the report"


def test_gpu_aware_skips_a_node_that_cannot_admit(make_router: RouterFactory) -> None:
    router = make_router(["hot", "cool"], policy="gpu_aware", memory_saturation_threshold=0.95)
    router.update_metrics("hot", kv_cache_usage=0.97, num_requests_waiting=1.0)
    router.update_metrics("hot", kv_cache_usage=0.97, num_requests_waiting=2.0)
    router.route(None)  # "cool" now has one more request than "hot" reports
    router.route(None)
    decision = router.route(None)
    assert decision.node_id == "cool"
    assert decision.reason == "gpu_aware"
    assert candidate(decision, "hot") == (None, 0, "gpu_memory_saturated")


def test_a_full_kv_cache_that_still_admits_is_not_skipped(make_router: RouterFactory) -> None:
    router = make_router(["hot", "cool"], policy="gpu_aware", memory_saturation_threshold=0.95)
    router.update_metrics("hot", kv_cache_usage=0.97, num_requests_waiting=2.0)
    router.update_metrics("hot", kv_cache_usage=0.97, num_requests_waiting=1.0)
    assert candidate(router.route(None), "hot")[2] is None


def test_gpu_aware_penalises_bandwidth_for_decode_heavy_requests(
    make_router: RouterFactory,
) -> None:
    router = make_router(["bw", "sm"], policy="gpu_aware")
    router.update_metrics("bw", mem_bandwidth_utilization=0.9, sm_utilization=0.1)
    router.update_metrics("sm", mem_bandwidth_utilization=0.1, sm_utilization=0.9)
    prompt = "p" * 400  # 100 tokens
    decode_heavy = router.route(prompt, expected_output_tokens=2000, request_id="d")
    prefill_heavy = router.route(prompt, expected_output_tokens=1, request_id="p")
    assert decode_heavy.node_id == "sm"
    assert prefill_heavy.node_id == "bw"


def test_every_node_saturated_still_routes(make_router: RouterFactory) -> None:
    router = make_router(["a", "b"], policy="llmlb")
    router.update_metrics(
        "a", kv_cache_usage=0.99, num_preemptions_total=1.0, num_requests_waiting=1.0
    )
    router.update_metrics(
        "a", kv_cache_usage=0.99, num_preemptions_total=2.0, num_requests_waiting=1.0
    )
    router.update_metrics("b", gpu_memory_used_bytes=79.0, gpu_memory_total_bytes=80.0)
    decision = router.route("hello")
    assert decision.reason == "all_saturated"
    assert all(c.skipped is None for c in decision.candidates)


def test_round_robin_skips_an_open_breaker(make_router: RouterFactory) -> None:
    router = make_router(["a", "b", "c"], policy="round_robin")
    assert router.set_breaker_state("b", "open") == "closed"
    decisions = [router.route(None) for _ in range(3)]
    assert [d.node_id for d in decisions] == ["a", "c", "c"]
    assert [d.reason for d in decisions] == ["round_robin", "breaker_open_skipped", "round_robin"]
    assert candidate(decisions[1], "b")[2] == "breaker_open"


@pytest.mark.parametrize("policy", ["round_robin", "random", "least_request", "llmlb"])
def test_half_open_breaker_lets_exactly_one_probe_through(
    make_router: RouterFactory, policy: str
) -> None:
    router = make_router(["a", "b"], policy=policy)
    router.set_breaker_state("a", "half_open")
    router.set_breaker_state("b", "open")
    probe = router.route("probe")
    assert probe.node_id == "a"
    with pytest.raises(NoAvailableNodeError, match="half_open_probe_in_use"):
        router.route("second")
    completion = router.complete(probe.request_id)
    assert completion is not None and completion.was_probe
    with pytest.raises(NoAvailableNodeError, match="breaker_open"):
        router.route("still only one probe per half-open period")
    router.set_breaker_state("a", "half_open")
    assert router.route("next probe").node_id == "a"
    router.set_breaker_state("a", "closed")
    decision = router.route("closed again")
    assert decision.node_id == "a"
    assert router.complete(decision.request_id).was_probe is False  # type: ignore[union-attr]


def test_open_breakers_everywhere_is_a_clear_error(make_router: RouterFactory) -> None:
    router = make_router(["a", "b"])
    router.set_breaker_state("a", "open")
    router.set_breaker_state("b", "open")
    with pytest.raises(NoAvailableNodeError, match=r"a: breaker_open, b: breaker_open"):
        router.route("x")
    assert router.in_flight_total == 0


def test_max_concurrency_is_respected(make_router: RouterFactory) -> None:
    router = make_router([Node("a", max_concurrency=1), Node("b", max_concurrency=2)])
    nodes = sorted(router.route(None).node_id for _ in range(3))
    assert nodes == ["a", "b", "b"]
    with pytest.raises(NoAvailableNodeError, match="at_max_concurrency"):
        router.route(None)


def test_llmlb_prefers_the_cached_prefix_until_the_queue_costs_more(
    make_router: RouterFactory,
) -> None:
    long_prompt = "s" * 64 * 100  # 100 blocks, 1600 tokens
    router = make_router(["a", "b"], policy="llmlb")
    first = router.route(long_prompt + "1")
    router.set_time(1.0)  # its prefill is done: the queue is empty again
    hit = router.route(long_prompt + "2")
    assert (hit.node_id, hit.reason) == (first.node_id, "prefix_hit")
    router.route(long_prompt + "3")
    miss = router.route("short prompt, no prefix")
    assert miss.node_id != first.node_id
    assert miss.reason == "least_cost"


def test_policy_override_per_request(make_router: RouterFactory) -> None:
    router = make_router(["a", "b"], policy="llmlb")
    decision = router.route("x", policy="round_robin")
    assert (decision.policy, decision.reason) == ("round_robin", "round_robin")
    assert all(c.score is None for c in decision.candidates)


def test_random_policy_is_seeded(make_router: RouterFactory) -> None:
    def picks(seed: int) -> list[str]:
        router = make_router(["a", "b", "c", "d"], policy="random", seed=seed)
        return [router.route(None).node_id for _ in range(40)]

    assert picks(7) == picks(7)
    assert len(set(picks(7))) == 4
    assert picks(7) != picks(8)


def test_only_nodes_serving_the_model_are_candidates(make_router: RouterFactory) -> None:
    nodes = [Node("llama", models=["llama-70b"]), Node("any"), Node("qwen", models=["qwen"])]
    router = make_router(nodes, policy="least_request")
    decisions = [router.route(None, model="llama-70b") for _ in range(4)]
    assert sorted(d.node_id for d in decisions) == ["any", "any", "llama", "llama"]
    assert candidate(decisions[0], "qwen")[2] == "model_not_served"
    assert router.route(None, model="mistral").node_id == "any", "no models listed: serves any"
    router.remove_node("any")
    with pytest.raises(UnknownModelError, match='no node serves model "mistral"'):
        router.route(None, model="mistral")
    assert router.in_flight_total == 5


def test_saturation_fallback_never_revives_a_node_of_another_model(
    make_router: RouterFactory,
) -> None:
    router = make_router([Node("a", models=["m"]), Node("b", models=["other"])])
    router.update_metrics("a", kv_cache_usage=1.0, num_requests_waiting=1.0)
    router.update_metrics("a", kv_cache_usage=1.0, num_requests_waiting=3.0)
    decision = router.route("x", model="m")
    assert (decision.node_id, decision.reason) == ("a", "all_saturated")
    assert candidate(decision, "b")[2] == "model_not_served"


def test_a_node_reporting_absurd_load_never_wins(make_router: RouterFactory) -> None:
    """Regression: 0 (load weight) x inf (overflowed load) made a NaN score that won."""
    router = make_router(["a", "b"], weights={"load": 0.0})
    router.update_metrics("a", num_requests_running=1.7e308, num_requests_waiting=1.7e308)
    for policy in ["least_request", "prefix_aware", "gpu_aware", "llmlb"]:
        assert router.route("hello", policy=policy).node_id == "b", policy


def test_the_model_mirrors_the_registry() -> None:
    """tests/model.py lists the same policies, parameters and defaults as the core."""
    assert RouterConfig().policies == model.POLICY_DEFAULTS
    assert list(POLICIES) == list(model.POLICY_DEFAULTS)
    assert set(model.POLICIES) == set(POLICIES) - {"round_robin", "random"}


def test_policy_parameters_reach_their_policy(make_router: RouterFactory) -> None:
    def gpu_aware_scores(pressure_scale: float) -> dict[str, float | None]:
        router = make_router(
            ["a", "b"],
            policy="gpu_aware",
            policies={"gpu_aware": {"pressure_scale": pressure_scale}},
        )
        router.update_metrics("a", sm_utilization=1.0)
        return {c.node_id: c.score for c in router.route("x").candidates}

    # One unit of load over full capability: a's cost is (1 + scale * 0.5 * 1^2).
    assert gpu_aware_scores(0.0) == {"a": 1.0, "b": 1.0}
    assert gpu_aware_scores(2.0) == {"a": 2.0, "b": 1.0}
    assert gpu_aware_scores(4.0) == {"a": 3.0, "b": 1.0}


def test_prefix_aware_thresholds_come_from_its_parameters(make_router: RouterFactory) -> None:
    def reasons(balance_abs_threshold: float) -> set[str]:
        params = {"balance_abs_threshold": balance_abs_threshold, "balance_rel_threshold": 1.0}
        router = make_router(["a", "b"], policy="prefix_aware", policies={"prefix_aware": params})
        return {router.route(SYSTEM + f"question {i}").reason for i in range(6)}

    assert "fallback_imbalance" not in reasons(100.0)
    assert "fallback_imbalance" in reasons(1.0)
