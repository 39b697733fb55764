"""pytest-benchmark of the discrete-event simulator: the article's chat scenario on
eight 4xH100 nodes, 10 simulated minutes routed by the llmlb policy.

Run: ``python -m pytest benches/test_bench_sim.py --benchmark-enable -o addopts=""``.
The figure to read is wall seconds per simulated request (``extra_info``); a 2-hour run
of the same scenario (``llmlb bench``) routes about 200,000 requests per policy.
"""

from __future__ import annotations

from llmlb_fast.sim.des import Simulation
from llmlb_fast.sim.profiles import PROFILES
from llmlb_fast.sim.workloads import ChatSessions

SIMULATED_S = 600.0


def run_chat(kv_events: bool = False) -> int:
    """Without KV events by default, as the committed figure was measured (with them the
    router also applies every store and eviction: see docs/benchmark.md)."""
    workload = ChatSessions(sessions=48, streams=20, duration_s=SIMULATED_S, seed=0)
    simulation = Simulation(
        workload, [PROFILES["h100x4"]] * 8, policy="llmlb", duration_s=SIMULATED_S,
        kv_events=kv_events,
    )  # fmt: skip
    return len(simulation.run().requests)


def test_chat_scenario_ten_minutes(benchmark) -> None:  # type: ignore[no-untyped-def]
    requests = benchmark.pedantic(run_chat, rounds=3, iterations=1)
    assert requests > 10_000
    mean_s = benchmark.stats.stats.mean
    benchmark.extra_info["simulated_requests"] = requests
    benchmark.extra_info["wall_us_per_request"] = round(mean_s / requests * 1e6, 1)
    benchmark.extra_info["projected_2h_wall_s"] = round(mean_s * 7200 / SIMULATED_S, 1)
