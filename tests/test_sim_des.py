"""Discrete-event mode: determinism, accounting, and the router in the loop."""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from llmlb_fast import RouterConfig
from llmlb_fast.sim.des import Simulation, percentile, summarize
from llmlb_fast.sim.profiles import PROFILES
from llmlb_fast.sim.workloads import ChatSessions, TraceReplay, Uniform, read_trace

FIXTURES = Path(__file__).parent / "fixtures"
H100 = PROFILES["h100x4"]
A100 = PROFILES["a100x4"]


def chat_run(policy: str, seed: int = 3, duration: float = 120.0) -> Simulation:
    workload = ChatSessions(sessions=4, streams=5, duration_s=duration, seed=seed)
    sim = Simulation(
        workload, [H100, H100, A100], policy=policy, duration_s=duration, warmup_s=20, seed=seed
    )
    sim.run()
    return sim


def test_same_seed_same_run() -> None:
    a, b = chat_run("random"), chat_run("random")
    assert [asdict(r) for r in a.result.requests] == [asdict(r) for r in b.result.requests]
    assert [asdict(s) for s in a.result.samples] == [asdict(s) for s in b.result.samples]
    assert summarize(a.result) == summarize(b.result)


def test_other_seed_other_run() -> None:
    a, b = chat_run("random", seed=3), chat_run("random", seed=4)
    assert [r.node for r in a.result.requests] != [r.node for r in b.result.requests]


def test_router_sees_every_request_finish() -> None:
    sim = chat_run("llmlb")
    records = sim.result.requests
    assert records, "the workload produced requests"
    pending = [r for r in records if r.outcome == "pending"]
    assert sim.router.in_flight_total == len(pending)
    routed = sum(n.routed_total for n in sim.router.nodes())
    assert routed == len(records)
    # The engines reported metrics: every node is fresh and knows its KV capacity.
    for status in sim.router.nodes():
        assert status.metrics is not None
        assert status.metrics["kv_capacity_tokens"] == H100.kv_capacity_tokens


def test_chat_turns_hit_the_cache_with_prefix_affinity() -> None:
    summary_rr = summarize(chat_run("round_robin").result)
    summary_prefix = summarize(chat_run("prefix_aware").result)
    # Same conversation, same node: the history is cached (system prompts are everywhere).
    assert summary_prefix["kv_hit_rate"] > summary_rr["kv_hit_rate"] + 0.1


def test_router_cache_predictions_are_checked_against_the_engine() -> None:
    summary = summarize(chat_run("prefix_aware").result)
    # Nothing is evicted in so short a run: every token the index promised was there.
    assert summary["predicted_cache_missed"] == 0.0
    assert summary["predicted_kv_hit_rate"] > 0.2


def test_timeouts_are_counted_and_released() -> None:
    # One A100 node prefills ~5.7k tokens/s; 4 prompts/s of 2,000 tokens outgrow it, so the
    # queue grows past the 3 s deadline and later requests time out.
    workload = Uniform(
        input_tokens=2000, output_tokens=1, concurrency=None, rate_per_s=4.0, duration_s=60
    )
    sim = Simulation(workload, [A100], policy="round_robin", duration_s=60, timeout_s=3.0)
    result = sim.run()
    summary = summarize(result)
    timeouts = [r for r in result.requests if r.outcome == "timeout"]
    done = [r for r in result.requests if r.outcome == "ok"]
    assert timeouts and done
    assert all(r.ttft_s is None and r.output_tokens == 0 for r in timeouts)
    assert all(r.finish_s == pytest.approx(r.arrival_s + 3.0) for r in timeouts)
    assert all(r.ttft_s is not None and r.ttft_s <= 3.0 for r in done)
    assert summary["timeout_rate"] == pytest.approx(len(timeouts) / (len(timeouts) + len(done)))
    window = sim.router.node_stats("node-0")
    assert window["timeouts"] > 0  # the router heard of them (last 30 s window)


def test_trace_replay_on_heterogeneous_cluster() -> None:
    records = read_trace(FIXTURES / "mooncake_head300.jsonl")
    workload = TraceReplay(records, limit=120, speedup=0.25)  # 4x slower: 2 nodes, not 8
    sim = Simulation(workload, [H100, A100], policy="llmlb", duration_s=600, timeout_s=30)
    result = sim.run()
    assert len(result.requests) == 120
    # A 120k-token prompt holds the queue for tens of seconds (FCFS chunked prefill).
    assert sum(r.outcome == "ok" for r in result.requests) >= 108
    summary = summarize(result)
    # Every prompt starts with the shared 512-token block, so most requests hit at least
    # that (not all: a 120k-token prompt can evict it from the A100 node's cache).
    prompt_tokens = sum(r.prompt_tokens for r in result.requests)
    assert summary["kv_hit_rate"] >= 0.5 * 512 * len(result.requests) / prompt_tokens
    assert {r.node for r in result.requests} == {0, 1}


def test_router_options_reach_the_router() -> None:
    workload = Uniform(concurrency=2, duration_s=5)
    config = RouterConfig(metrics_ttl_s=2.5)
    sim = Simulation(workload, [H100], policy="least_request", config=config, duration_s=5)
    assert sim.router.config.metrics_ttl_s == 2.5
    assert sim.router.config.policy == "least_request"


def test_percentile_nearest_rank() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert percentile([3.0, 1.0, 2.0, 4.0], 95) == 4.0
    assert math.isnan(percentile([], 50))


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one node"):
        Simulation(Uniform(concurrency=1), [])
    with pytest.raises(ValueError, match="must be > 0"):
        Simulation(Uniform(concurrency=1), [H100], timeout_s=0)


def small_chat_run(kv_events: bool) -> dict[str, float]:
    """Nodes with little KV room (about 125k tokens) under 160 conversations: the
    engines evict, so credit for what was routed goes stale."""
    small = replace(H100, gpu_memory_utilization=0.62)
    workload = ChatSessions(sessions=8, streams=20, duration_s=240, seed=3)
    sim = Simulation(
        workload, [small] * 3, policy="llmlb", duration_s=240, warmup_s=20, seed=3,
        kv_events=kv_events,
    )  # fmt: skip
    return summarize(sim.run())


def test_kv_events_keep_the_index_true_to_what_engines_hold() -> None:
    guessed, exact = small_chat_run(kv_events=False), small_chat_run(kv_events=True)
    assert guessed["predicted_cache_missed"] > 0.03
    assert exact["predicted_cache_missed"] < 0.01
    assert exact["kv_hit_rate"] > 0.5


def test_nodes_are_live_with_kv_events_and_off_without() -> None:
    workload = ChatSessions(sessions=1, streams=1, duration_s=30, ramp_s=1.0, seed=1)
    for kv_events, state in ((True, "live"), (False, "off")):
        sim = Simulation(workload, [H100], duration_s=30, kv_events=kv_events)
        sim.run()
        assert sim.router.nodes()[0].kv_events_state == state
        assert (sim.router.nodes()[0].kv_engine_blocks > 0) is kv_events
