"""The breaker's overload judgement reads memory the way the core's saturation skip does."""

from __future__ import annotations

from llmlb_fast._core import memory_usage
from llmlb_fast.config import BreakerConfig
from llmlb_fast.service.breakers import overload_reasons


def test_overload_uses_the_cores_memory_figures() -> None:
    config = BreakerConfig.model_validate(
        {"overload": {"kv_cache_usage": 0.9, "gpu_memory_usage": 0.9}}
    )
    over = {"gpu_memory_used_bytes": 95.0, "gpu_memory_total_bytes": 100.0}
    assert memory_usage(over) == (None, 0.95)
    assert overload_reasons(config, over) == ["gpu_memory_usage 0.950 >= 0.9"]
    assert overload_reasons(config, {"gpu_memory_used_bytes": 95.0}) == []
    assert overload_reasons(config, {"kv_cache_usage": 0.95}) == ["kv_cache_usage 0.950 >= 0.9"]
