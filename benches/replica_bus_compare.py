"""Redis Streams (what the replicas use) against NATS core pub/sub for carrying replica
batches: client CPU per batch and delivery lag, with one publisher and two followers
(three replicas), batches of ``--batch-bytes`` at ``--rate`` per second.

Both servers run on loopback from PATH (Debian ``redis-server`` and ``nats-server``);
the clients are redis-py (threads, as ``llmlb_fast.replicas.redis_sync``) and nats-py
(asyncio). NATS core keeps no history: a replica that joins or reconnects could not
replay what it missed without JetStream, which the replicas' warm-up and resync need;
this measures only the live path.

Run: ``python benches/replica_bus_compare.py`` (needs ``pip install nats-py``; writes
benches/results/replica_bus_compare.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis
from llmlb_fast.sim.peer_routers import free_port
from llmlb_fast.sim.redis_server import RedisServer, find_redis_server

RESULTS = Path(__file__).resolve().parent / "results"
FOLLOWERS = 2


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def payload(size: int) -> bytes:
    return struct.pack("<d", time.time()) + b"x" * (size - 8)


def summary(cpu_s: float, lags: list[float], batches: int) -> dict[str, float]:
    return {
        "client_cpu_us_per_batch": cpu_s / batches * 1e6,
        "lag_p50_ms": percentile(lags, 50) * 1e3,
        "lag_p99_ms": percentile(lags, 99) * 1e3,
        "delivered_share": len(lags) / (batches * FOLLOWERS),
    }


def redis_streams(url: str, batches: int, size: int, rate: float) -> dict[str, float]:
    stream = "bench:batches"
    lags: list[float] = []
    lock = threading.Lock()
    done = threading.Event()

    def follow() -> None:
        client = redis.Redis.from_url(url)
        last, seen = "$", 0
        while seen < batches and not done.is_set():
            for _, items in client.xread({stream: last}, count=1000, block=200) or ():
                for entry_id, fields in items:
                    sent = struct.unpack("<d", fields[b"b"][:8])[0]
                    with lock:
                        lags.append(time.time() - sent)
                    last, seen = entry_id, seen + 1
        client.close()

    followers = [threading.Thread(target=follow) for _ in range(FOLLOWERS)]
    for thread in followers:
        thread.start()
    time.sleep(0.3)
    client = redis.Redis.from_url(url)
    cpu = time.process_time()
    started = time.perf_counter()
    for i in range(batches):
        time.sleep(max(0.0, started + i / rate - time.perf_counter()))
        client.xadd(stream, {"b": payload(size)}, maxlen=100_000, approximate=True)
    time.sleep(0.5)
    done.set()
    for thread in followers:
        thread.join()
    cpu = time.process_time() - cpu
    client.close()
    return summary(cpu, lags, batches)


async def nats_core(url: str, batches: int, size: int, rate: float) -> dict[str, float]:
    import nats

    lags: list[float] = []

    async def on_message(message: object) -> None:
        sent = struct.unpack("<d", message.data[:8])[0]  # type: ignore[attr-defined]
        lags.append(time.time() - sent)

    followers = [await nats.connect(url) for _ in range(FOLLOWERS)]
    for follower in followers:
        await follower.subscribe("bench.batches", cb=on_message)
        await follower.flush()
    publisher = await nats.connect(url)
    cpu = time.process_time()
    started = time.perf_counter()
    for i in range(batches):
        await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
        await publisher.publish("bench.batches", payload(size))
    await publisher.flush()
    await asyncio.sleep(0.5)
    cpu = time.process_time() - cpu
    for connection in (publisher, *followers):
        await connection.close()
    return summary(cpu, lags, batches)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=4000)
    parser.add_argument("--batch-bytes", type=int, default=3600, help="~3 requests' messages")
    parser.add_argument("--rate", type=float, default=200.0, help="batches per second")
    parser.add_argument("--out", default=str(RESULTS / "replica_bus_compare.json"))
    args = parser.parse_args()
    redis_binary, nats_binary = find_redis_server(), shutil.which("nats-server")
    if redis_binary is None or nats_binary is None:
        raise SystemExit("needs redis-server and nats-server on PATH (Debian packages)")
    report: dict[str, object] = {
        "command": "python benches/" + Path(__file__).name + " " + " ".join(sys.argv[1:]),
        "batches": args.batches,
        "batch_bytes": args.batch_bytes,
        "rate_per_s": args.rate,
        "followers": FOLLOWERS,
    }
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(redis_binary, Path(tmp))
        server.start()
        try:
            report["redis_streams"] = redis_streams(
                server.url, args.batches, args.batch_bytes, args.rate
            )
        finally:
            server.stop()
        port = free_port()
        nats_process = subprocess.Popen(
            [nats_binary, "-a", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)
            report["nats_core"] = asyncio.run(
                nats_core(f"nats://127.0.0.1:{port}", args.batches, args.batch_bytes, args.rate)
            )
        finally:
            nats_process.terminate()
            nats_process.wait(timeout=10)
    print(json.dumps(report, indent=2))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
