"""Routing-core report: route() latency at 8/64/512 nodes with a 100k-entry prefix index,
the same workload through the pure-Python model (tests/model.py) for the speed-up,
throughput with 1, 2 and 4 Python threads, memory per prefix entry, and memory per block
credited from engine KV events (index entry plus the engine-hash map).

Run: ``python benches/core_report.py`` (writes benches/results/core.json and core.png);
``--only kv_memory`` reruns one section into the existing file.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(ROOT.parent / "tests")]

import model  # noqa: E402  (the tests' pure-Python oracle)
from core_workload import build, percentile, random_text, time_routes  # noqa: E402
from llmlb_fast import Node, Router, RouterConfig  # noqa: E402

RESULTS = ROOT / "results"


def route_latency_us(router: Router, queries: list[str], calls: int) -> dict[str, float]:
    """Times route() alone (completion outside the timed region)."""
    prompts = itertools.cycle(queries)
    return time_routes(router, lambda: router.route(next(prompts)), calls)


def model_latency_us(nodes: int, queries: list[str], prefilled: int, calls: int) -> float:
    """p50 of the same decision (route + commit + complete) in the pure-Python model."""
    router_model = model.RouterModel(model.Config(policy="llmlb"))
    for i in range(nodes):
        router_model.upsert(model.NodeModel(f"node-{i}"))
    for i, prompt in enumerate(queries[:prefilled]):
        decision = router_model.decide(None, text=prompt)
        router_model.commit(decision, f"warm-{i}", decision.index)
        router_model.complete(f"warm-{i}", "ok")
    samples = []
    for i, prompt in enumerate(itertools.islice(itertools.cycle(queries), calls)):
        started = time.perf_counter_ns()
        decision = router_model.decide(None, text=prompt)
        router_model.commit(decision, f"r-{i}", decision.index)
        samples.append((time.perf_counter_ns() - started) / 1000)
        router_model.complete(f"r-{i}", "ok")
    return percentile(samples, 0.50)


def throughput(router: Router, queries: list[str], threads: int, seconds: float) -> float:
    """route()+complete() per second summed over `threads` Python threads."""
    done = [0] * threads
    stop = threading.Event()

    def worker(slot: int) -> None:
        prompts = itertools.cycle(queries[slot::threads])
        while not stop.is_set():
            for _ in range(100):
                router.complete(router.route(next(prompts)).request_id)
            done[slot] += 100

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    return sum(done) / (time.perf_counter() - started)


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def memory_per_entry(entries: int) -> dict[str, float]:
    """Index bytes per entry as the index counts them, and as the process RSS grows."""
    import random

    rng = random.Random(1)
    router = Router(RouterConfig(prefix_cache_size=entries * 2), [Node("a"), Node("b")])
    prompts = [random_text(rng, 50) for _ in range(entries // 50)]
    before = rss_bytes()
    for prompt in prompts:
        router.complete(router.route(prompt).request_id)
    grown = rss_bytes() - before
    index: dict[str, Any] = router.stats()["prefix_index"]  # type: ignore[assignment]
    return {
        "entries": index["entries"],
        "index_bytes_per_entry": index["bytes_per_entry"],
        "rss_bytes_per_entry": grown / index["entries"],
    }


def memory_per_event_block(blocks: int, blocks_per_event: int = 64) -> dict[str, float]:
    """Bytes per block a node's KV events credit: the index entry and the node's
    engine-hash map entry (as they count themselves), and the process RSS growth."""
    from array import array

    router = Router(RouterConfig(prefix_cache_size=blocks * 2), [Node("a")])
    router.set_kv_events_state("a", "live")
    tokens_per_event = 16 * blocks_per_event
    before = rss_bytes()
    for event in range(blocks // blocks_per_event):
        tokens = array("I", os.urandom(4 * tokens_per_event))
        first = event * blocks_per_event
        hashes = range(first, first + blocks_per_event)
        router.kv_blocks_stored("a", hashes, None, tokens)
    grown = rss_bytes() - before
    index: dict[str, Any] = router.stats()["prefix_index"]  # type: ignore[assignment]
    engine_blocks = router.nodes()[0].kv_engine_blocks
    index_bytes = index["bytes"] / index["entries"]
    engine_bytes = index["engine_map_bytes"] / engine_blocks
    return {
        "blocks": engine_blocks,
        "index_entries": index["entries"],
        "index_bytes_per_block": index_bytes,
        "engine_map_bytes_per_block": engine_bytes,
        "bytes_per_block": index_bytes + engine_bytes,
        "rss_bytes_per_block": grown / engine_blocks,
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    latency = results["route_latency"]
    nodes = [str(n) for n in latency]
    for q, color in (("p50", "C0"), ("p99", "C1")):
        labels = [f"{n}\n{q}" for n in nodes]
        left.bar(labels, [latency[n][f"{q}_us"] for n in latency], color=color, label=q)
    left.set_xlabel("nodes")
    left.legend()
    left.set_ylabel("route() latency (µs)")
    left.set_title("route() from Python, 100k prefix entries")
    rates = results["throughput_per_s"]
    right.plot([int(t) for t in rates], list(rates.values()), marker="o")
    right.set_xlabel("Python threads")
    right.set_ylabel("route+complete per second")
    right.set_title("throughput, 64 nodes")
    right.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="timed route() calls per size")
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput run")
    parser.add_argument("--out", type=Path, default=RESULTS / "core.json")
    parser.add_argument(
        "--only",
        choices=["kv_memory"],
        help="rerun one section and merge it into the existing --out file",
    )
    args = parser.parse_args()
    if args.only == "kv_memory":
        results = json.loads(args.out.read_text())
        results["kv_events_memory"] = memory_per_event_block(1_000_000)
        print(f"kv events memory: {results['kv_events_memory']}")
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        return 0

    results: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
    }
    results["route_latency"] = {}
    for nodes in (8, 64, 512):
        workload = build(nodes)
        results["route_latency"][nodes] = route_latency_us(
            workload.router, workload.queries, args.calls
        )
        print(f"{nodes:4} nodes: route() {results['route_latency'][nodes]}", flush=True)
        if nodes == 64:
            results["throughput_per_s"] = {
                t: throughput(workload.router, workload.queries, t, args.seconds) for t in (1, 2, 4)
            }
            print(f"throughput: {results['throughput_per_s']}", flush=True)
            model_p50 = model_latency_us(64, workload.queries, 500, 2_000)
            results["python_model_p50_us_64_nodes"] = model_p50
            results["speedup_vs_python_model"] = model_p50 / results["route_latency"][64]["p50_us"]
            print(f"pure-Python model p50 {model_p50:.1f} µs", flush=True)
    results["memory"] = memory_per_entry(500_000)
    print(f"memory: {results['memory']}")
    results["kv_events_memory"] = memory_per_event_block(1_000_000)
    print(f"kv events memory: {results['kv_events_memory']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
