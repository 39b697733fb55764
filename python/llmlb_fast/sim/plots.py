"""PNG plots of benchmark runs (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from llmlb_fast.sim.des import RunResult


def plot_ttft_cdf(results: Sequence[RunResult], path: Path) -> Path:
    """Cumulative distribution of time to first token, one line per policy."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for result in results:
        ttfts = sorted(
            r.ttft_s
            for r in result.requests
            if r.outcome == "ok" and r.ttft_s is not None and r.arrival_s >= result.warmup_s
        )
        if not ttfts:
            continue
        n = len(ttfts)
        ax.plot(ttfts, [(i + 1) / n for i in range(n)], label=result.policy)
    ax.set_xscale("log")
    ax.set_xlabel("time to first token (s, log scale)")
    ax.set_ylabel("share of completed requests")
    ax.set_title("TTFT CDF")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_load(results: Sequence[RunResult], path: Path) -> Path:
    """Requests on each node (running + waiting) over time, one panel per policy."""
    fig, axes = plt.subplots(
        len(results), 1, figsize=(8, 2.2 * len(results)), sharex=True, squeeze=False
    )
    for ax, result in zip(axes[:, 0], results, strict=True):
        for node, node_id in enumerate(result.node_ids):
            points = [s for s in result.samples if s.node == node]
            ax.plot(
                [s.time_s / 60 for s in points],
                [s.running + s.waiting for s in points],
                linewidth=0.8,
                label=node_id,
            )
        ax.set_ylabel("requests")
        ax.set_title(result.policy, fontsize=9, loc="left")
        ax.grid(True, alpha=0.3)
    axes[-1, 0].set_xlabel("simulated time (min)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_load_sweep(series: dict[str, dict[str, list[tuple[float, float]]]], path: Path) -> Path:
    """TTFT p95 against the load multiple, one line per policy, one panel per title."""
    fig, axes = plt.subplots(
        1, len(series), figsize=(6.5 * len(series), 4.5), squeeze=False, sharey=True
    )
    for ax, (title, by_policy) in zip(axes[0], series.items(), strict=True):
        for policy, points in by_policy.items():
            shown = [(f, p95) for f, p95 in points if p95 == p95 and p95 > 0]  # NaN: none done
            ax.plot([f for f, _ in shown], [p95 for _, p95 in shown], marker="o", label=policy)
        ax.set_yscale("log")
        ax.set_xlabel("load (multiple of the calibrated load)")
        ax.set_title(f"TTFT p95 vs load: {title}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("TTFT p95 (ms, log scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
