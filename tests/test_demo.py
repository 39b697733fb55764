"""`llmlb demo`, the README's first command, on a shortened scenario."""

from __future__ import annotations

import pytest
from llmlb_fast import POLICIES, demo
from llmlb_fast.cli import main


def test_demo_prints_the_table_for_every_policy_and_one_explained_decision(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    short = {**demo.BENCH_SETTINGS, "--duration": "60", "--warmup": "10", "--jobs": "1"}
    monkeypatch.setattr(demo, "BENCH_ARGS", [p for item in short.items() for p in item])
    assert main(["demo", "--no-progress"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| metric"))
    assert header.split("|")[2:-1] == [f" {p} " for p in POLICIES]
    for metric in ("TTFT p50", "throughput (QPS)", "timeout rate", "KV-cache hit rate"):
        assert f"| {metric}" in out
    assert "Why the core made one decision" in out
    assert "reason prefix_hit" in out, "the explained request repeats a cached conversation"


def test_demo_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    assert "simulated GPU cluster" in capsys.readouterr().out
