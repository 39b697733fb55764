"""The engine model of one GPU node against hand-computed cases."""

from __future__ import annotations

from dataclasses import replace

import pytest
from llmlb_fast._core import BlockCache
from llmlb_fast.sim.engine import Engine, EventKind, RequestState, SimRequest
from llmlb_fast.sim.profiles import (
    BLOCK_TOKENS,
    PROFILES,
    HardwareProfile,
    ModelShape,
    load_profiles,
    parse_cluster,
)

H100 = PROFILES["h100x4"]


def keys(prefix: str, n: int) -> list[int]:
    """``n`` chain keys of a prefix named ``prefix`` (distinct names, distinct keys)."""
    return [int.from_bytes(prefix.encode(), "big") << 32 | i for i in range(n)]


def run_until_idle(engine: Engine, limit: float = 1e6) -> list[tuple[str, str, float]]:
    seen = []
    while (t := engine.next_time()) is not None and t < limit:
        seen += [(e.kind.value, e.request.request_id, e.time_s) for e in engine.advance(t)]
    return seen


def tiny_profile(blocks: int, **overrides: object) -> HardwareProfile:
    """A node whose KV cache holds exactly ``blocks`` blocks (1 layer, 1 KV head)."""
    model = ModelShape("tiny", params=1e9, layers=1, hidden=128, kv_heads=1, head_dim=128)
    block_bytes = model.kv_bytes_per_token * BLOCK_TOKENS
    static = model.weight_bytes + 1.0
    memory = (static + (blocks + 0.5) * block_bytes) / 0.9
    base = replace(H100, name="tiny", model=model, gpus=1, activation_reserve_bytes_per_gpu=1.0)
    profile = replace(base, gpu_memory_bytes=memory, **overrides)  # type: ignore[arg-type]
    assert profile.kv_capacity_blocks == blocks
    return profile


def test_h100_capacity_and_rates_by_hand() -> None:
    # KV bytes per token: 2 (K and V) * 80 layers * 8 KV heads * 128 * 2 bytes.
    assert H100.model.kv_bytes_per_token == 327_680
    # (4 * 80 GB * 0.9 - 141.2 GB weights - 4 * 4 GB reserve) / (327,680 B * 16).
    assert H100.kv_capacity_blocks == int((288e9 - 141.2e9 - 16e9) // (327_680 * 16))
    assert H100.kv_capacity_tokens == 399_168
    # 4 * 989 TFLOPS * 0.45 MFU / (2 * 70.6e9 FLOPs per token).
    assert H100.prefill_tokens_per_s == pytest.approx(4 * 989e12 * 0.45 / 141.2e9)
    # Batch 1: 5 ms + 141.2 GB / (4 * 3.35 TB/s * 0.75) + 1 * 141.2e9 / (3956e12 * 0.3).
    expected = 0.005 + 141.2e9 / (4 * 3.35e12 * 0.75) + 141.2e9 / (4 * 989e12 * 0.3)
    assert H100.decode_step_s(1, 0) == pytest.approx(expected)


def test_cached_prefix_prefills_cheaper_by_hand() -> None:
    engine = Engine(H100)
    first = SimRequest("a", 1000, 2, keys("p", 62))
    engine.submit(first, 0.0)
    run_until_idle(engine)
    # One step: overhead + (2 * 70.6e9 * 1000 + 4 * 80 * 8192 * 1000^2 / 2) FLOPs at 45% MFU.
    flops = 2 * 70.6e9 * 1000 + 4 * 80 * 8192 * 1000**2 / 2
    assert first.ttft_s == pytest.approx(0.005 + flops / (4 * 989e12 * 0.45))
    assert first.cached_tokens == 0

    start = first.finish_s
    assert start is not None
    second = SimRequest("b", 1000, 2, keys("p", 62), arrival_s=start)
    engine.submit(second, start)
    run_until_idle(engine)
    # 62 blocks hit (992 tokens); 8 tokens are computed after a 992-token context.
    assert second.cached_tokens == 992
    flops = 2 * 70.6e9 * 8 + 4 * 80 * 8192 * (8 * 992 + 8**2 / 2)
    assert second.ttft_s == pytest.approx(0.005 + flops / (4 * 989e12 * 0.45))
    assert second.ttft_s < first.ttft_s / 10
    assert engine.counters.cached_tokens == 992
    assert engine.counters.prompt_tokens == 2000


def test_fully_cached_prompt_still_computes_its_last_token() -> None:
    engine = Engine(H100)
    for i in range(2):
        request = SimRequest(f"r{i}", 64, 1, keys("p", 4))
        engine.submit(request, engine.next_time() or 10.0 * i)
        run_until_idle(engine)
    assert request.cached_tokens == 48  # 3 of 4 blocks: the last one holds the last token


def test_decode_run_matches_step_by_step_sum() -> None:
    engine = Engine(H100)
    request = SimRequest("a", 160, 50, keys("p", 10))
    engine.submit(request, 0.0)
    run_until_idle(engine)
    assert request.ttft_s is not None and request.finish_s is not None
    # 49 decode steps with batch 1, context 161 .. 209.
    steps = sum(H100.decode_step_s(1, 161 + i) for i in range(49))
    assert request.finish_s - request.first_token_s == pytest.approx(steps)  # type: ignore[operator]
    assert engine.counters.generated_tokens == 50


def test_arrival_during_decode_run_joins_at_next_step_boundary() -> None:
    engine = Engine(H100)
    long = SimRequest("long", 160, 1000, keys("a", 10))
    engine.submit(long, 0.0)
    assert long.first_token_s is None
    engine.advance(engine.next_time())  # type: ignore[arg-type]
    assert long.first_token_s is not None
    run_end = engine.next_time()
    assert run_end is not None and run_end > long.first_token_s + 10  # one long decode run
    arrival = long.first_token_s + 0.5
    late = SimRequest("late", 160, 5, keys("b", 10), arrival_s=arrival)
    engine.submit(late, arrival)
    boundary = engine.next_time()
    assert boundary is not None and arrival <= boundary < arrival + H100.decode_step_s(1, 2000)
    events = run_until_idle(engine)
    assert ("first_token", "late", pytest.approx(late.first_token_s)) in events
    assert late.first_token_s is not None and late.first_token_s > boundary


def test_kv_cache_evicts_least_recently_freed_tail_first() -> None:
    cache = BlockCache(capacity_blocks=6)
    a, b = keys("a", 3), keys("b", 2)
    cache.acquire(a)
    cache.acquire(b)
    cache.release(a)  # freed first: evicted first, tail block first
    cache.release(b)
    assert (cache.cached_blocks, cache.referenced_blocks) == (5, 0)
    assert cache.evict(2) == 2
    assert cache.match(a, 3) == 1 and cache.match(b, 2) == 2, "a2 and a1 went first"
    cache.acquire(a[:1])  # referenced again: not evictable
    assert cache.evict(10) == 2
    assert (cache.match(a, 3), cache.match(b, 2), cache.evicted) == (1, 0, 4)


def test_kv_cache_refuses_to_release_what_is_not_held() -> None:
    cache = BlockCache(capacity_blocks=4)
    cache.acquire(keys("a", 2))
    with pytest.raises(ValueError, match="not referenced"):
        cache.release([*keys("a", 2), *keys("z", 1)])
    assert cache.referenced_blocks == 2, "a refused release changes nothing"


def test_generated_blocks_are_cached_as_room_allows() -> None:
    cache = BlockCache(capacity_blocks=3)
    cache.acquire(keys("a", 2))
    cache.insert_unreferenced(keys("g", 3), free_blocks=1)
    # One free block, and nothing evictable but what it inserts itself.
    assert (cache.cached_blocks, cache.match(keys("g", 3), 3)) == (3, 0)
    assert cache.match(keys("g", 3)[2:], 1) == 1, "the newest generated block stays"


def test_engine_evicts_old_prefix_when_full() -> None:
    engine = Engine(tiny_profile(blocks=40))
    first = SimRequest("first", 320, 1, keys("x", 20))  # 20 blocks
    engine.submit(first, 0.0)
    run_until_idle(engine)
    second = SimRequest("second", 480, 1, keys("y", 30))  # 30 blocks: must evict x's tail
    engine.submit(second, 1.0)
    run_until_idle(engine)
    again = SimRequest("again", 320, 1, keys("x", 20))
    engine.submit(again, 2.0)
    run_until_idle(engine)
    # x's blocks were freed tail first, so the 10+ evicted ones were its last blocks and
    # the leading ones still hit.
    assert 0 < again.cached_tokens < 19 * BLOCK_TOKENS
    assert engine.cache.evicted >= 10


def test_full_cache_queues_then_preempts_and_everything_finishes() -> None:
    engine = Engine(tiny_profile(blocks=24))
    requests = [SimRequest(f"r{i}", 100, 150, keys(f"p{i}", 6)) for i in range(3)]
    for r in requests:
        engine.submit(r, 0.0)
    # 3 x (100 prompt + 150 output) tokens = 47 blocks needed at the end: only 24 exist.
    assert engine.num_waiting + engine.num_running == 3
    events = run_until_idle(engine)
    assert all(r.state is RequestState.FINISHED for r in requests)
    assert engine.counters.preemptions >= 1
    assert sum(r.preemptions for r in requests) == engine.counters.preemptions
    assert [k for k, _, _ in events].count("finished") == 3
    assert engine.used_blocks() == 0


def test_request_larger_than_the_cache_is_refused() -> None:
    engine = Engine(tiny_profile(blocks=10))
    with pytest.raises(ValueError, match="needs 14 KV blocks"):
        engine.submit(SimRequest("big", 200, 8, keys("p", 12)), 0.0)


def test_cancel_before_first_token_only() -> None:
    engine = Engine(H100)
    a = SimRequest("a", 8000, 10, keys("a", 500))
    b = SimRequest("b", 8000, 10, keys("b", 500))
    engine.submit(a, 0.0)
    engine.submit(b, 0.0)
    assert engine.cancel(b, 0.01) is True
    assert b.state is RequestState.CANCELLED and engine.num_waiting == 0
    run_until_idle(engine)
    assert a.state is RequestState.FINISHED
    assert engine.cancel(a, 99.0) is False
    assert engine.counters.cancelled == 1
    assert engine.used_blocks() == 0


def test_bad_requests_are_refused() -> None:
    with pytest.raises(ValueError, match="block keys"):
        SimRequest("short", 100, 1, keys("p", 2))
    with pytest.raises(ValueError, match=">= 1 token"):
        SimRequest("empty", 0, 1, [])
    engine = Engine(H100)
    request = SimRequest("twice", 10, 1, [])
    engine.submit(request, 0.0)
    with pytest.raises(ValueError, match="already submitted"):
        engine.submit(request, 0.0)


def test_snapshot_counts_blocks_and_memory() -> None:
    engine = Engine(H100)
    engine.submit(SimRequest("a", 1600, 1000, keys("a", 100)), 0.0)
    engine.advance(engine.next_time())  # type: ignore[arg-type]
    snap = engine.snapshot()
    assert snap.running == 1 and snap.waiting == 0
    assert snap.kv_used_blocks == 100 + 1  # 100 prompt blocks + the first generated token
    assert snap.kv_usage == pytest.approx(101 / H100.kv_capacity_blocks)
    assert snap.gpu_memory_used_bytes == pytest.approx(
        H100.static_memory_bytes + 101 * 16 * 327_680
    )


def test_profiles_file_and_cluster_spec(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "profiles.yaml"
    path.write_text("h100x8:\n  base: h100x4\n  gpus: 8\nl40:\n  gpus: 1\n")
    with pytest.raises(ValueError, match="needs"):
        load_profiles(path)
    path.write_text("h100x8:\n  base: h100x4\n  gpus: 8\n")
    profiles = {**PROFILES, **load_profiles(path)}
    assert profiles["h100x8"].kv_capacity_tokens > 2 * H100.kv_capacity_tokens
    assert parse_cluster("h100x4:2,a100x4,h100x8:1", profiles) == [
        "h100x4",
        "h100x4",
        "a100x4",
        "h100x8",
    ]
    with pytest.raises(ValueError, match="unknown profile"):
        parse_cluster("b200:2")
    with pytest.raises(ValueError, match=">= 1"):
        parse_cluster("h100x4:0")


def test_events_report_first_token_then_finish() -> None:
    engine = Engine(H100)
    engine.submit(SimRequest("a", 32, 3, keys("a", 2)), 0.0)
    events = []
    while (t := engine.next_time()) is not None:
        events += engine.advance(t)
    assert [e.kind for e in events] == [EventKind.FIRST_TOKEN, EventKind.FINISHED]


def test_activity_counts_the_step_in_progress() -> None:
    engine = Engine(H100)
    engine.submit(SimRequest("a", 8000, 1, keys("a", 500)), 0.0)
    end = engine.next_time()
    assert end is not None and end > 0.5
    busy, read = engine.activity(end / 2)
    assert busy == pytest.approx(end / 2)  # half of a long prefill step: busy, not idle
    assert read == pytest.approx(H100.model.weight_bytes / 2)
    engine.advance(end)
    assert engine.activity(end + 5.0) == (
        pytest.approx(end),
        pytest.approx(H100.model.weight_bytes),
    )


def test_monitor_reports_the_cores_metric_fields_and_idle_is_zero() -> None:
    from llmlb_fast._core import METRIC_FIELDS
    from llmlb_fast.sim.monitor import EngineMonitor

    monitor = EngineMonitor(Engine(H100), interval_s=1.0)
    reading = monitor.read(1.0)
    figures = monitor.figures(reading)
    pcie = {"pcie_rx_bytes_per_s", "pcie_tx_bytes_per_s"}  # the HTTP node adds these
    assert set(figures) | pcie == set(METRIC_FIELDS)
    assert (reading.sm_utilization, reading.mem_bandwidth_utilization) == (0.0, 0.0)
    assert figures["num_requests_running"] == 0.0
    assert monitor.sample(reading, 1.0, 0).kv_usage == figures["kv_cache_usage"]


# Engine modes ----------------------------------------------------------------------
WHOLE = replace(H100, engine_mode="whole")


@pytest.mark.parametrize("profile", [H100, WHOLE], ids=["chunked", "whole"])
def test_lone_prompt_ttft_is_its_prefill_time_in_both_modes(profile: HardwareProfile) -> None:
    engine = Engine(profile)
    request = SimRequest("a", 1000, 2, keys("a", 62))
    engine.submit(request, 0.0)
    run_until_idle(engine)
    assert request.ttft_s == pytest.approx(
        profile.step_overhead_s + profile.prefill_time_s(1000, 0)
    )


def tokens_while_prefilling(profile: HardwareProfile) -> int:
    """Tokens a running sequence generates while a 20,000-token prompt is prefilled."""
    engine = Engine(profile)
    running = SimRequest("running", 160, 5000, keys("r", 10))
    engine.submit(running, 0.0)
    engine.advance(engine.next_time())  # type: ignore[arg-type]
    long = SimRequest("long", 20_000, 2, keys("l", 1250), arrival_s=1.0)
    engine.submit(long, 1.0)
    boundary = engine.next_time()
    assert boundary is not None
    engine.advance(boundary)  # the decode step in progress at the arrival ends
    before = engine.generated_tokens(running, boundary)
    while long.first_token_s is None:
        engine.advance(engine.next_time())  # type: ignore[arg-type]
    return engine.generated_tokens(running, long.first_token_s) - before


def test_long_prompt_stalls_decoding_in_whole_mode_only() -> None:
    # Chunked: three steps of at most 8,191 prompt tokens, each decodes the running
    # sequence once. Whole: one prefill step, no decoding.
    assert tokens_while_prefilling(H100) == 3
    assert tokens_while_prefilling(WHOLE) == 0


def test_whole_mode_prefills_whole_prompts_up_to_the_token_budget() -> None:
    engine = Engine(WHOLE)
    engine.submit(SimRequest("busy", 16, 1, keys("b", 1)), 0.0)  # the others queue behind it
    start = engine.next_time()
    assert start is not None
    sizes = (3000, 4000, 5000)
    requests = [SimRequest(f"r{i}", n, 1, keys(f"p{i}", n // 16)) for i, n in enumerate(sizes)]
    for r in requests:
        engine.submit(r, 0.0)
    run_until_idle(engine)
    first = start + WHOLE.step_overhead_s + WHOLE.prefill_time_s(3000, 0)
    first += WHOLE.prefill_time_s(4000, 0)
    # 3,000 + 4,000 fit in 8,192 tokens; the 5,000-token prompt waits for the next step.
    assert requests[0].first_token_s == requests[1].first_token_s == pytest.approx(first)
    second = first + WHOLE.step_overhead_s + WHOLE.prefill_time_s(5000, 0)
    assert requests[2].first_token_s == pytest.approx(second)


def test_whole_mode_prefills_a_prompt_longer_than_the_budget_in_one_step() -> None:
    engine = Engine(WHOLE)
    request = SimRequest("long", 20_000, 1, keys("l", 1250))
    engine.submit(request, 0.0)
    run_until_idle(engine)
    assert request.ttft_s == pytest.approx(WHOLE.step_overhead_s + WHOLE.prefill_time_s(20_000, 0))
    chunked = Engine(H100)
    again = SimRequest("long", 20_000, 1, keys("l", 1250))
    chunked.submit(again, 0.0)
    run_until_idle(chunked)
    assert again.ttft_s is not None and again.ttft_s > request.ttft_s  # type: ignore[operator]


def test_unknown_engine_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="engine_mode must be one of chunked, whole"):
        replace(H100, engine_mode="eager")


def test_profiles_file_sets_the_engine_mode(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "profiles.yaml"
    path.write_text("h100v0:\n  base: h100x4\n  engine_mode: whole\n")
    assert load_profiles(path)["h100v0"].engine_mode == "whole"
    assert H100.engine_mode == "chunked", "the built-in profiles chunk"
