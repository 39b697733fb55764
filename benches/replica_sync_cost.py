"""What active-active sync costs a replica: the hot-path add-on to ``route()``, CPU to
encode and apply a decision, and the whole path through a real redis-server on loopback
(lag from one replica's ``route()`` to the other's core, Redis bytes and XADDs, process
CPU per request).

Each request is a chat turn: a ``--prompt-tokens`` prompt sharing a 1,000-token system
prompt per session, routed on replica A, its first token and its completion reported;
replica B applies A's batches. Both replicas run in this process (threads of the
Redis link), so the end-to-end CPU figure covers sending and applying.

Run: ``python benches/replica_sync_cost.py`` (needs redis-server on PATH; writes
benches/results/replica_sync_cost.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from llmlb_fast import Node, Router, RouterConfig
from llmlb_fast.replicas import ReplicaSync
from llmlb_fast.replicas.redis_sync import RedisReplicaLink, RedisSyncSettings
from llmlb_fast.sim.redis_server import RedisServer, find_redis_server
from tqdm import tqdm

RESULTS = Path(__file__).resolve().parent / "results"
NODES = 8


def prompts(count: int, prompt_tokens: int, seed: int = 1) -> list[list[int]]:
    rng = random.Random(seed)
    systems = [[rng.randrange(50_000) for _ in range(1000)] for _ in range(16)]
    return [
        systems[i % 16] + [rng.randrange(50_000) for _ in range(prompt_tokens - 1000)]
        for i in range(count)
    ]


def router() -> Router:
    nodes = [Node(f"n{i}", f"10.0.0.{i}:8000", kv_capacity_tokens=2_000_000) for i in range(NODES)]
    return Router(RouterConfig(), nodes)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def hot_path(work: list[list[int]]) -> dict[str, float]:
    """route() alone against route() + ReplicaSync.routed() (what the service adds)."""
    figures = {}
    for label, share in (("route_only", False), ("route_and_share", True)):
        core = router()
        sync = ReplicaSync(core, "a")
        samples = []
        for i, tokens in enumerate(work):
            started = time.perf_counter()
            decision = core.route(token_ids=tokens, request_id=f"q{i}", expected_output_tokens=200)
            if share:
                sync.routed(decision)
            samples.append(time.perf_counter() - started)
            core.complete(f"q{i}", "ok")
            if share:
                sync.ended(f"q{i}")
                if i % 64 == 0:
                    sync.take_batch()
        figures[f"{label}_p50_us"] = percentile(samples, 50) * 1e6
        figures[f"{label}_p99_us"] = percentile(samples, 99) * 1e6
    figures["added_p50_us"] = figures["route_and_share_p50_us"] - figures["route_only_p50_us"]
    return figures


def lifecycle(core: Router, sync: ReplicaSync, request_id: str, tokens: list[int]) -> None:
    """One request routed, its first token, its completion, each queued for the peers."""
    sync.routed(core.route(token_ids=tokens, request_id=request_id))
    sync.first_token(request_id)
    core.complete(request_id, "ok")
    sync.ended(request_id)


def encode_apply(work: list[list[int]]) -> dict[str, float]:
    """CPU to encode one decision (+ its first token and completion) and to apply it."""
    sender, receiver = router(), router()
    sync_a, sync_b = ReplicaSync(sender, "a"), ReplicaSync(receiver, "b")
    payloads = []
    for i, tokens in enumerate(work):
        lifecycle(sender, sync_a, f"q{i}", tokens)
    warm = sync_a.take_batch()  # the index is warm now; these bytes are not counted
    assert warm is not None and sync_b.apply(warm)
    started = time.process_time()
    # The same prompts again, encoded 8 requests per batch.
    for i, tokens in enumerate(work):
        lifecycle(sender, sync_a, f"r{i}", tokens)
        if i % 8 == 7:
            payload = sync_a.take_batch()
            assert payload is not None
            payloads.append(payload)
    encode_s = time.process_time() - started
    started = time.process_time()
    for payload in payloads:
        sync_b.apply(payload)
    apply_s = time.process_time() - started
    assert receiver.remote_in_flight_total == 0
    total = sum(len(p) for p in payloads)
    return {
        "route_queue_encode_us_per_request": encode_s / len(work) * 1e6,
        "apply_us_per_request": apply_s / len(work) * 1e6,
        "bytes_per_request": total / len(work),
    }


def through_redis(
    work: list[list[int]], rates: list[float], intervals: list[float]
) -> list[dict[str, float]]:
    binary = find_redis_server()
    if binary is None:
        raise SystemExit("redis-server not found on PATH (apt install redis-server)")
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(binary, Path(tmp))
        redis.start()
        try:
            return [
                {"batch_interval_s": interval, **_through(redis, work, rate, interval)}
                for rate in rates
                for interval in intervals
            ]
        finally:
            redis.stop()


def play(work: list[list[int]], rate: float, core: Router, sync: ReplicaSync | None) -> float:
    """Routes ``work`` at ``rate`` on ``core``, each request ending 64 arrivals later;
    returns the process CPU seconds it took."""
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    interval = 1.0 / rate
    in_flight: list[str] = []
    label = "with sync" if sync is not None else "without sync"
    for i, tokens in enumerate(tqdm(work, desc=f"through redis, {label}", unit="req")):
        time.sleep(max(0.0, wall_started + i * interval - time.perf_counter()))
        decision = core.route(token_ids=tokens, request_id=f"q{i}")
        if sync is not None:
            sync.routed(decision)
        in_flight.append(f"q{i}")
        if len(in_flight) > 64:
            done = in_flight.pop(0)
            core.complete(done, "ok")
            if sync is not None:
                sync.ended(done)
    for done in in_flight:
        core.complete(done, "ok")
        if sync is not None:
            sync.ended(done)
    return time.process_time() - cpu_started


def _through(
    redis: RedisServer, work: list[list[int]], rate: float, interval: float
) -> dict[str, float]:
    baseline_cpu = play(work, rate, router(), None)
    settings = RedisSyncSettings(url=redis.url, warmup_timeout_s=2.0, batch_interval_s=interval)
    cores = [router(), router()]
    syncs = [ReplicaSync(c, name, clock=time.time) for c, name in zip(cores, "ab", strict=True)]
    links = [RedisReplicaLink(s, settings) for s in syncs]
    for link in links:
        link.start()
    for link in links:
        link.warm.wait(5)
    before = redis.info("all")
    lags: list[float] = []
    lag_watch = threading.Event()

    def watch_lag() -> None:
        while not lag_watch.wait(0.01):
            lags.append(syncs[1].counters.last_lag_s)

    watcher = threading.Thread(target=watch_lag)
    watcher.start()
    cpu = play(work, rate, cores[0], syncs[0])
    deadline = time.monotonic() + 5
    while cores[1].remote_in_flight_total and time.monotonic() < deadline:
        time.sleep(0.01)
    lag_watch.set()
    watcher.join()
    after = redis.info("all")
    for link in links:
        link.stop()
    n = len(work)
    xadd = after["cmdstat_xadd"]["calls"] - before.get("cmdstat_xadd", {"calls": 0})["calls"]
    return {
        "requests": n,
        "rate_per_s": rate,
        "redis_bytes_in_per_request": (
            after["total_net_input_bytes"] - before["total_net_input_bytes"]
        )
        / n,
        "redis_bytes_out_per_request": (
            after["total_net_output_bytes"] - before["total_net_output_bytes"]
        )
        / n,
        "xadd_per_request": xadd / n,
        "process_cpu_us_per_request": cpu / n * 1e6,
        "process_cpu_us_per_request_without_sync": baseline_cpu / n * 1e6,
        "added_cpu_us_per_request": (cpu - baseline_cpu) / n * 1e6,
        "lag_p50_ms": percentile(lags, 50) * 1e3,
        "lag_p99_ms": percentile(lags, 99) * 1e3,
        "remote_in_flight_left": cores[1].remote_in_flight_total,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--prompt-tokens", type=int, default=2048)
    parser.add_argument(
        "--rates", default="200,1000", help="requests/s through Redis (comma-separated)"
    )
    parser.add_argument(
        "--batch-intervals",
        default="0.005,0.02",
        help="replicas.batch_interval values to compare (seconds, comma-separated)",
    )
    parser.add_argument("--out", default=str(RESULTS / "replica_sync_cost.json"))
    args = parser.parse_args()
    work = prompts(args.requests, args.prompt_tokens)
    report = {
        "command": "python benches/" + Path(__file__).name + " " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "prompt_tokens": args.prompt_tokens,
        "nodes": NODES,
        "hot_path": hot_path(work[:5000]),
        "encode_apply": encode_apply(work[:5000]),
        "through_redis": through_redis(
            work,
            [float(r) for r in args.rates.split(",")],
            [float(i) for i in args.batch_intervals.split(",")],
        ),
    }
    print(json.dumps(report, indent=2))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
