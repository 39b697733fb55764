"""The GPU metric schema has one definition (the core's ``GpuMetrics::FIELDS``): the
binding's ``METRIC_FIELDS``, ``update_metrics`` keywords and the proto's ``NodeMetrics``
agree with it. And memory use is judged by one rule, ``memory_usage``."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from conftest import RouterFactory
from llmlb_fast import InvalidInputError, Node
from llmlb_fast._core import METRIC_FIELDS, Router, memory_usage

PROTO = Path(__file__).resolve().parents[1] / "grpc_server" / "llmlb" / "v1" / "router.proto"
# NodeMetrics figures the router does not route on.
PROTO_ONLY = ["prefix_cache_hit_rate"]


def proto_metric_fields() -> list[str]:
    body = re.search(r"message NodeMetrics \{(.*?)\n\}", PROTO.read_text(), re.S)
    assert body is not None, "NodeMetrics not found in the proto"
    return re.findall(r"optional double (\w+) = \d+;", body.group(1))


def test_proto_metric_fields_and_update_metrics_keywords_agree() -> None:
    assert len(METRIC_FIELDS) == 15
    proto = proto_metric_fields()
    assert [f for f in proto if f not in PROTO_ONLY] == METRIC_FIELDS
    assert set(PROTO_ONLY) <= set(proto)
    keywords = list(inspect.signature(Router.update_metrics).parameters)
    assert keywords == ["self", "node_id", *METRIC_FIELDS]


def test_each_keyword_lands_in_its_own_field(make_router: RouterFactory) -> None:
    router = make_router(["a"])
    for i, name in enumerate(METRIC_FIELDS):
        value = (i + 1) / 100
        router.update_metrics("a", **{name: value})
        assert router.nodes()[0].metrics == {name: value}


def test_memory_usage_is_the_rule_saturation_is_judged_by(make_router: RouterFactory) -> None:
    nvml = {"gpu_memory_used_bytes": 76.0, "gpu_memory_total_bytes": 80.0}
    assert memory_usage(nvml) == (None, 0.95)
    assert memory_usage({"gpu_memory_used_bytes": 40.0}) == (None, None)
    assert memory_usage({"gpu_memory_used_bytes": 40.0}, gpu_memory_bytes=80) == (None, 0.5)
    assert memory_usage({**nvml, "kv_cache_usage": 0.3, "sm_utilization": None}) == (0.3, 0.95)
    router = make_router([Node("a", gpu_memory_bytes=80), "b"], memory_saturation_threshold=0.95)
    router.update_metrics("a", **nvml)
    assert router.route("x").node_id == "b", "0.95 of GPU memory is saturated"
    router.update_metrics("a", kv_cache_usage=0.3, **nvml)
    decision = router.route("x")
    skipped = {c.node_id: c.skipped for c in decision.candidates}
    assert skipped["a"] is None, "KV-cache usage outranks NVML's near-full figure"


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({"kv_cache_use": 0.5}, "unknown metric"),
        ({"kv_cache_usage": 1.5}, "kv_cache_usage"),
        ({"gpu_memory_used_bytes": 2.0, "gpu_memory_total_bytes": 1.0}, "exceeds"),
    ],
)
def test_memory_usage_refuses_what_update_metrics_refuses(
    metrics: dict[str, float], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        memory_usage(metrics)
