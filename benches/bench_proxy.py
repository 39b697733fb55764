"""Proxy overhead on loopback: llmlb's HTTP proxy vs sglang-router and vllm-router.

Four identical aiohttp backends (one process each) answer a fixed non-streaming
completion. wrk drives each router with the same request stream (a shared system prompt
and a per-request suffix): ``-c1`` for added latency over calling a backend directly,
``-c8`` and ``-c64`` for requests/s. Results go to benches/results/bench_proxy.json.

    python benches/bench_proxy.py [--duration 5] [--routers llmlb,sglang,vllm]
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
  local body = '{"model":"%s","max_tokens":16,"prompt":"' .. system ..
    'User question number ' .. counter .. '"}'
  return wrk.format(nil, "/v1/completions", nil, body)
end
""" % MODEL


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
    from llmlb_fast.proxy import ProxyServer

    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    async def main() -> None:
        router = Router(None, [Node(f"n{i}", url) for i, url in enumerate(backends)])
        proxy = ProxyServer(router)
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
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency",
         "-s", str(script), url],
        capture_output=True, text=True, check=True,
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


def measure(url: str, duration_s: int, script: Path) -> dict[str, dict[str, float]]:
    run_wrk(url, 8, 1, script)  # warm up pools and caches
    return {f"c{c}": run_wrk(url, c, duration_s, script) for c in (1, 8, 64)}


def router_commands(
    name: str, port: int, backends: list[str], args: argparse.Namespace
) -> list[str] | str:
    """The command that starts a router, or the reason it cannot run here."""
    if name == "llmlb":
        return [sys.executable, __file__, "_llmlb", str(port), *backends]
    binary = args.sglang_bin if name == "sglang" else args.vllm_bin
    path = shutil.which(binary) or (binary if os.path.exists(binary) else None)
    if path is None:
        return f"{binary} not found (pip install {binary})"
    common = ["--host", "127.0.0.1", "--port", str(port), "--worker-urls", *backends,
              "--policy", "cache_aware", "--prometheus-port", str(free_port()),
              "--log-level", "error"]
    return [path, *common] if name == "vllm" else [path, "launch", *common]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--routers", default="llmlb,sglang,vllm")
    parser.add_argument("--sglang-bin", default="sglang-router")
    parser.add_argument("--vllm-bin", default="vllm-router")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_proxy.json")
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
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "backends": f"{N_BACKENDS} aiohttp processes, fixed non-streaming completion",
        "load": "wrk, -c1 (1 thread), -c8 and -c64 (2 threads), "
                f"{args.duration} s each after a 1 s warm-up",
        "results": {},
    }
    results: dict[str, object] = report["results"]  # type: ignore[assignment]
    with contextlib.ExitStack() as stack:
        for i, port in enumerate(ports):
            proc = stack.enter_context(started(
                [sys.executable, __file__, "_backend", str(port)], logs / f"backend{i}.log"))
            wait_ready(backends[i], 20, proc)
        print("direct backend ...", flush=True)
        results["direct"] = measure(backends[0], args.duration, script)
        for name in args.routers.split(","):
            port = free_port()
            cmd = router_commands(name, port, backends, args)
            if isinstance(cmd, str):
                results[name] = {"error": cmd}
                print(f"{name}: {cmd}", flush=True)
                continue
            print(f"{name} ...", flush=True)
            with started(cmd, logs / f"{name}.log") as proc:
                try:
                    wait_ready(f"http://127.0.0.1:{port}", 60, proc)
                except RuntimeError as exc:
                    tail = (logs / f"{name}.log").read_text(errors="replace")[-600:]
                    results[name] = {"error": f"did not start: {exc}; log tail: {tail}"}
                    continue
                results[name] = measure(f"http://127.0.0.1:{port}", args.duration, script)
    add_overheads(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


def add_overheads(results: dict[str, object]) -> None:
    direct = results["direct"]["c1"]  # type: ignore[index]
    for name, result in results.items():
        if name == "direct" or "c1" not in result:  # type: ignore[operator]
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
