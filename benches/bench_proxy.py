"""Proxy overhead on loopback: llmlb's HTTP proxy vs sglang-router and vllm-router.

Four identical aiohttp backends (one process each) answer a fixed completion, or stream
50 SSE chunks. wrk drives each router with the same request stream, per workload:
``short`` (a completions prompt: a shared system prompt and a per-request suffix),
``chat`` (2-8 KB chat prompts sharing a system prompt), ``sse`` (50 chunks back to back)
and ``sse-2ms`` (50 chunks 2 ms apart). ``-c1`` gives the added latency over calling a
backend directly, ``-c8`` and ``-c64`` requests/s; the router's CPU per request (and per
chunk) comes from /proc. Results go to benches/results/bench_proxy.json.

    python benches/bench_proxy.py [--duration 5] [--rounds 3]
        [--workloads short,chat,sse,sse-2ms] [--routers llmlb,llmlb-bare,sglang,vllm]
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

SSE_CHUNKS = 50
WRK_PREAMBLE = """
counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
"""


def sse_request(delay_ms: int) -> str:
    """A streamed completion; the backend waits ``delay_ms`` between chunks."""
    return """
request = function()
  counter = counter + 1
  local body = '{"model":"MODEL","max_tokens":50,"stream":true,"user":"delay-DELAY",' ..
    '"prompt":"Tell me story number ' .. counter .. '"}'
  return wrk.format(nil, "/v1/completions", nil, body)
end
""".replace("DELAY", str(delay_ms))


# Each workload: the wrk request function, and the connection counts it runs at.
WORKLOADS: dict[str, tuple[str, tuple[int, ...]]] = {
    "short": (
        """
local system = string.rep("You are a helpful assistant. ", 8)
request = function()
  counter = counter + 1
  local body = '{"model":"MODEL","max_tokens":16,"prompt":"' .. system ..
    'User question number ' .. counter .. '"}'
  return wrk.format(nil, "/v1/completions", nil, body)
end
""",
        (1, 8, 64),
    ),
    "chat": (
        """
local system = string.rep("You are a helpful assistant for ACME. ", 55)
local filler = string.rep("Some earlier context of this conversation. ", 140)
request = function()
  counter = counter + 1
  local extra = string.sub(filler, 1, (counter * 997) % 6000)
  local body = '{"model":"MODEL","max_tokens":16,"messages":[{"role":"system","content":"' ..
    system .. '"},{"role":"user","content":"' .. extra .. ' Question ' .. counter .. '"}]}'
  return wrk.format(nil, "/v1/chat/completions", nil, body)
end
""",
        (1, 8, 64),
    ),
    "sse": (sse_request(delay_ms=0), (8, 64)),
    "sse-2ms": (sse_request(delay_ms=2), (64,)),
}


def wrk_script(workload: str) -> str:
    return (WRK_PREAMBLE + WORKLOADS[workload][0]).replace("MODEL", MODEL)


# --- processes started by this script -------------------------------------------------


def serve_backend(port: int) -> None:
    from aiohttp import web

    chunk = (
        b'data: {"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":"tok"}]}\n\n'
    )

    async def complete(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("stream") is not True:
            return web.Response(body=COMPLETION, content_type="application/json")
        # "user": "delay-N" asks for N ms between chunks (a field every router passes on).
        delay_s = int(str(body.get("user", "delay-0")).removeprefix("delay-")) / 1000
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(SSE_CHUNKS):
            await response.write(chunk)
            if delay_s:
                await asyncio.sleep(delay_s)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

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
    url: str, duration_s: int, script: Path, pid: int | None, levels: tuple[int, ...]
) -> dict[str, dict[str, float]]:
    run_wrk(url, 8, 1, script)  # warm up pools and caches
    results = {}
    for connections in levels:
        cpu_before = tree_cpu_seconds(pid) if pid else 0.0
        result = run_wrk(url, connections, duration_s, script)
        if pid:
            # CPU the router's processes spent per request: unlike req/s, this barely
            # moves when other work shares the machine.
            requests = result["requests_per_s"] * duration_s
            spent = tree_cpu_seconds(pid) - cpu_before
            result["router_cpu_us_per_request"] = round(1e6 * spent / max(requests, 1), 1)
            if "sse" in script.stem:
                chunks = requests * SSE_CHUNKS
                result["router_cpu_us_per_chunk"] = round(1e6 * spent / max(chunks, 1), 2)
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
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"any of {', '.join(WORKLOADS)}"
    )
    parser.add_argument("--sglang-bin", default="sglang-router")
    parser.add_argument("--vllm-bin", default="vllm-router")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_proxy.json")
    parser.add_argument(
        "--profile", action="store_true", help="also profile llmlb serve with perf (-c8, short)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is required: apt-get install -y wrk", file=sys.stderr)
        return 2

    logs = Path(tempfile.mkdtemp(prefix="bench_proxy_"))
    workloads = args.workloads.split(",")
    scripts = {}
    for workload in workloads:
        scripts[workload] = logs / f"{workload}.lua"
        scripts[workload].write_text(wrk_script(workload))
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
        "backends": f"{N_BACKENDS} aiohttp processes: a fixed completion, or {SSE_CHUNKS} "
        "SSE chunks",
        "load": "wrk, -c1 (1 thread), -c8 and -c64 (2 threads), "
        f"{args.duration} s each after a 1 s warm-up; {args.rounds} interleaved rounds, "
        "median per metric",
        "workloads": {w: {"levels": WORKLOADS[w][1]} for w in workloads},
    }
    errors: dict[str, str] = {}
    pids: dict[str, int] = {}
    rounds: dict[str, dict[str, list[dict[str, dict[str, float]]]]] = {}
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
            for workload in workloads:
                levels = WORKLOADS[workload][1]
                for name, url in targets.items():
                    print(f"round {round_no + 1}/{args.rounds}: {workload} {name}", flush=True)
                    script = scripts[workload]
                    result = measure(url, args.duration, script, pids.get(name), levels)
                    rounds.setdefault(workload, {}).setdefault(name, []).append(result)
        if args.profile and "llmlb" in targets:
            print("profiling llmlb at 8 connections ...", flush=True)
            report["profile"] = profile(pids["llmlb"], targets["llmlb"], args, scripts["short"])
    report["machine"]["load_average_after"] = os.getloadavg()  # type: ignore[index]
    results: dict[str, object] = {}
    for workload, by_router in rounds.items():
        medians: dict[str, object] = {name: median_of(runs) for name, runs in by_router.items()}
        if 1 in WORKLOADS[workload][1]:
            add_overheads(medians)
        medians.update({name: {"error": reason} for name, reason in errors.items()})
        results[workload] = medians
    report["results"] = results
    report["rounds"] = rounds
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


def profile(pid: int, url: str, args: argparse.Namespace, script: Path) -> dict[str, object]:
    """``perf record -e cpu-clock`` of the proxy process (every thread: the Rust proxy's
    tokio workers, the Python service) under the -c8 load; self time by binary and by
    symbol. (py-spy sees only threads that run Python, not the proxy's.)"""
    if shutil.which("perf") is None:
        return {"error": "perf not installed (apt-get install -y linux-perf)"}
    seconds = max(args.duration, 5)
    data = Path(tempfile.mkdtemp()) / "perf.data"
    record = subprocess.Popen(
        ["perf", "record", "-e", "cpu-clock", "-F", "1999", "-p", str(pid), "-o", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    threads_before = thread_cpu_seconds(pid)
    requests = run_wrk(url, 8, seconds, script)["requests_per_s"] * seconds
    threads_after = thread_cpu_seconds(pid)
    record.send_signal(2)  # SIGINT: perf writes its file and exits
    record.wait(timeout=30)  # its exit status after SIGINT varies
    if not data.exists() or data.stat().st_size == 0:
        return {"error": "perf record failed (needs perf_event_open permission)"}
    busy = {
        f"{name} {tid}": round(spent - threads_before.get((name, tid), 0.0), 2)
        for (name, tid), spent in threads_after.items()
    }
    return {
        "requests": requests,
        "seconds": seconds,
        # CPU seconds of each thread of the process during the run (both cores in use?).
        "thread_cpu_s": {k: v for k, v in sorted(busy.items()) if v > 0},
        "self_time_percent_by_binary": perf_report(data, "dso", 8),
        "self_time_percent_by_symbol": perf_report(data, "sym", 25),
    }


def thread_cpu_seconds(pid: int) -> dict[tuple[str, int], float]:
    """User + system CPU of each thread of ``pid``, by (thread name, thread id)."""
    spent = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        spent[(name, int(task.name))] = (int(fields[11]) + int(fields[12])) / TICKS
    return spent


def perf_report(data: Path, sort: str, top: int) -> dict[str, float]:
    out = subprocess.run(
        ["perf", "report", "-i", str(data), "--sort", sort, "--stdio"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    shares: dict[str, float] = {}
    for line in out.splitlines():
        match = re.match(r"\s+([\d.]+)%\s+(.*\S)", line)
        if match and len(shares) < top:
            shares[match.group(2)] = float(match.group(1))
    return shares


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
