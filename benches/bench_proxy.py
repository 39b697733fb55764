"""Proxy overhead on loopback: llmlb's HTTP proxy vs sglang-router and vllm-router.

Four identical aiohttp backends (one process each) answer a fixed non-streaming
completion. wrk drives each router with the same request stream (a shared system prompt
and a per-request suffix): ``-c1`` for added latency over calling a backend directly,
``-c8`` and ``-c64`` for requests/s. Results go to benches/results/bench_proxy.json.

    python benches/bench_proxy.py [--duration 5] [--rounds 3]
        [--routers llmlb,llmlb-bare,sglang,vllm]
        [--sglang-bin PATH] [--vllm-bin PATH]

sglang-router / vllm-router are looked up on PATH (or given as paths); a router that is
missing or does not start is recorded with the reason instead of numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benches" / "results"
MODEL = "test-model"
N_BACKENDS = 4

COMPLETION = json.dumps(
    {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": MODEL,
        "choices": [{"index": 0, "text": "hello world", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 60, "completion_tokens": 2, "total_tokens": 62},
    }
).encode()

WRK_SCRIPT = """
counter = 0
local system = string.rep("You are a helpful assistant. ", 8)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  local body = '{"model":"MODEL","max_tokens":16,"prompt":"' .. system ..
    'User question number ' .. counter .. '"}'
  return wrk.format(nil, "/v1/completions", nil, body)
end
""".replace("MODEL", MODEL)


# --- processes started by this script -------------------------------------------------


def serve_backend(port: int) -> None:
    from aiohttp import web

    async def complete(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=COMPLETION, content_type="application/json")

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def ok(_request: web.Request) -> web.Response:
        return web.json_response({"model_path": MODEL, "status": "ok"})

    app = web.Application()
    app.router.add_post("/v1/completions", complete)
    app.router.add_post("/v1/chat/completions", complete)
    app.router.add_post("/generate", complete)
    app.router.add_get("/v1/models", models)
    for path in ("/health", "/health_generate", "/get_model_info", "/get_server_info"):
        app.router.add_get(path, ok)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_llmlb(port: int, backends: list[str]) -> None:
    from llmlb_fast import Node, Router
    from llmlb_fast.config import ServiceConfig
    from llmlb_fast.service.routing import RoutingService
    from llmlb_fast.transports.proxy import ProxyServer

    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    async def main() -> None:
        router = Router(None, [Node(f"n{i}", url) for i, url in enumerate(backends)])
        proxy = ProxyServer(RoutingService(ServiceConfig(), router))
        await proxy.start("127.0.0.1", port)
        await asyncio.Event().wait()

    asyncio.run(main())


# --- orchestration ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    body = json.dumps({"model": MODEL, "prompt": "warm up", "max_tokens": 1}).encode()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode}")
        request = urllib.request.Request(
            url + "/v1/completions", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"not answering after {timeout_s:.0f} s")


@contextlib.contextmanager
def started(cmd: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_wrk(url: str, connections: int, duration_s: int, script: Path) -> dict[str, float]:
    threads = 1 if connections == 1 else 2
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration_s}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return parse_wrk(out)


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(out: str) -> dict[str, float]:
    result: dict[str, float] = {}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    result["requests_per_s"] = float(rps.group(1)) if rps else 0.0
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m:
            result[f"p{pct}_ms"] = float(m.group(1)) * UNITS[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result["non_2xx"] = float(errors.group(1)) if errors else 0.0
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if socket_errors:
        result["socket_errors"] = socket_errors.group(1)  # type: ignore[assignment]
    return result


def measure(
    url: str, duration_s: int, script: Path, pid: int | None
) -> dict[str, dict[str, float]]:
    run_wrk(url, 8, 1, script)  # warm up pools and caches
    results = {}
    for connections in (1, 8, 64):
        cpu_before = tree_cpu_seconds(pid) if pid else 0.0
        result = run_wrk(url, connections, duration_s, script)
        if pid:
            # CPU the router's processes spent per request: unlike req/s, this barely
            # moves when other work shares the machine.
            requests = result["requests_per_s"] * duration_s
            spent = tree_cpu_seconds(pid) - cpu_before
            result["router_cpu_us_per_request"] = round(1e6 * spent / max(requests, 1), 1)
        results[f"c{connections}"] = result
    return results


TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of ``root`` and its descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / TICKS
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(cpu.get(p, 0.0) for p in tree)


def serve_config(port: int, backends: list[str], path: Path) -> Path:
    """An ``llmlb serve`` config: the proxy on ``port`` in front of ``backends``."""
    nodes = [{"id": f"n{i}", "address": url, "models": [MODEL]} for i, url in enumerate(backends)]
    config = {
        "server": {"listen": "127.0.0.1:0", "metrics_port": None},
        "proxy": {"enabled": True, "listen": f"127.0.0.1:{port}"},
        "nodes": nodes,
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def router_commands(
    name: str, port: int, backends: list[str], args: argparse.Namespace, workdir: Path
) -> list[str] | str:
    """The command that starts a router, or the reason it cannot run here. ``llmlb`` is
    what users run (``llmlb serve``: the proxy with the gRPC service, breakers and
    metrics hooks); ``llmlb-bare`` is the proxy alone in front of a router."""
    if name == "llmlb":
        config = serve_config(port, backends, workdir / "llmlb.yaml")
        return [sys.executable, "-m", "llmlb_fast.cli", "serve", "--config", str(config)]
    if name == "llmlb-bare":
        return [sys.executable, __file__, "_llmlb", str(port), *backends]
    binary = args.sglang_bin if name == "sglang" else args.vllm_bin
    path = shutil.which(binary) or (binary if os.path.exists(binary) else None)
    if path is None:
        return f"{binary} not found (pip install {binary})"
    common = [
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--worker-urls",
        *backends,
        "--policy",
        "cache_aware",
        "--prometheus-port",
        str(free_port()),
        "--log-level",
        "error",
    ]
    return [path, *common] if name == "vllm" else [path, "launch", *common]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median kept)")
    parser.add_argument("--routers", default="llmlb,llmlb-bare,sglang,vllm")
    parser.add_argument("--sglang-bin", default="sglang-router")
    parser.add_argument("--vllm-bin", default="vllm-router")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_proxy.json")
    parser.add_argument(
        "--profile", action="store_true", help="also sample the llmlb proxy with py-spy"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is required: apt-get install -y wrk", file=sys.stderr)
        return 2

    logs = Path(tempfile.mkdtemp(prefix="bench_proxy_"))
    script = logs / "post.lua"
    script.write_text(WRK_SCRIPT)
    ports = [free_port() for _ in range(N_BACKENDS)]
    backends = [f"http://127.0.0.1:{p}" for p in ports]
    report: dict[str, object] = {
        "command": " ".join(["python", "benches/bench_proxy.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_before": os.getloadavg(),
        },
        "backends": f"{N_BACKENDS} aiohttp processes, fixed non-streaming completion",
        "load": "wrk, -c1 (1 thread), -c8 and -c64 (2 threads), "
        f"{args.duration} s each after a 1 s warm-up; {args.rounds} interleaved rounds, "
        "median per metric",
    }
    errors: dict[str, str] = {}
    pids: dict[str, int] = {}
    rounds: dict[str, list[dict[str, dict[str, float]]]] = {}
    with contextlib.ExitStack() as stack:
        for i, port in enumerate(ports):
            cmd = [sys.executable, __file__, "_backend", str(port)]
            proc = stack.enter_context(started(cmd, logs / f"backend{i}.log"))
            wait_ready(backends[i], 20, proc)
        targets = {"direct": backends[0]}
        for name in args.routers.split(","):
            port = free_port()
            cmd_or_reason = router_commands(name, port, backends, args, logs)
            if isinstance(cmd_or_reason, str):
                errors[name] = cmd_or_reason
                continue
            proc = stack.enter_context(started(cmd_or_reason, logs / f"{name}.log"))
            try:
                wait_ready(f"http://127.0.0.1:{port}", 60, proc)
            except RuntimeError as exc:
                tail = (logs / f"{name}.log").read_text(errors="replace")[-600:]
                errors[name] = f"did not start: {exc}; log tail: {tail}"
                continue
            targets[name] = f"http://127.0.0.1:{port}"
            pids[name] = proc.pid
        for round_no in range(args.rounds):
            for name, url in targets.items():
                print(f"round {round_no + 1}: {name}", flush=True)
                result = measure(url, args.duration, script, pids.get(name))
                rounds.setdefault(name, []).append(result)
        if args.profile and "llmlb" in targets:
            print("profiling llmlb at 8 connections ...", flush=True)
            report["profile"] = profile(pids["llmlb"], targets["llmlb"], args, script)
    report["machine"]["load_average_after"] = os.getloadavg()  # type: ignore[index]
    results: dict[str, object] = {name: median_of(runs) for name, runs in rounds.items()}
    add_overheads(results)
    results.update({name: {"error": reason} for name, reason in errors.items()})
    report["results"] = results
    report["rounds"] = rounds
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


# Where a sampled frame's self time goes, by the file it is in (first match wins).
PROFILE_BUCKETS = [
    ("socket send (kernel, loopback)", ("http_writer.py",)),
    ("llmlb proxy code", ("llmlb_fast/proxy",)),
    (
        "aiohttp server",
        (
            "web_protocol.py",
            "web_response.py",
            "web_request.py",
            "web_app.py",
            "web_urldispatcher.py",
            "web_runner.py",
            "http_parser.py",
        ),
    ),
    (
        "aiohttp client",
        (
            "client.py",
            "client_reqrep.py",
            "client_proto.py",
            "connector.py",
            "streams.py",
            "payload.py",
            "helpers.py",
            "multidict",
            "yarl",
        ),
    ),
    # py-spy drops idle samples, so this is busy native time under the loop: uvloop's C
    # transports, recv()/epoll syscalls and callback dispatch.
    ("event loop (native: recv, epoll, uvloop)", ("asyncio/", "uvloop", "runners.py")),
]


def profile(pid: int, url: str, args: argparse.Namespace, script: Path) -> dict[str, object]:
    """py-spy samples of the proxy process under the -c8 load: self time by bucket."""
    if shutil.which("py-spy") is None:
        return {"error": "py-spy not installed (pip install py-spy)"}
    raw = Path(tempfile.mkdtemp()) / "profile.txt"
    seconds = max(args.duration, 5)
    spy = subprocess.Popen(
        [
            "py-spy",
            "record",
            "-p",
            str(pid),
            "-d",
            str(seconds),
            "-r",
            "250",
            "--nonblocking",
            "--format",
            "raw",
            "-o",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run_wrk(url, 8, seconds, script)
    if spy.wait(timeout=seconds + 30) != 0 or not raw.exists():
        return {"error": "py-spy failed (needs ptrace permission)"}
    buckets: dict[str, int] = {}
    frames: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = stack.rsplit(";", 1)[-1]
        n = int(count)
        total += n
        frames[leaf] = frames.get(leaf, 0) + n
        bucket = next((b for b, keys in PROFILE_BUCKETS if any(k in leaf for k in keys)), "other")
        buckets[bucket] = buckets.get(bucket, 0) + n
    share = {b: round(100 * n / total, 1) for b, n in sorted(buckets.items(), key=lambda x: -x[1])}
    top = sorted(frames.items(), key=lambda x: -x[1])[:15]
    return {
        "samples": total,
        "self_time_percent": share,
        "top_frames_percent": {f: round(100 * n / total, 1) for f, n in top},
    }


def median_of(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    merged: dict[str, dict[str, float]] = {}
    for level in runs[0]:
        keys = [k for k, v in runs[0][level].items() if isinstance(v, float)]
        merged[level] = {k: statistics.median(r[level][k] for r in runs) for k in keys}
    return merged


def add_overheads(results: dict[str, object]) -> None:
    direct = results["direct"]["c1"]  # type: ignore[index]
    for name, result in results.items():
        if name == "direct":
            continue
        c1 = result["c1"]  # type: ignore[index]
        result["added_latency_ms"] = {  # type: ignore[index]
            "p50": round(c1["p50_ms"] - direct["p50_ms"], 3),
            "p99": round(c1["p99_ms"] - direct["p99_ms"], 3),
        }


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_backend":
        serve_backend(int(sys.argv[2]))
    elif len(sys.argv) > 2 and sys.argv[1] == "_llmlb":
        serve_llmlb(int(sys.argv[2]), sys.argv[3:])
    else:
        sys.exit(main())
