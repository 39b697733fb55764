"""The overload sweep of ``llmlb bench --load-sweep``: every policy at several multiples
of the calibrated load, per engine mode, reported as a Markdown table, JSON and a plot
of TTFT p95 against the load multiple.

A load multiple scales what sets the offered load: the chat workload's sessions
(rounded) or ``--rate``, the trace's arrival rate (``--speedup``) or its closed-loop
``--concurrency``, the uniform workload's ``--rate`` or concurrency.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmlb_fast.sim.profiles import ENGINE_MODES

TARGET_POLICY = "llmlb"
TARGET_RATIO = 2.0
"""Target: llmlb's TTFT p95 at the highest load at most this multiple of its p95 at 1.0x."""

# Column label, summary key, format.
COLUMNS: list[tuple[str, str, str]] = [
    ("TTFT p95 (ms)", "ttft_p95_ms", "{:.0f}"),
    ("TTFT p50 (ms)", "ttft_p50_ms", "{:.0f}"),
    ("timeout rate", "timeout_rate", "{:.2%}"),
    ("KV-cache hit rate", "kv_hit_rate", "{:.1%}"),
]


def parse_factors(text: str) -> list[float]:
    try:
        factors = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--load-sweep {text!r}: expected numbers like 0.8,1.0,1.5") from None
    if not factors or any(not (math.isfinite(f) and f > 0) for f in factors):
        raise ValueError(f"--load-sweep {text!r}: load multiples must be > 0")
    return sorted(set(factors))


def parse_modes(text: str) -> list[str]:
    modes = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [m for m in modes if m not in ENGINE_MODES]
    if unknown or not modes:
        raise ValueError(f"--engine-modes {text!r}: known modes are {', '.join(ENGINE_MODES)}")
    return list(dict.fromkeys(modes))


def scale_load(args: dict[str, Any], factor: float) -> dict[str, Any]:
    """The bench arguments with the offered load multiplied by ``factor``."""
    scaled = dict(args)
    kind = args["workload"]
    if args["rate"] is not None and kind != "trace":
        scaled["rate"] = args["rate"] * factor
    elif kind == "chat":
        scaled["sessions"] = max(1, round(args["sessions"] * factor))
    elif args["concurrency"] is not None:
        scaled["concurrency"] = max(1, round(args["concurrency"] * factor))
    elif kind == "trace":
        scaled["speedup"] = args["speedup"] * factor
    else:  # uniform, closed loop at its default concurrency
        scaled["concurrency"] = max(1, round(args["sessions"] * args["streams"] * factor))
    return scaled


def describe_load(args: dict[str, Any]) -> str:
    """What the load is at one point, in the workload's own terms."""
    kind = args["workload"]
    if args["rate"] is not None and kind != "trace":
        return f"{args['rate']:g}/s"
    if kind == "chat":
        return f"{args['sessions']} sessions"
    if args["concurrency"] is not None:
        return f"{args['concurrency']} streams"
    if kind == "trace":
        return f"speedup {args['speedup']:g}"
    return "?"


@dataclass
class LoadSweep:
    """Summaries of every run: ``summaries[mode][factor][policy]``."""

    workload: str
    policies: list[str]
    factors: list[float]
    modes: list[str]
    loads: dict[float, str]
    summaries: dict[str, dict[float, dict[str, dict[str, float]]]]

    def p95(self, mode: str, factor: float, policy: str) -> float:
        return self.summaries[mode][factor][policy]["ttft_p95_ms"]

    def verdict(self, mode: str) -> dict[str, Any]:
        """Whether llmlb has the lowest TTFT p95 at every load, and how its p95 grows."""
        if TARGET_POLICY not in self.policies:
            return {}
        not_lowest = [self._best_other(mode, f) for f in self.factors if not self._lowest(mode, f)]
        top = self.factors[-1]
        ratio = (
            self.p95(mode, top, TARGET_POLICY) / self.p95(mode, 1.0, TARGET_POLICY)
            if 1.0 in self.factors and top > 1.0
            else math.nan
        )
        return {
            "lowest_p95_everywhere": not not_lowest,
            "not_lowest_at": not_lowest,
            "p95_ratio": ratio,
            "p95_ratio_between": [top, 1.0],
        }

    def _lowest(self, mode: str, factor: float) -> bool:
        own = self.p95(mode, factor, TARGET_POLICY)
        others = [self.p95(mode, factor, p) for p in self.policies if p != TARGET_POLICY]
        return not math.isnan(own) and all(math.isnan(o) or own <= o for o in others)

    def _best_other(self, mode: str, factor: float) -> dict[str, Any]:
        others = {p: self.p95(mode, factor, p) for p in self.policies if p != TARGET_POLICY}
        best = min(others, key=lambda p: others[p])
        return {
            "factor": factor,
            "best": best,
            "best_p95_ms": others[best],
            "own_p95_ms": self.p95(mode, factor, TARGET_POLICY),
        }

    def verdict_lines(self, mode: str) -> list[str]:
        v = self.verdict(mode)
        if not v:
            return []
        misses = [
            f"{m['factor']:g}x: {m['best']} {m['best_p95_ms']:.1f} ms against "
            f"{m['own_p95_ms']:.1f} ms"
            for m in v["not_lowest_at"]
        ]
        lowest = "yes" if not misses else "no (" + "; ".join(misses) + ")"
        top, base = v["p95_ratio_between"]
        ratio = v["p95_ratio"]
        ratio_text = (
            "n/a (needs 1.0 and a higher multiple)"
            if math.isnan(ratio)
            else f"{ratio:.2f} ({'met' if ratio <= TARGET_RATIO else 'not met'}, "
            f"target <= {TARGET_RATIO:g})"
        )
        return [
            f"- {TARGET_POLICY} has the lowest TTFT p95 at every load: {lowest}",
            f"- {TARGET_POLICY} TTFT p95 at {top:g}x / at {base:g}x: {ratio_text}",
        ]

    def table(self, mode: str) -> str:
        lines = [
            "| load | policy | " + " | ".join(label for label, _, _ in COLUMNS) + " |",
            "|---" * (len(COLUMNS) + 2) + "|",
        ]
        for f in self.factors:
            for p in self.policies:
                row = self.summaries[mode][f][p]
                cells = [
                    "n/a" if math.isnan(row[key]) else fmt.format(row[key])
                    for _, key, fmt in COLUMNS
                ]
                load = f"{f:g}x ({self.loads[f]})"
                lines.append(f"| {load} | {p} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def title(self, mode: str) -> str:
        return f"{self.workload}, engine mode {mode}"

    def markdown(self) -> str:
        parts = []
        for mode in self.modes:
            parts.append(f"### {self.title(mode)}\n\n{self.table(mode)}\n")
            verdict = self.verdict_lines(mode)
            if verdict:
                parts.append("\n".join(verdict) + "\n")
        return "\n".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "policies": self.policies,
            "factors": self.factors,
            "engine_modes": self.modes,
            "loads": {f"{f:g}": load for f, load in self.loads.items()},
            "results": {
                mode: {f"{f:g}": by_policy for f, by_policy in by_factor.items()}
                for mode, by_factor in self.summaries.items()
            },
            "verdict": {mode: self.verdict(mode) for mode in self.modes},
        }

    def write(self, out: Path, meta: dict[str, Any], plots: bool) -> list[Path]:
        out.mkdir(parents=True, exist_ok=True)
        table, data = out / "sweep.md", out / "sweep.json"
        table.write_text(f"Command: `{meta['command']}`\n\n{self.markdown()}")
        payload = {**meta, **self.to_json()}
        data.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        written = [table, data]
        if plots:
            from llmlb_fast.sim.plots import plot_load_sweep

            series = {
                self.title(mode): {
                    p: [(f, self.p95(mode, f, p)) for f in self.factors] for p in self.policies
                }
                for mode in self.modes
            }
            written.append(plot_load_sweep(series, out / "sweep_ttft_p95.png"))
        return written
