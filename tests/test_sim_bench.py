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
