"""Route+Complete round trips over loopback gRPC against a real ``llmlb serve`` process.

    python benches/bench_grpc.py [--seconds 5] [--concurrency 1 8 64] [--nodes 8]
                                 [--variants unary stream] [--client-procs 1]

Each client loops: Route (a ~1.5 KB chat prompt sharing a system prompt), then Complete.
One round trip = both calls. Variants:

- ``unary``: the ``Route`` and ``Complete`` RPCs, grpc.aio clients sharing one channel
  per client process;
- ``stream``: both calls as messages on one ``RouteStream`` per client (a gateway
  worker's long-lived stream), one call per message;
- ``stream-batch``: the clients of a process share one ``RouteStream`` through
  ``grpc_server.stream_client.RouteStreamClient``, which sends the calls queued while
  the previous message was written as one batch.

Clients run in ``--client-procs`` processes (clients split between them). Besides
throughput and latency, each row gives the CPU time per round trip of the server
process and of the client processes (from /proc and ``time.process_time``), which
shows where the time goes even when other work shares the machine. Writes
``benches/results/grpc_roundtrip.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grpc_server.llmlb.v1 import router_pb2 as pb  # noqa: E402
from grpc_server.llmlb.v1 import router_pb2_grpc as pb_grpc  # noqa: E402
from grpc_server.stream_client import RouteStreamClient  # noqa: E402

SYSTEM_PROMPT = "You are a careful assistant that answers in short sentences. " * 24
WARMUP_S = 0.3
# Set per client process from --candidates.
INCLUDE_CANDIDATES = [False]
SERVER_KIND = ["aio"]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

ClientLoop = Callable[[pb_grpc.RouterStub, str, float, list[float]], Awaitable[None]]


def start_server(
    nodes: int, metrics: bool, launcher: list[str]
) -> tuple[subprocess.Popen[str], int, Path]:
    config = {
        "server": {"listen": "127.0.0.1:0", "metrics_port": 0 if metrics else None},
        "nodes": [{"id": f"n{i}", "address": f"10.0.0.{i}:8000"} for i in range(nodes)],
    }
    path = Path(tempfile.mkdtemp()) / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [*launcher, "--config", str(path), "--log-level", "WARNING"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()
    if "serving on port" not in line:
        process.kill()
        raise SystemExit(f"server did not start: {line!r}")
    port = int(line.split("port ")[1].split(";")[0])
    return process, port, path


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def route_request(worker: str, turn: int) -> pb.RouteRequest:
    text = f"{SYSTEM_PROMPT} user {worker} turn {turn}: what is the weather like?"
    return pb.RouteRequest(text=text, session_id=worker, include_candidates=INCLUDE_CANDIDATES[0])


async def unary_loop(
    stub: pb_grpc.RouterStub, worker: str, deadline: float, latencies: list[float]
) -> None:
    turn = 0
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        routed = await stub.Route(route_request(worker, turn))
        await stub.Complete(
            pb.CompleteRequest(request_id=routed.request_id, outcome=pb.OUTCOME_OK, tokens_out=8)
        )
        latencies.append(time.perf_counter() - started)
        turn += 1


async def stream_loop(
    stub: pb_grpc.RouterStub, worker: str, deadline: float, latencies: list[float]
) -> None:
    call = stub.RouteStream()
    turn = 0
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        route = route_request(worker, turn)
        await call.write(pb.RouteStreamRequest(calls=[pb.StreamCall(tag=turn, route=route)]))
        (routed,) = (await call.read()).results
        if not routed.HasField("route"):
            raise RuntimeError(f"route refused: {routed}")
        complete = pb.CompleteRequest(
            request_id=routed.route.request_id, outcome=pb.OUTCOME_OK, tokens_out=8
        )
        await call.write(pb.RouteStreamRequest(calls=[pb.StreamCall(tag=turn, complete=complete)]))
        (completed,) = (await call.read()).results
        if not completed.HasField("complete"):
            raise RuntimeError(f"complete refused: {completed}")
        latencies.append(time.perf_counter() - started)
        turn += 1
    await call.done_writing()


async def batch_loop(
    client: RouteStreamClient, worker: str, deadline: float, latencies: list[float]
) -> None:
    turn = 0
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        routed = await client.route(route_request(worker, turn))
        await client.complete(
            pb.CompleteRequest(request_id=routed.request_id, outcome=pb.OUTCOME_OK, tokens_out=8)
        )
        latencies.append(time.perf_counter() - started)
        turn += 1


async def stream_batch_loop(
    stub: pb_grpc.RouterStub, worker: str, deadline: float, latencies: list[float]
) -> None:
    """One client of the shared batching stream of this process."""
    await batch_loop(SHARED_STREAM[stub], worker, deadline, latencies)


LOOPS: dict[str, ClientLoop] = {
    "unary": unary_loop,
    "stream": stream_loop,
    "stream-batch": stream_batch_loop,
}
# The RouteStreamClient that the stream-batch clients of one process share, per stub.
SHARED_STREAM: dict[pb_grpc.RouterStub, RouteStreamClient] = {}


async def run_clients(
    port: int, variant: str, clients: int, seconds: float, tag: str
) -> tuple[list[float], float]:
    loop = LOOPS[variant]
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
        SHARED_STREAM[stub] = RouteStreamClient(stub)
        try:
            await loop(stub, f"{tag}-warm", time.perf_counter() + WARMUP_S, [])
            cpu_before = time.process_time()
            deadline = time.perf_counter() + seconds
            await asyncio.gather(
                *(loop(stub, f"{tag}-{w}", deadline, latencies) for w in range(clients))
            )
            cpu = time.process_time() - cpu_before
        finally:
            await SHARED_STREAM.pop(stub).close()
    return latencies, cpu


def client_process(args: tuple[int, str, int, float, str, bool]) -> tuple[list[float], float]:
    port, variant, clients, seconds, tag, INCLUDE_CANDIDATES[0] = args
    return asyncio.run(run_clients(port, variant, clients, seconds, tag))


def measure(
    server_pid: int,
    port: int,
    variant: str,
    concurrency: int,
    seconds: float,
    procs: int,
    candidates: bool,
) -> dict[str, Any]:
    procs = max(1, min(procs, concurrency))
    shares = [concurrency // procs + (1 if p < concurrency % procs else 0) for p in range(procs)]
    jobs = [
        (port, variant, share, seconds, f"{variant}-c{concurrency}p{p}", candidates)
        for p, share in enumerate(shares)
    ]
    server_cpu_before = cpu_seconds(server_pid)
    if procs == 1:
        results = [client_process(jobs[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(procs) as pool:
            results = pool.map(client_process, jobs)
    # Includes the clients' warm-up and start: a slight overestimate per round trip.
    server_cpu = cpu_seconds(server_pid) - server_cpu_before
    latencies = sorted(x for r, _ in results for x in r)
    client_cpu = sum(cpu for _, cpu in results)
    q = statistics.quantiles(latencies, n=100)
    return {
        "variant": variant + ("+candidates" if candidates else ""),
        "server": SERVER_KIND[0],
        "concurrency": concurrency,
        "client_processes": procs,
        "round_trips": len(latencies),
        "round_trips_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(q[49] * 1e3, 3),
        "p99_ms": round(q[98] * 1e3, 3),
        "max_ms": round(latencies[-1] * 1e3, 3),
        "server_cpu_us_per_round_trip": round(server_cpu / len(latencies) * 1e6, 1),
        "client_cpu_us_per_round_trip": round(client_cpu / len(latencies) * 1e6, 1),
    }


def service_only(nodes: int, round_trips: int, candidates: bool) -> dict[str, Any]:
    """Route+Complete through the service's own code (message in, message out) with no
    transport: what the service adds per round trip on top of gRPC. CPU time, so that
    other work on the machine inflates it less than wall time."""
    from llmlb_fast.config import parse_config
    from llmlb_fast.service.routing import RoutingService
    from llmlb_fast.transports.grpc_api import RouterServicer

    config = parse_config(
        {"nodes": [{"id": f"n{i}", "address": f"10.0.0.{i}:8000"} for i in range(nodes)]}
    )
    service = RouterServicer(RoutingService(config))
    INCLUDE_CANDIDATES[0] = candidates
    requests = [route_request("in-process", turn) for turn in range(round_trips)]
    started = time.process_time()
    for request in requests:
        routed = service.route(request)
        service.complete(
            pb.CompleteRequest(request_id=routed.request_id, outcome=pb.OUTCOME_OK, tokens_out=8)
        )
    elapsed = time.process_time() - started
    INCLUDE_CANDIDATES[0] = False
    return {
        "variant": "service-only" + ("+candidates" if candidates else ""),
        "round_trips": round_trips,
        "cpu_us_per_round_trip": round(elapsed / round_trips * 1e6, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--variants", nargs="+", choices=sorted(LOOPS), default=list(LOOPS))
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument(
        "--candidates", action="store_true", help="ask for candidate scores in every Route"
    )
    parser.add_argument("--client-procs", type=int, default=1)
    parser.add_argument(
        "--server",
        choices=["aio", "sync"],
        default="aio",
        help="aio: llmlb serve; sync: benches/sync_server.py (grpc.server + thread pool probe)",
    )
    parser.add_argument("--no-metrics", action="store_true", help="disable the /metrics server")
    parser.add_argument("--out", default=str(ROOT / "benches/results/grpc_roundtrip.json"))
    parser.add_argument(
        "--hold", type=float, default=0.0, help="seconds before measuring (to attach py-spy)"
    )
    args = parser.parse_args()
    load_before = os.getloadavg()
    in_process = [service_only(args.nodes, 20_000, candidates) for candidates in (False, True)]
    for row in in_process:
        print(json.dumps(row), flush=True)
    SERVER_KIND[0] = args.server
    launcher = [sys.executable, "-m", "llmlb_fast.cli", "serve"]
    if args.server == "sync":
        launcher = [sys.executable, str(ROOT / "benches/sync_server.py")]
    server, port, _ = start_server(args.nodes, not args.no_metrics, launcher)
    print(f"server pid {server.pid} port {port}", flush=True)
    try:
        time.sleep(args.hold)
        rows = []
        for variant in args.variants:
            for concurrency in args.concurrency:
                row = measure(
                    server.pid,
                    port,
                    variant,
                    concurrency,
                    args.seconds,
                    args.client_procs,
                    args.candidates,
                )
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        server.terminate()
        server.wait(timeout=30)
    report = {
        "benchmark": "grpc Route+Complete round trips, loopback",
        "command": "python " + " ".join(sys.argv),
        "nodes": args.nodes,
        "seconds_per_level": args.seconds,
        "metrics_endpoint": not args.no_metrics,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "platform": platform.platform(),
            "loadavg_1_5_15_before": load_before,
            "loadavg_1_5_15_after": os.getloadavg(),
        },
        "results": rows,
        "service_only": in_process,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
