"""`llmlb demo`, the README's first command, on a shortened live scenario."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from llmlb_fast import POLICIES, demo
from llmlb_fast.cli import main


def child_processes() -> list[int]:
    """Processes whose parent is this one (Linux /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == os.getpid():
            children.append(int(entry.name))
    return children


def test_demo_prints_the_table_for_every_policy_and_one_explained_decision(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    short = {
        **demo.BENCH_SETTINGS,
        "--sessions": "2",
        "--streams": "3",
        "--output-tokens": "60",
        "--duration": "40",
        "--warmup": "5",
        "--dilation": "20",
        "--out": str(tmp_path),
    }
    args = ["--live", *(part for item in short.items() for part in item), "--no-plots"]
    monkeypatch.setattr(demo, "BENCH_ARGS", args)
    assert main(["demo", "--no-progress"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| metric"))
    assert header.split("|")[2:-1] == [f" {p} " for p in POLICIES]
    for metric in ("TTFT p50", "throughput (QPS)", "timeout rate", "KV-cache hit rate"):
        assert f"| {metric}" in out
    assert "Why the core made one decision" in out
    assert "reason prefix_hit" in out, "the explained request repeats a cached conversation"

    results = json.loads((tmp_path / "results.json").read_text())
    for policy in POLICIES:
        assert results["results"][policy]["qps"] > 0, policy
        assert results["live"][policy]["in_flight_after"] == 0, policy
    assert child_processes() == [], "a service process outlived the demo"


def test_demo_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    assert "simulated GPU cluster" in capsys.readouterr().out
