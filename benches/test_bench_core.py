"""pytest-benchmark suite of the routing core.

Run: ``python -m pytest benches/test_bench_core.py --benchmark-enable``
(the full report with the pure-Python ratio, threads and memory: ``python benches/core_report.py``).
"""

from __future__ import annotations

import itertools

import pytest
from core_workload import build
from llmlb_fast import Router


@pytest.fixture(scope="module", params=[8, 64, 512], ids=lambda n: f"{n}nodes")
def workload(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return build(request.param)


def test_route_and_complete(benchmark, workload) -> None:  # type: ignore[no-untyped-def]
    router: Router = workload.router
    prompts = itertools.cycle(workload.queries)

    def route_and_complete() -> None:
        router.complete(router.route(next(prompts)).request_id)

    benchmark(route_and_complete)
    assert router.in_flight_total == 0
    assert router.stats()["prefix_index"]["entries"] >= 100_000  # type: ignore[index]
