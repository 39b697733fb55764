"""Bad input raises the right ``llmlb_fast`` exception with a clear message and loses nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from conftest import RouterFactory
from llmlb_fast import (
    ConfigError,
    DuplicateRequestError,
    InvalidInputError,
    LlmlbError,
    NoAvailableNodeError,
    Node,
    Router,
    RouterConfig,
    TableFullError,
    UnknownNodeError,
)

NAN = float("nan")


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.update_metrics("ghost", sm_utilization=0.5),
        lambda r: r.remove_node("ghost"),
        lambda r: r.clear_node_cache("ghost"),
        lambda r: r.set_breaker_state("ghost", "open"),
        lambda r: r.in_flight_request_ids("ghost"),
        lambda r: r.node_stats("ghost"),
    ],
)
def test_unknown_node(make_router: RouterFactory, call: Callable[[Router], Any]) -> None:
    router = make_router(["a"])
    with pytest.raises(UnknownNodeError, match='unknown node "ghost"') as error:
        call(router)
    assert isinstance(error.value, KeyError) and isinstance(error.value, LlmlbError)


@pytest.mark.parametrize(
    ("metrics", "field"),
    [
        ({"sm_utilization": NAN}, "sm_utilization"),
        ({"kv_cache_usage": -0.1}, "kv_cache_usage"),
        ({"sm_utilization": 85.0}, "sm_utilization"),  # a percentage, not a fraction
        ({"mem_bandwidth_utilization": 1.5}, "mem_bandwidth_utilization"),
        ({"gpu_memory_used_bytes": -1.0}, "gpu_memory_used_bytes"),
        ({"pcie_tx_bytes_per_s": float("inf")}, "pcie_tx_bytes_per_s"),
        ({"num_requests_waiting": NAN}, "num_requests_waiting"),
        ({"kv_capacity_tokens": -16.0}, "kv_capacity_tokens"),
        ({"gpu_memory_used_bytes": 9.0, "gpu_memory_total_bytes": 8.0}, "gpu_memory_used_bytes"),
    ],
)
def test_bad_metrics_are_refused_and_the_last_report_kept(
    make_router: RouterFactory, metrics: dict[str, float], field: str
) -> None:
    router = make_router(["a"])
    router.update_metrics("a", sm_utilization=0.25)
    with pytest.raises(InvalidInputError, match=field):
        router.update_metrics("a", **metrics)
    assert router.nodes()[0].metrics == {"sm_utilization": 0.25}


def test_routing_with_no_nodes(make_router: RouterFactory) -> None:
    router = make_router([])
    with pytest.raises(NoAvailableNodeError, match="no nodes are registered"):
        router.route("hello")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"prompt": "x", "token_ids": [1]}, InvalidInputError, "one of prompt, token_ids"),
        ({"token_ids": [1], "block_hashes": [1]}, InvalidInputError, "one of prompt"),
        ({"token_ids": [1], "prompt_tokens": 1}, InvalidInputError, "goes with block_hashes"),
        ({"block_hashes": [1, 2], "prompt_tokens": 31}, InvalidInputError, "cover 32 tokens"),
        ({"token_ids": [1, -1]}, InvalidInputError, r"token_ids\[1\] = -1"),
        ({"token_ids": [2**32]}, InvalidInputError, "token_ids"),
        ({"request_id": ""}, InvalidInputError, "request_id"),
        ({"request_id": "x" * 257}, InvalidInputError, "request_id"),
        ({"policy": "fastest"}, InvalidInputError, "unknown policy"),
    ],
)
def test_bad_route_arguments(
    make_router: RouterFactory, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    router = make_router(["a"])
    with pytest.raises(error, match=message):
        router.route(**kwargs)
    assert router.in_flight_total == 0
    assert router.nodes()[0].routed_total == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prompt": 123},
        {"prompt": b"bytes"},
        {"token_ids": "abc"},
        {"token_ids": [1.5]},
        {"block_hashes": [-1]},
        {"block_hashes": [2**64]},
        {"expected_output_tokens": -1},
        {"request_id": 7},
    ],
)
def test_wrong_types_raise_type_errors(make_router: RouterFactory, kwargs: dict[str, Any]) -> None:
    router = make_router(["a"])
    with pytest.raises((TypeError, OverflowError)):
        router.route(**kwargs)
    assert router.in_flight_total == 0


def test_duplicate_request_id_is_refused(make_router: RouterFactory) -> None:
    router = make_router(["a", "b"])
    router.route("x", request_id="r1")
    with pytest.raises(DuplicateRequestError, match='"r1" is already in flight'):
        router.route("y", request_id="r1")
    assert router.in_flight_total == 1
    router.complete("r1")
    router.route("y", request_id="r1")  # free again once completed


def test_bad_completion_keeps_the_request_in_flight(make_router: RouterFactory) -> None:
    router = make_router(["a"])
    router.route(None, request_id="r1")
    with pytest.raises(InvalidInputError, match="unknown outcome"):
        router.complete("r1", "success")
    with pytest.raises(InvalidInputError, match="ttft_s"):
        router.complete("r1", ttft_s=NAN)
    with pytest.raises(InvalidInputError, match="ttft_s"):
        router.complete("r1", ttft_s=-0.5)
    with pytest.raises(OverflowError):
        router.complete("r1", tokens_out=-1)
    assert router.in_flight_request_ids("a") == ["r1"]
    assert router.complete("r1") is not None


def test_bad_breaker_state(make_router: RouterFactory) -> None:
    router = make_router(["a"])
    with pytest.raises(InvalidInputError, match="expected closed, open or half_open"):
        router.set_breaker_state("a", "ajar")
    assert router.nodes()[0].breaker_state == "closed"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"id": ""}, "node id must not be empty"),
        ({"id": "a", "peak_tflops": 0.0}, "peak_tflops"),
        ({"id": "a", "peak_tflops": NAN}, "peak_tflops"),
        ({"id": "a", "prefill_tokens_per_s": -5.0}, "prefill_tokens_per_s"),
        ({"id": "a", "max_concurrency": 0}, "max_concurrency"),
    ],
)
def test_bad_node_specs(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        Node(**kwargs)


def test_wrong_node_types() -> None:
    with pytest.raises(TypeError):
        Node(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Router(nodes=["a"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        RouterConfig(policy="llmlb", unknown_option=1)  # type: ignore[call-arg]
    with pytest.raises(OverflowError):
        Node("a", max_concurrency=-1)


def test_time_on_the_monotonic_clock_cannot_be_set() -> None:
    router = Router(None, [Node("a")])
    with pytest.raises(InvalidInputError, match="monotonic clock"):
        router.set_time(10.0)
    assert router.now() >= 0.0


def test_manual_time_rejects_nan_and_never_goes_back(make_router: RouterFactory) -> None:
    router = make_router(["a"])
    with pytest.raises(InvalidInputError, match="time"):
        router.set_time(NAN)
    router.set_time(5.0)
    router.set_time(1.0)
    assert router.now() == 5.0


def test_table_full(make_router: RouterFactory) -> None:
    router = make_router([f"n{i}" for i in range(4096)])
    with pytest.raises(TableFullError, match="at most 4096 nodes"):
        router.upsert_node(Node("one-too-many"))
    assert len(router.nodes()) == 4096
    router.upsert_node(Node("n0", "updated:1"))  # updating an existing node still works


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"policy": "fastest"}, "unknown policy"),
        ({"metrics_ttl_s": -1.0}, "metrics_ttl_s"),
        ({"chars_per_token": 1e-300}, "chars_per_token"),
        ({"memory_saturation_threshold": 95.0}, "memory_saturation_threshold"),
        ({"weights": {"speed": 1.0}}, 'llmlb has no parameter "speed"'),
        ({"policies": {"fastest": {}}}, "unknown policy"),
        ({"policies": {"random": {"seed": 1.0}}}, "its parameters: none"),
        (
            {"policies": {"gpu_aware": {"pressure_scale": -1.0}}},
            "policies.gpu_aware.pressure_scale",
        ),
    ],
)
def test_bad_config_values_name_the_setting(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        RouterConfig(**kwargs)
