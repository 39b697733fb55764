"""Long-prompt routing cost: route() p50/p99 for new and repeated prompts of 512 to 128k
tokens, as text and as token ids, on 64 nodes with 16-token blocks and a prefix index
pre-filled to its capacity of 1M entries (so new prompts also pay for eviction).

Run: ``python benches/long_prompts.py --label before`` with the old code installed, then
``python benches/long_prompts.py --label after`` with the new one, back to back (the
machine's load average is recorded with each): each label's figures are kept in
benches/results/long_prompts.json (other labels are left as they were) and the plot
benches/results/long_prompts.png shows them all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import llmlb_fast
from core_workload import time_routes
from llmlb_fast import Node, Router, RouterConfig

RESULTS = Path(__file__).resolve().parent / "results"
LENGTHS = (512, 8_192, 32_768, 131_072)  # prompt tokens
NODES = 64
CAPACITY = 1_000_000  # RouterConfig.prefix_cache_size default
TOKEN_BLOCK = 16  # RouterConfig.token_block_size default
CHARS_PER_TOKEN = 4  # RouterConfig.chars_per_token default: 64-byte text blocks
SYSTEM_PROMPTS = 16
SYSTEM_BLOCKS = 64

Route = Callable[[], Any]


def prefilled_router(rng: random.Random) -> Router:
    """64 nodes; the index filled to just under capacity by prompts of 32 to 4096 blocks
    (log-uniform) behind one of 16 shared system prompts, routed by the default policy."""
    router = Router(
        RouterConfig(prefix_cache_size=CAPACITY),
        [Node(f"node-{i}", f"http://127.0.0.1:{8000 + i}") for i in range(NODES)],
    )
    systems = [[rng.getrandbits(64) for _ in range(SYSTEM_BLOCKS)] for _ in range(SYSTEM_PROMPTS)]
    entries = SYSTEM_PROMPTS * SYSTEM_BLOCKS
    while True:
        tail = int(2 ** rng.uniform(5, 12))
        if entries + tail > CAPACITY * 0.99:
            break
        hashes = rng.choice(systems) + [rng.getrandbits(64) for _ in range(tail)]
        router.complete(router.route(block_hashes=hashes).request_id)
        entries += tail
    return router


def timed(router: Router, route: Route, calls: int) -> dict[str, float]:
    return {**time_routes(router, route, calls), "calls": calls}


def text_routes(router: Router, body: str) -> dict[str, Route]:
    counter = iter(range(10**9))

    def new() -> Any:
        # A different first block makes every block's chain hash new.
        return router.route(f"{next(counter):063d}\n" + body[64:])

    return {"new": new, "repeated": lambda: router.route(body)}


def token_routes(router: Router, ids: list[int], as_buffer: bool) -> dict[str, Route]:
    # Mutated in place before each call: building a 128k-element list is not timed.
    fresh: list[int] | array[int] = array("I", ids) if as_buffer else list(ids)
    repeated: list[int] | array[int] = array("I", ids) if as_buffer else list(ids)
    counter = iter(range(1 << 20, 1 << 31))

    def new() -> Any:
        fresh[0] = next(counter)
        return router.route(token_ids=fresh)

    return {"new": new, "repeated": lambda: router.route(token_ids=repeated)}


def calls_for(tokens: int, scale: float) -> int:
    return max(20, int(scale * min(2_000, 200 * 131_072 // tokens)))


def measure(lengths: tuple[int, ...], scale: float) -> dict[str, Any]:
    rng = random.Random(0)
    kinds = ["text", "token_list", "token_array"]
    figures: dict[str, Any] = {kind: {} for kind in kinds}
    for tokens in lengths:
        router = prefilled_router(rng)
        body = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(tokens * 4))
        ids = [rng.randrange(50_000) for _ in range(tokens)]
        calls = calls_for(tokens, scale)
        for kind in kinds:
            if kind == "text":
                routes = text_routes(router, body)
            else:
                routes = token_routes(router, ids, as_buffer=kind == "token_array")
            routes["repeated"]()  # the repeated prompt is in the index from here on
            figures[kind][tokens] = {case: timed(router, r, calls) for case, r in routes.items()}
            print(f"{tokens:>7} tokens {kind:<12} {figures[kind][tokens]}", flush=True)
        index: Any = router.stats()["prefix_index"]
        figures.setdefault("index_after", {})[tokens] = {
            k: index[k] for k in ("entries", "bytes_per_entry", "evicted")
        }
    return figures


def targets(figures: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, for every prompt kind measured."""
    out = {}
    for kind, by_length in figures.items():
        if kind == "index_after" or not {512, 32_768, 131_072} <= set(map(int, by_length)):
            continue
        fig = {int(k): v for k, v in by_length.items()}
        new_ratio = fig[32_768]["new"]["p50_us"] / fig[512]["new"]["p50_us"]
        repeated_ratio = fig[32_768]["repeated"]["p50_us"] / fig[512]["repeated"]["p50_us"]
        p99_128k = max(fig[131_072][case]["p99_us"] for case in ("new", "repeated"))
        out[kind] = {
            "new_32k_over_512_p50": round(new_ratio, 2),
            "new_32k_over_512_p50_met (<= 8)": new_ratio <= 8,
            "repeated_32k_over_512_p50": round(repeated_ratio, 2),
            "repeated_32k_over_512_p50_met (<= 4)": repeated_ratio <= 4,
            "p99_128k_us": round(p99_128k, 1),
            "p99_128k_met (<= 1000 us)": p99_128k <= 1000,
        }
    return out


KINDS = {
    "text": "text (4 chars/token)",
    "token_list": "token ids: list",
    "token_array": "token ids: array('I')",
}
CASES = {"new": ("-", "o"), "repeated": ("--", "s")}


def plot(runs: dict[str, Any], path: Path) -> None:
    """p50 (top row) and p99 (bottom row) against prompt length, one column per kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(KINDS), figsize=(13, 7.5), sharex=True, sharey="row")
    colors = {"before": "0.55", "after": "C0"}
    for col, (kind, title) in enumerate(KINDS.items()):
        for row, q in enumerate(("p50", "p99")):
            ax = axes[row][col]
            for label, run in runs.items():
                by_length = run["figures"].get(kind, {})
                lengths = sorted(int(t) for t in by_length)
                color = colors.get(label, "C3")
                for case, (line, marker) in CASES.items():
                    values = [by_length[str(t)][case][f"{q}_us"] for t in lengths]
                    style = {"marker": marker, "ms": 4, "color": color}
                    ax.plot(lengths, values, line, label=f"{label}, {case} prompt", **style)
            if q == "p99":
                ax.axhline(1000, color="C3", lw=0.8, ls=":", label="1 ms")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(LENGTHS, ["512", "8k", "32k", "128k"])
            ax.grid(True, which="both", alpha=0.2)
            ax.set_title(f"{title}: {q}", fontsize=10)
            if row == 1:
                ax.set_xlabel("prompt length (tokens)")
            if col == 0:
                ax.set_ylabel(f"route() {q} from Python (µs)")
    handles, labels = axes[1][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)
    fig.suptitle(
        "route() cost vs prompt length: 64 nodes, 16-token blocks, index full at 1M entries"
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True)
    return head.stdout.decode().strip() + (" + uncommitted changes" if dirty.stdout else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="e.g. before / after")
    parser.add_argument("--note", default="", help="what code the label measured")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies calls per case")
    parser.add_argument("--lengths", type=int, nargs="*", default=list(LENGTHS))
    parser.add_argument("--out", type=Path, default=RESULTS / "long_prompts.json")
    args = parser.parse_args()

    started = time.time()
    load_start = os.getloadavg()
    figures = json.loads(json.dumps(measure(tuple(args.lengths), args.scale)))  # str keys
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["command"] = (
        "python benches/long_prompts.py --label after; the 'before' label ran the same script "
        "with the parent commit installed in its own venv (git archive HEAD | tar -x -C "
        "/tmp/head; /tmp/head/.venv/bin/pip install /tmp/head)"
    )
    results["setup"] = {
        "nodes": NODES,
        "prefix_cache_size": CAPACITY,
        "prefill": f"to 99% of capacity: {SYSTEM_PROMPTS} shared {SYSTEM_BLOCKS}-block system "
        "prompts + 32..4096-block tails (log-uniform), as block_hashes",
        "blocks": f"{TOKEN_BLOCK} tokens, or {TOKEN_BLOCK * CHARS_PER_TOKEN} bytes of text",
        "new": "a different first block each call (every chain hash new)",
        "repeated": "the same prompt each call (already in the index)",
        "timed": "route() alone, from Python; complete() untimed",
    }
    results.setdefault("runs", {})[args.label] = {
        "note": args.note,
        "git": git_commit(),
        "module": llmlb_fast.__file__,
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "seconds": round(time.time() - started, 1),
        "figures": figures,
        "targets": targets(figures),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results["runs"], args.out.with_suffix(".png"))
    print(json.dumps(results["runs"][args.label]["targets"], indent=2))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
