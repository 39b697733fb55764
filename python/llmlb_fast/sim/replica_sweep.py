"""``llmlb bench --replicas 1,2,4,8``: one workload routed by K active-active router
replicas behind a random splitter, with their decisions synchronised after
``--sync-delay`` seconds (``none``: replicas that share nothing), at each load multiple
of ``--load-sweep`` (default 1.0). Reported as a Markdown table with the change
against K = 1, JSON and a plot of TTFT p95 and KV hit rate against K.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The acceptance targets: at K = 4 with a 5 ms sync delay.
TARGET_REPLICAS = 4
TARGET_SYNC_DELAY_S = 0.005
TARGET_P95_RATIO = 1.10
TARGET_HIT_RATIO = 0.90

COLUMNS: list[tuple[str, str, str]] = [
    ("TTFT p50 (ms)", "ttft_p50_ms", "{:.0f}"),
    ("TTFT p95 (ms)", "ttft_p95_ms", "{:.0f}"),
    ("KV-cache hit rate", "kv_hit_rate", "{:.1%}"),
    ("timeout rate", "timeout_rate", "{:.2%}"),
    ("max/mean node requests", "max_over_mean_node_requests", "{:.3f}"),
    ("sync bytes/request", "sync_bytes_per_request", "{:.0f}"),
]


def parse_replicas(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--replicas {text!r}: expected counts like 1,2,4,8") from None
    if not counts or any(k < 1 for k in counts):
        raise ValueError(f"--replicas {text!r}: replica counts must be >= 1")
    return sorted(set(counts))


def parse_sync_delays(text: str) -> list[float | None]:
    """``"0.005,none"`` -> [0.005, None] (None: no sync)."""
    delays: list[float | None] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part == "none":
            delays.append(None)
            continue
        try:
            delay = float(part)
        except ValueError:
            raise ValueError(f"--sync-delay {part!r}: expected seconds or 'none'") from None
        if not (math.isfinite(delay) and delay >= 0):
            raise ValueError(f"--sync-delay {part!r}: must be >= 0")
        delays.append(delay)
    if not delays:
        raise ValueError("--sync-delay: give at least one delay")
    return list(dict.fromkeys(delays))


def sync_label(delay: float | None) -> str:
    return "none" if delay is None else f"{delay * 1e3:g} ms"


@dataclass(frozen=True)
class Point:
    factor: float
    sync_delay_s: float | None
    replicas: int


def points_of(factors: list[float], delays: list[float | None], counts: list[int]) -> list[Point]:
    """Every (load, sync, K); K = 1 once per load (a single router syncs with no one)."""
    points = []
    for factor in factors:
        if 1 in counts:
            points.append(Point(factor, delays[0], 1))
        points.extend(Point(factor, d, k) for d in delays for k in counts if k > 1)
    return points


@dataclass
class ReplicaSweep:
    workload: str
    policy: str
    factors: list[float]
    loads: dict[float, str]
    summaries: dict[Point, dict[str, float]]

    def baseline(self, point: Point) -> dict[str, float] | None:
        for other, summary in self.summaries.items():
            if other.factor == point.factor and other.replicas == 1:
                return summary
        return None

    def ratio(self, point: Point, key: str) -> float:
        base = self.baseline(point)
        if base is None or not base[key]:
            return math.nan
        return self.summaries[point][key] / base[key]

    def table(self) -> str:
        lines = [
            "| load | sync | K | " + " | ".join(label for label, _, _ in COLUMNS) + " |",
            "|---" * (len(COLUMNS) + 3) + "|",
        ]
        for point, row in self.summaries.items():
            cells = []
            for _, key, fmt in COLUMNS:
                value = row.get(key, math.nan)
                cell = "n/a" if math.isnan(value) else fmt.format(value)
                if key in ("ttft_p95_ms", "kv_hit_rate") and point.replicas > 1:
                    change = self.ratio(point, key)
                    if not math.isnan(change):
                        cell += f" (x{change:.2f})"
                cells.append(cell)
            sync = "-" if point.replicas == 1 else sync_label(point.sync_delay_s)
            load = f"{point.factor:g}x ({self.loads[point.factor]})"
            lines.append(f"| {load} | {sync} | {point.replicas} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def verdict(self) -> list[dict[str, Any]]:
        found = []
        for point in self.summaries:
            if point.replicas == TARGET_REPLICAS and point.sync_delay_s == TARGET_SYNC_DELAY_S:
                p95 = self.ratio(point, "ttft_p95_ms")
                hit = self.ratio(point, "kv_hit_rate")
                found.append(
                    {
                        "factor": point.factor,
                        "p95_ratio": p95,
                        "hit_ratio": hit,
                        "met": p95 <= TARGET_P95_RATIO and hit >= TARGET_HIT_RATIO,
                    }
                )
        return found

    def verdict_lines(self) -> list[str]:
        return [
            f"- {self.policy} at K = {TARGET_REPLICAS}, sync {sync_label(TARGET_SYNC_DELAY_S)},"
            f" {v['factor']:g}x load: TTFT p95 x{v['p95_ratio']:.2f} of K = 1 (target <= "
            f"x{TARGET_P95_RATIO:g}), KV hit x{v['hit_ratio']:.2f} (target >= "
            f"x{TARGET_HIT_RATIO:g}): {'met' if v['met'] else 'not met'}"
            for v in self.verdict()
        ]

    def markdown(self) -> str:
        verdict = "\n".join(self.verdict_lines())
        return f"### {self.workload}, policy {self.policy}\n\n{self.table()}\n\n{verdict}\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "policy": self.policy,
            "loads": {f"{f:g}": load for f, load in self.loads.items()},
            "results": [
                {
                    "factor": p.factor,
                    "replicas": p.replicas,
                    "sync_delay_s": p.sync_delay_s,
                    **row,
                }
                for p, row in self.summaries.items()
            ],
            "verdict": self.verdict(),
        }

    def series(self) -> dict[str, list[tuple[int, float, float]]]:
        """(K, TTFT p95, KV hit) per load and sync, K = 1 in every line of its load."""
        lines: dict[str, list[tuple[int, float, float]]] = {}
        for point, row in self.summaries.items():
            if point.replicas == 1:
                continue
            label = f"{point.factor:g}x load, sync {sync_label(point.sync_delay_s)}"
            line = lines.setdefault(label, [])
            base = self.baseline(point)
            if not line and base is not None:
                line.append((1, base["ttft_p95_ms"], base["kv_hit_rate"]))
            line.append((point.replicas, row["ttft_p95_ms"], row["kv_hit_rate"]))
        return lines


def write_sweeps(
    sweeps: list[ReplicaSweep], out: Path, meta: dict[str, Any], plots: bool
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    table, data = out / "replicas.md", out / "replicas.json"
    body = "\n".join(s.markdown() for s in sweeps)
    table.write_text(f"Command: `{meta['command']}`\n\n{body}")
    payload = {**meta, "sweeps": [s.to_json() for s in sweeps]}
    data.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    written = [table, data]
    if plots:
        written.append(plot_replicas(sweeps, out / "replicas.png"))
    return written


def plot_replicas(sweeps: list[ReplicaSweep], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    plain = FuncFormatter(lambda value, _: f"{value:g}")

    fig, axes = plt.subplots(len(sweeps), 2, figsize=(11, 3.6 * len(sweeps)), squeeze=False)
    for row, sweep in enumerate(sweeps):
        p95_ax, hit_ax = axes[row]
        for label, line in sweep.series().items():
            ks = [k for k, _, _ in line]
            dashed = "--" if label.endswith("none") else "-"
            p95_ax.plot(ks, [p / 1e3 for _, p, _ in line], dashed, marker="o", label=label)
            hit_ax.plot(ks, [h * 100 for _, _, h in line], dashed, marker="o", label=label)
        counts = sorted({k for line in sweep.series().values() for k, _, _ in line})
        for ax in (p95_ax, hit_ax):
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_locator(FixedLocator(counts))
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlabel("router replicas K")
            ax.grid(True, alpha=0.3)
        p95_ax.set_yscale("log")
        p95_ax.yaxis.set_major_formatter(plain)
        p95s = [p for line in sweep.series().values() for _, p, _ in line if p > 0]
        if p95s and max(p95s) < 10 * min(p95s):  # within a decade: label the minor ticks
            p95_ax.yaxis.set_minor_formatter(plain)
        p95_ax.set_ylabel("TTFT p95 (s, log scale)")
        hit_ax.set_ylabel("KV-cache hit rate (%)")
        p95_ax.set_title(f"{sweep.workload}: TTFT p95 ({sweep.policy})")
        hit_ax.set_title(f"{sweep.workload}: KV-cache hit rate ({sweep.policy})")
        hit_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
