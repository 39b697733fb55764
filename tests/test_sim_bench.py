"""``llmlb bench``: the table, the JSON and the plots, on small runs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from llmlb_fast import RouterConfig
from llmlb_fast.bench import parse_router_options
from llmlb_fast.cli import main
from llmlb_fast.sim.report import format_table
from llmlb_fast.sim.sweep import LoadSweep, scale_load

FIXTURES = Path(__file__).parent / "fixtures"


def test_help_lists_the_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "llmlb_fast.cli", "bench", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for option in ("--policies", "--workload", "--cluster", "--trace", "--router-option"):
        assert option in result.stdout


def test_trace_bench_writes_table_json_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "bench",
            "--workload=trace",
            f"--trace={FIXTURES / 'mooncake_head300.jsonl'}",
            "--limit=60",
            "--speedup=0.5",
            "--cluster=h100x4:2,a100x4:1",
            "--policies=round_robin,llmlb",
            "--duration=300",
            "--warmup=0",
            "--timeout=60",
            "--jobs=1",
            "--no-progress",
            f"--out={tmp_path}",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| TTFT p50 (ms) |" in out and "| KV-cache hit rate |" in out
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["results"]) == {"round_robin", "llmlb"}
    assert data["results"]["llmlb"]["requests"] == 60
    assert [n["name"] for n in data["cluster"]] == ["h100x4", "h100x4", "a100x4"]
    for png in ("ttft_cdf.png", "node_load.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "llmlb bench" in (tmp_path / "table.md").read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--policies=fastest"], "unknown policies"),
        (["--cluster=h100x4:0"], ">= 1"),
        (["--router-option=weights.prefix"], "KEY=VALUE"),
        (["--router-option=nonsense=1"], "unknown field"),
        (["--router-option=metrics_ttl_s=-1"], "metrics_ttl_s"),
        (["--workload=trace", "--trace=/nonexistent.jsonl"], "does not exist"),
        (["--sessions=0"], ">= 1"),
        (["--replicas=0"], "replica counts must be >= 1"),
        (["--replicas=two"], "expected counts"),
        (["--sync-delay=-1"], "must be >= 0"),
        (["--sync-delay=soon"], "expected seconds or 'none'"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--no-progress", *argv]) == 2
    assert message in capsys.readouterr().err


def test_router_options_parse_weights() -> None:
    options = parse_router_options(["weights.prefix=2", "metrics_ttl_s=3"])
    assert options["weights"]["prefix"] == 2
    assert options["weights"]["load"] == RouterConfig().weights["load"], "others keep defaults"
    assert options["metrics_ttl_s"] == 3


def test_table_shows_change_against_round_robin() -> None:
    row = {
        "ttft_p50_ms": 100.0,
        "ttft_p95_ms": 200.0,
        "qps": 10.0,
        "output_tokens_per_s": 8000.0,
        "gpu_memory_util": 0.5,
        "timeout_rate": 0.04,
        "kv_hit_rate": math.nan,
    }
    better = {**row, "ttft_p50_ms": 50.0, "qps": 13.6, "timeout_rate": 0.01}
    table = format_table({"round_robin": row, "llmlb": better}, "round_robin")
    assert "| TTFT p50 (ms) | 100 | 50 (-50.0%) |" in table
    assert "| throughput (QPS) | 10.00 | 13.60 (+36.0%) |" in table
    assert "| timeout rate | 4.00% | 1.00% (-75.0%) |" in table
    assert "| KV-cache hit rate | n/a | n/a |" in table


def test_help_lists_the_sweep_and_engine_mode_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "llmlb_fast.cli", "bench", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for option in ("--load-sweep", "--engine-modes", "--engine-mode", "chunked,whole"):
        assert option in result.stdout


def test_engine_mode_flag_sets_every_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "bench",
            "--engine-mode=whole",
            "--cluster=h100x4:1,a100x4:1",
            "--policies=round_robin",
            "--sessions=2",
            "--streams=2",
            "--duration=60",
            "--warmup=0",
            "--no-progress",
            "--no-plots",
            f"--out={tmp_path}",
        ]
    )
    assert code == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert [n["engine_mode"] for n in data["cluster"]] == ["whole", "whole"]


def test_load_sweep_writes_table_json_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "bench",
            "--load-sweep=1.0,1.5",
            "--engine-modes=chunked,whole",
            "--cluster=h100x4:2",
            "--policies=round_robin,llmlb",
            "--sessions=2",
            "--streams=4",
            "--duration=90",
            "--warmup=10",
            "--jobs=1",
            "--no-progress",
            f"--out={tmp_path}",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "### chat, engine mode whole" in out
    assert "| 1.5x (3 sessions) | llmlb |" in out, "2 sessions x 1.5, rounded"
    assert "llmlb TTFT p95 at 1.5x / at 1x:" in out
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert data["engine_modes"] == ["chunked", "whole"]
    assert data["loads"] == {"1": "2 sessions", "1.5": "3 sessions"}
    for mode in ("chunked", "whole"):
        for factor in ("1", "1.5"):
            assert set(data["results"][mode][factor]) == {"round_robin", "llmlb"}
        assert set(data["verdict"][mode]) >= {"lowest_p95_everywhere", "p95_ratio"}
    table = (tmp_path / "sweep.md").read_text()
    assert table.startswith("Command: `llmlb bench") and "| TTFT p95 (ms) |" in table
    assert (tmp_path / "sweep_ttft_p95.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_multiples_scale_what_sets_each_workloads_load() -> None:
    chat = {"workload": "chat", "rate": None, "sessions": 56, "concurrency": None}
    assert scale_load(chat, 1.375)["sessions"] == 77
    assert scale_load({**chat, "rate": 2.0}, 1.5)["rate"] == 3.0
    trace = {"workload": "trace", "rate": None, "speedup": 2.0, "concurrency": None}
    assert scale_load(trace, 1.25)["speedup"] == 2.5
    assert scale_load({**trace, "concurrency": 8}, 1.5)["concurrency"] == 12
    uniform = {"workload": "uniform", "rate": None, "concurrency": None}
    assert scale_load({**uniform, "sessions": 4, "streams": 5}, 0.5)["concurrency"] == 10


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--load-sweep=0,1"], "must be > 0"),
        (["--load-sweep=1,x"], "expected numbers"),
        (["--load-sweep=1", "--engine-modes=eager"], "known modes are chunked, whole"),
        (["--engine-modes=whole"], "goes with --load-sweep"),
    ],
)
def test_bad_sweep_arguments_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--no-progress", *argv]) == 2
    assert message in capsys.readouterr().err


def test_sweep_verdict_names_where_llmlb_is_not_lowest() -> None:
    def row(p95: float) -> dict[str, float]:
        return {"ttft_p95_ms": p95, "ttft_p50_ms": p95 / 2, "timeout_rate": 0.0, "kv_hit_rate": 0.5}

    p95 = {1.0: {"round_robin": 300.0, "llmlb": 100.0}, 1.5: {"round_robin": 250.0, "llmlb": 260.0}}
    sweep = LoadSweep(
        workload="chat",
        policies=["round_robin", "llmlb"],
        factors=[1.0, 1.5],
        modes=["chunked"],
        loads={1.0: "8 sessions", 1.5: "12 sessions"},
        summaries={"chunked": {f: {p: row(v) for p, v in by.items()} for f, by in p95.items()}},
    )
    verdict = sweep.verdict("chunked")
    assert verdict["lowest_p95_everywhere"] is False
    assert [m["factor"] for m in verdict["not_lowest_at"]] == [1.5]
    assert verdict["p95_ratio"] == pytest.approx(2.6)
    lines = sweep.verdict_lines("chunked")
    assert "no (1.5x: round_robin 250.0 ms against 260.0 ms)" in lines[0]
    assert "2.60 (not met, target <= 2)" in lines[1]


def test_no_kv_events_flag_reaches_the_run(tmp_path: Path) -> None:
    argv = [
        "bench", "--workload=trace", f"--trace={FIXTURES / 'mooncake_head300.jsonl'}",
        "--limit=20", "--cluster=h100x4:1", "--policies=llmlb", "--duration=120",
        "--warmup=0", "--jobs=1", "--no-progress", "--no-plots",
    ]  # fmt: skip
    for flag, on in (([], True), (["--no-kv-events"], False)):
        out = tmp_path / str(on)
        assert main([*argv, *flag, f"--out={out}"]) == 0
        data = json.loads((out / "results.json").read_text())
        assert data["settings"]["kv_events"] is on
        assert "predicted_cache_missed" in data["results"]["llmlb"]


def test_replica_sweep_writes_table_json_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "bench",
            "--replicas=1,3",
            "--sync-delay=0.005,none",
            "--cluster=h100x4:3",
            "--policies=llmlb",
            "--sessions=3",
            "--streams=4",
            "--duration=90",
            "--warmup=10",
            "--jobs=1",
            "--no-progress",
            f"--out={tmp_path}",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| 1x (3 sessions) | 5 ms | 3 |" in out and "| 1x (3 sessions) | none | 3 |" in out
    data = json.loads((tmp_path / "replicas.json").read_text())
    rows = {(r["replicas"], r["sync_delay_s"]): r for r in data["sweeps"][0]["results"]}
    assert set(rows) == {(1, 0.005), (3, 0.005), (3, None)}
    assert rows[(3, 0.005)]["sync_bytes_per_request"] > 100
    assert rows[(3, None)]["sync_bytes_per_request"] == 0
    assert rows[(1, 0.005)]["sync_bytes_per_request"] == 0
    assert (tmp_path / "replicas.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
