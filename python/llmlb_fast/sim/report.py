"""The benchmark report: the article's table (Markdown) with the change against a
baseline policy, the numbers (JSON) and the plots, shared by the discrete-event and the
live mode of ``llmlb bench``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from llmlb_fast.sim.des import RunResult

# Row label, summary key, "higher is better", format.
COLUMNS: list[tuple[str, str, bool, str]] = [
    ("TTFT p50 (ms)", "ttft_p50_ms", False, "{:.0f}"),
    ("TTFT p95 (ms)", "ttft_p95_ms", False, "{:.0f}"),
    ("throughput (QPS)", "qps", True, "{:.2f}"),
    ("output tokens/s", "output_tokens_per_s", True, "{:.0f}"),
    ("GPU memory util", "gpu_memory_util", True, "{:.1%}"),
    ("timeout rate", "timeout_rate", False, "{:.2%}"),
    ("KV-cache hit rate", "kv_hit_rate", True, "{:.1%}"),
]


def change(value: float, base: float) -> float:
    if base == 0 or math.isnan(base) or math.isnan(value):
        return math.nan
    return (value - base) / base


def format_table(summaries: dict[str, dict[str, float]], baseline: str | None) -> str:
    policies = list(summaries)
    header = "| metric | " + " | ".join(policies) + " |"
    lines = [header, "|---" * (len(policies) + 1) + "|"]
    for label, key, _higher, fmt in COLUMNS:
        cells = []
        for p in policies:
            value = summaries[p][key]
            cell = "n/a" if math.isnan(value) else fmt.format(value)
            if baseline and p != baseline:
                delta = change(value, summaries[baseline][key])
                if not math.isnan(delta):
                    cell += f" ({delta:+.1%})"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(
    out: Path,
    results: list[RunResult],
    summaries: dict[str, dict[str, float]],
    meta: dict[str, Any],
    table: str,
    plots: bool,
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "table.md", out / "results.json"]
    (out / "table.md").write_text(f"Command: `{meta['command']}`\n\n{table}\n")
    payload = {
        **meta,
        "results": summaries,
        "wall_s": {r.policy: round(r.wall_s, 2) for r in results},
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    if plots:
        from llmlb_fast.sim.plots import plot_load, plot_ttft_cdf

        written.append(plot_ttft_cdf(results, out / "ttft_cdf.png"))
        written.append(plot_load(results, out / "node_load.png"))
    return written
