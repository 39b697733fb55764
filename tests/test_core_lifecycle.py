"""Request lifecycle, outcome windows, metrics TTL, node membership and reconfiguration."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import RouterFactory
from llmlb_fast import ConfigError, Node, RouterConfig


def test_complete_releases_exactly_once(make_router: RouterFactory) -> None:
    router = make_router(["a"])
    router.set_time(2.0)
    decision = router.route("hi", request_id="r1")
    assert router.in_flight_total == 1
    router.set_time(3.5)
    completion = router.complete("r1", "ok", ttft_s=0.2, tokens_in=10, tokens_out=20)
    assert completion is not None
    assert (completion.request_id, completion.node_id) == ("r1", decision.node_id)
    assert (completion.outcome, completion.policy) == ("ok", "llmlb")
    assert completion.duration_s == pytest.approx(1.5)
    assert router.complete("r1") is None, "a second completion is a no-op"
    assert router.complete("never-routed") is None
    assert router.nodes()[0].in_flight == 0
    assert router.in_flight_total == 0


def test_generated_request_ids_are_unique(make_router: RouterFactory) -> None:
    router = make_router(["a", "b"])
    ids = {router.route(None).request_id for _ in range(100)}
    assert len(ids) == 100
    assert router.in_flight_total == 100


def test_never_completed_requests_expire(make_router: RouterFactory) -> None:
    router = make_router(["a"], request_ttl_s=10.0)
    router.route(None, request_id="old")
    router.set_time(5.0)
    router.route(None, request_id="young")
    router.set_time(9.5)
    assert router.expire_stale() == [], "not older than the ttl yet"
    router.set_time(12.0)
    expired = router.expire_stale()
    assert [(c.request_id, c.outcome) for c in expired] == [("old", "expired")]
    assert expired[0].duration_s == pytest.approx(12.0)
    assert router.in_flight_request_ids("a") == ["young"]
    assert router.complete("old") is None, "an expired request cannot be released twice"
    router.set_time(20.0)
    router.route(None, request_id="new")  # route sweeps for stale requests itself
    assert router.in_flight_request_ids("a") == ["new"]
    swept = router.expire_stale()
    assert [c.request_id for c in swept] == ["young"], "the sweep's expiries are reported once"
    assert router.expire_stale() == []
    stats = router.node_stats("a")
    assert (stats["expired"], stats["completed"]) == (2, 2)


def test_outcome_window_counts_and_mean_ttft(make_router: RouterFactory) -> None:
    router = make_router(["a"], load_balance_window_s=30.0)
    outcomes = [("ok", 0.1), ("ok", 0.3), ("error", None), ("timeout", None)]
    for i, (outcome, ttft) in enumerate(outcomes):
        router.route(None, request_id=f"r{i}")
        router.complete(f"r{i}", outcome, ttft_s=ttft, tokens_in=100, tokens_out=5)
    stats = router.node_stats("a")
    assert stats["window_s"] == 30.0
    assert (stats["completed"], stats["ok"], stats["errors"], stats["timeouts"]) == (4, 2, 1, 1)
    assert stats["error_rate"] == 0.5
    assert stats["mean_ttft_s"] == pytest.approx(0.2)
    assert (stats["tokens_in"], stats["tokens_out"]) == (400, 20)
    router.set_time(31.0)
    stats = router.node_stats("a")
    assert (stats["completed"], stats["mean_ttft_s"]) == (0, None)


def test_consecutive_failures_reset_on_success(make_router: RouterFactory) -> None:
    router = make_router(["a"])
    seen = []
    for i, outcome in enumerate(["error", "timeout", "error", "ok", "error"]):
        router.route(None, request_id=f"r{i}")
        completion = router.complete(f"r{i}", outcome)
        assert completion is not None
        seen.append(completion.consecutive_failures)
        if i == 2:
            assert router.nodes()[0].consecutive_failures == 3
    assert seen == [1, 2, 3, 0, 1], "each completion carries the count right after it"
    assert router.nodes()[0].consecutive_failures == 1
    assert router.stats()["nodes"]["a"]["consecutive_failures"] == 1  # type: ignore[index]


def test_stale_metrics_are_ignored(make_router: RouterFactory) -> None:
    router = make_router(["a", "b"], policy="gpu_aware", metrics_ttl_s=5.0)
    # Full and turning work away: its waiting queue grew since the report before.
    for waiting in (1.0, 2.0):
        router.update_metrics(
            "a", kv_cache_usage=0.99, num_requests_running=7.0, num_requests_waiting=waiting
        )
    decision = router.route(None)
    assert decision.node_id == "b"
    a = next(c for c in decision.candidates if c.node_id == "a")
    assert (a.skipped, a.load) == ("gpu_memory_saturated", 9.0)
    router.set_time(5.0)
    assert router.nodes()[0].metrics_fresh, "exactly the ttl old is still fresh"
    router.set_time(5.5)
    status = router.nodes()[0]
    assert not status.metrics_fresh
    assert status.metrics_age_s == pytest.approx(5.5)
    assert status.metrics == {
        "kv_cache_usage": 0.99,
        "num_requests_running": 7.0,
        "num_requests_waiting": 2.0,
    }
    decision = router.route(None)
    a = next(c for c in decision.candidates if c.node_id == "a")
    assert (a.skipped, a.load) == (None, 0.0)
    assert decision.node_id == "a", "b carries one request; unknown metrics are not held against a"


def test_remove_node_returns_in_flight_ids_and_drops_its_prefixes(
    make_router: RouterFactory,
) -> None:
    router = make_router(["a"], char_block_size=4)
    router.route("abcdefgh", request_id="r1")
    router.route("abcdefgh-more", request_id="r2")
    assert router.stats()["prefix_index"]["entries"] == 3  # type: ignore[index]
    assert sorted(router.remove_node("a")) == ["r1", "r2"]
    assert router.nodes() == []
    assert router.stats()["prefix_index"]["entries"] == 0  # type: ignore[index]
    assert router.in_flight_total == 2, "still counted until completed or expired"
    completion = router.complete("r1")
    assert completion is not None and completion.node_id == "a"
    router.upsert_node(Node("a"))
    decision = router.route("abcdefgh", request_id="r3")
    assert decision.matched_blocks == 0
    assert router.nodes()[0].in_flight == 1
    router.complete("r2")
    assert router.nodes()[0].in_flight == 1, "the old node's request is not the new one's"


def test_clear_node_cache_forgets_only_that_node(make_router: RouterFactory) -> None:
    router = make_router(["a", "b"], char_block_size=4, policy="round_robin")
    router.route("abcdefgh")
    assert [s.prefix_blocks for s in router.nodes()] == [2, 0]
    router.route("ijklmnop")
    assert [s.prefix_blocks for s in router.nodes()] == [2, 2]
    router.clear_node_cache("a")
    assert [s.prefix_blocks for s in router.nodes()] == [0, 2]
    decision = router.route("abcdefgh", policy="prefix_aware")
    assert decision.matched_blocks == 0


def test_upsert_keeps_live_state(make_router: RouterFactory) -> None:
    router = make_router(["a"])
    router.route(None)
    assert router.upsert_node(Node("a", "new:1", peak_tflops=10.0)) is False
    status = router.nodes()[0]
    assert (status.in_flight, status.node.address, status.node.peak_tflops) == (1, "new:1", 10.0)
    assert router.upsert_node(Node("b")) is True


def test_reconfigure_keeps_in_flight_counts(make_router: RouterFactory) -> None:
    router = make_router(["a", "b"], policy="round_robin")
    ids = [router.route(None).request_id for _ in range(4)]
    router.reconfigure(RouterConfig(policy="least_request", request_ttl_s=1.0))
    assert router.config.policy == "least_request"
    assert [s.in_flight for s in router.nodes()] == [2, 2]
    assert router.route(None).policy == "least_request"
    assert all(router.complete(i) is not None for i in ids)


def test_invalid_config_is_refused_and_the_old_one_stays(make_router: RouterFactory) -> None:
    router = make_router(["a"], policy="round_robin")
    before = router.config
    bad: list[tuple[dict[str, Any], str]] = [
        ({"metrics_ttl_s": float("nan")}, "metrics_ttl_s"),
        ({"request_ttl_s": -1.0}, "request_ttl_s"),
        ({"prefix_cache_size": 0}, "prefix_cache_size"),
        ({"char_block_size": 0}, "char_block_size"),
        ({"balance_rel_threshold": 0.5}, "prefix_aware.balance_rel_threshold"),
        ({"memory_saturation_threshold": 95.0}, "memory_saturation_threshold"),
        ({"weights": {"load": -1.0}}, "llmlb.load"),
        ({"weights": {"speed": 1.0}}, "speed"),
        ({"policies": {"prefix_aware": {"balance_abs_threshold": -1.0}}}, "balance_abs"),
        ({"policy": "fastest"}, "policy"),
    ]
    for fields, name in bad:
        with pytest.raises(ConfigError) as error:
            router.reconfigure(RouterConfig(**fields))
        assert name in str(error.value)
    with pytest.raises(TypeError):
        router.reconfigure({"policy": "llmlb"})  # type: ignore[arg-type]
    assert router.config == before
    assert router.route(None).policy == "round_robin"


def test_config_round_trips_through_a_dict() -> None:
    config = RouterConfig(
        policy="gpu_aware",
        weights={"gpu": 2.0},
        policies={"gpu_aware": {"pressure_scale": 1.0}},
        seed=3,
    )
    assert RouterConfig(**config.to_dict()) == config  # type: ignore[arg-type]
    assert config.weights == {"load": 0.25, "prefix": 1.0, "gpu": 2.0, "memory": 1.0}, (
        "unset weights keep defaults"
    )
    assert config.policies["llmlb"] == config.weights
    assert config.policies["gpu_aware"] == {"pressure_scale": 1.0}


def test_flat_keywords_are_aliases_of_policy_parameters() -> None:
    flat = RouterConfig(balance_abs_threshold=3.0, balance_rel_threshold=2.0, weights={"load": 1.0})
    nested = RouterConfig(
        policies={
            "prefix_aware": {"balance_abs_threshold": 3.0, "balance_rel_threshold": 2.0},
            "llmlb": {"load": 1.0},
        }
    )
    assert flat == nested
    assert (nested.balance_abs_threshold, nested.balance_rel_threshold) == (3.0, 2.0)
    assert nested.weights["load"] == 1.0
    agreeing = RouterConfig(balance_abs_threshold=3.0, policies=nested.policies)
    assert agreeing == nested, "both spellings may be given when they agree"
    conflict = r"weights\[\"load\"\]=2 conflicts with policies.llmlb.load=1"
    with pytest.raises(ConfigError, match=conflict):
        RouterConfig(weights={"load": 2.0}, policies={"llmlb": {"load": 1.0}})
    with pytest.raises(ConfigError, match="balance_abs_threshold=4 conflicts"):
        RouterConfig(balance_abs_threshold=4.0, policies=nested.policies)
