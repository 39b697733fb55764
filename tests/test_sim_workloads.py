"""Workloads: trace readers, prefix structure of the generated tokens, load shapes."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from llmlb_fast.sim.profiles import BLOCK_TOKENS
from llmlb_fast.sim.workloads import (
    FRESH_TOKEN_BASE,
    ChatSessions,
    TraceRecord,
    TraceReplay,
    Uniform,
    WorkItem,
    chain_keys,
    read_trace,
    trace_tokens,
)

FIXTURES = Path(__file__).parent / "fixtures"


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_mooncake_fixture_reads_in_order() -> None:
    records = read_trace(FIXTURES / "mooncake_head300.jsonl")
    assert len(records) == 300
    assert records[0] == TraceRecord(0.0, 6758, 500, (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13))
    assert all(a.timestamp_s <= b.timestamp_s for a, b in itertools.pairwise(records))
    assert all(r.hash_ids[0] == 0 for r in records)


def test_equal_hash_ids_give_equal_token_prefixes() -> None:
    from llmlb_fast.sim.workloads import FreshTokens

    fresh = FreshTokens()
    a = trace_tokens(TraceRecord(0, 1500, 1, (0, 7, 9)), fresh)
    b = trace_tokens(TraceRecord(0, 1300, 1, (0, 7, 11)), fresh)
    c = trace_tokens(TraceRecord(0, 600, 1, (5,)), fresh)
    assert len(a) == 1500 and len(b) == 1300 and len(c) == 600
    assert common_prefix(a, b) == 1024  # two shared 512-token blocks
    assert common_prefix(a, c) == 0
    assert c[512:] == list(range(FRESH_TOKEN_BASE, FRESH_TOKEN_BASE + 88))  # no id: fresh text
    keys_a, keys_b = chain_keys(a, []), chain_keys(b, [])
    assert len(keys_a) == 1500 // BLOCK_TOKENS
    assert keys_a[:64] == keys_b[:64] and keys_a[64] != keys_b[64]


def test_chain_keys_cover_the_whole_prefix() -> None:
    block = list(range(16))
    assert chain_keys([1] * 16 + block, [])[1] != chain_keys([2] * 16 + block, [])[1]
    keys = chain_keys(list(range(40)), [])
    assert len(keys) == 2
    assert chain_keys(list(range(48)), keys)[:2] == chain_keys(list(range(32)), [])


def test_azure_csv_fixture() -> None:
    records = read_trace(FIXTURES / "azure_format_small.csv")
    assert len(records) == 24
    assert records[0].timestamp_s == 0.0
    assert records[0].input_tokens == 667 and records[0].output_tokens == 409
    assert records[-1].timestamp_s == pytest.approx(52.7390866 - 46.7784187, abs=1e-5)
    assert all(r.hash_ids == () for r in records)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.jsonl", '{"timestamp": 0, "input_length": 5}\n', "missing"),
        ("bad.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1}\nnot json\n', ":2:"),
        ("bad.jsonl", '{"timestamp": 0, "input_length": 0, "output_length": 1}\n', ">= 1"),
        ("bad.jsonl", "", "holds no requests"),
        ("bad.csv", "when,ContextTokens,GeneratedTokens\n1,2,3\n", "no timestamp column"),
        ("bad.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,2,3\n", "neither"),
    ],
)
def test_bad_traces_say_where(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_trace(path)


def test_missing_trace_file() -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_trace("/nonexistent/trace.jsonl")


def test_trace_replay_at_timestamps_and_at_concurrency() -> None:
    records = read_trace(FIXTURES / "azure_format_small.csv")
    timed = TraceReplay(records, speedup=2.0)
    items = timed.start()
    assert [i.arrival_s for i in items] == [r.timestamp_s / 2 for r in records]
    tokens, keys = timed.materialize(items[0])
    assert len(tokens) == 667 and len(keys) == (667 + 409) // BLOCK_TOKENS
    assert timed.on_done(items[0], 1.0, True) == []

    closed = TraceReplay(records, concurrency=3)
    first = closed.start()
    assert [i.arrival_s for i in first] == [0.0, 0.0, 0.0]
    nxt = closed.on_done(first[1], 7.5, True)
    assert len(nxt) == 1 and nxt[0].arrival_s == 7.5 and nxt[0].stream == 1


def drive_chat(workload: ChatSessions, turns: int) -> list[WorkItem]:
    """Completes each stream's requests in turn, collecting what it asks for."""
    items = workload.start()
    pending = list(items)
    seen = list(items)
    while pending and len(seen) < turns:
        item = pending.pop(0)
        for nxt in workload.on_done(item, item.arrival_s + 1.0, True):
            pending.append(nxt)
            seen.append(nxt)
    return seen


def test_chat_history_grows_and_shares_the_system_prompt() -> None:
    workload = ChatSessions(sessions=2, streams=2, system_tokens=100, turns=3, think_s=0)
    items = drive_chat(workload, 40)
    by_stream: dict[int, list[WorkItem]] = {}
    for item in items:
        by_stream.setdefault(item.stream, []).append(item)
    turns = by_stream[0]
    # Turn k's prompt: system + k * 200 input + (k - 1) * 800 output tokens.
    assert [t.prompt_tokens for t in turns[:4]] == [300, 1300, 2300, 300]
    t1, t2 = workload.materialize(turns[0]), workload.materialize(turns[1])
    assert t2[0][:300] == t1[0]  # the history is the previous prompt ...
    assert len(t2[1]) >= (300 + 800) // 16 and t2[1][:68] == t1[1][:68]  # ... and its answer
    # Streams 0 and 2 share session 0's system prompt, not stream 1 (session 1).
    s0, s1, s2 = (workload.materialize(by_stream[s][0])[0] for s in (0, 1, 2))
    assert common_prefix(s0, s2) == 100 and common_prefix(s0, s1) == 0


def test_chat_streams_start_over_the_ramp() -> None:
    items = ChatSessions(sessions=4, streams=25, ramp_s=100.0).start()
    starts = sorted(item.arrival_s for item in items)
    assert len(starts) == 100 and starts[0] >= 0 and starts[-1] <= 100.0
    assert starts[24] < 40 < 60 < starts[75], "spread over the ramp, not bunched"
    with pytest.raises(ValueError, match="ramp_s"):
        ChatSessions(ramp_s=-1.0)


def test_chat_open_loop_rate() -> None:
    workload = ChatSessions(sessions=3, rate_per_s=2.0, duration_s=100, seed=1)
    items = workload.start()
    assert 150 < len(items) < 250  # Poisson, mean 200
    assert all(0 < i.arrival_s < 100 for i in items)
    assert len({i.stream for i in items}) == len(items)


def test_uniform_shares_nothing() -> None:
    workload = Uniform(input_tokens=64, output_tokens=16, concurrency=3)
    items = workload.start()
    token_sets = [set(workload.materialize(i)[0]) for i in items]
    assert all(len(t) == 64 for t in token_sets)
    assert not (token_sets[0] & token_sets[1]) and not (token_sets[1] & token_sets[2])
    with pytest.raises(ValueError, match="exactly one"):
        Uniform(concurrency=None, rate_per_s=None)
