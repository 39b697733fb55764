"""Soak of `llmlb serve`'s Rust proxy: mixed valid, invalid, streamed and abandoned
requests for a bounded time, with the serving process's memory and file descriptors
sampled. Passes when nothing is left in flight, every answer had the expected status,
and RSS and fds stay flat after warm-up. Writes benches/results/proxy_soak.json.

    python benches/proxy_soak.py [--duration 120] [--clients 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benches" / "results"
MODEL = "test-model"
SAMPLE_EVERY_S = 5.0

# Request kinds, their weights and the status each must get.
KINDS: dict[str, tuple[float, int]] = {
    "completion": (0.35, 200),
    "chat": (0.10, 200),
    "stream": (0.25, 200),
    "abandoned_stream": (0.05, 200),
    "invalid_json": (0.05, 400),
    "missing_model": (0.05, 400),
    "unknown_model": (0.05, 404),
    "bad_tokens": (0.05, 400),
    "too_large": (0.05, 413),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_figures(pid: int) -> tuple[int, int]:
    """RSS in KiB and open file descriptors of ``pid``."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def one_request(client: aiohttp.ClientSession, url: str, kind: str, n: int) -> int:
    completions, chat = url + "/v1/completions", url + "/v1/chat/completions"
    prompt = f"You are a helpful assistant. Question {n % 500}"
    if kind == "invalid_json":
        async with client.post(completions, data=b'{"model": "x",') as resp:
            return resp.status
    if kind == "too_large":
        async with client.post(completions, data=b"x" * (2 * 1024 * 1024)) as resp:
            return resp.status
    bodies: dict[str, tuple[str, dict[str, Any]]] = {
        "completion": (completions, {"model": MODEL, "prompt": prompt, "max_tokens": 8}),
        "chat": (chat, {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}),
        "stream": (completions, {"model": MODEL, "prompt": prompt, "stream": True}),
        "abandoned_stream": (completions, {"model": MODEL, "prompt": prompt, "stream": True}),
        "missing_model": (completions, {"prompt": prompt}),
        "unknown_model": (completions, {"model": "no-such-model", "prompt": prompt}),
        "bad_tokens": (completions, {"model": MODEL, "prompt": [1, 2, 10**30]}),
    }
    target, body = bodies[kind]
    async with client.post(target, json=body) as resp:
        if kind == "abandoned_stream":
            await resp.content.readany()
            resp.close()  # the client leaves mid-stream
        else:
            await resp.read()
        return resp.status


async def load(url: str, args: argparse.Namespace, pid: int) -> dict[str, Any]:
    names = list(KINDS)
    weights = [KINDS[k][0] for k in names]
    statuses: Counter[str] = Counter()
    wrong: Counter[str] = Counter()
    samples: list[dict[str, float]] = []
    deadline = time.monotonic() + args.duration
    rng = random.Random(7)
    counter = 0

    async def client_loop(client: aiohttp.ClientSession) -> None:
        nonlocal counter
        while time.monotonic() < deadline:
            kind = rng.choices(names, weights)[0]
            counter += 1
            try:
                status = await one_request(client, url, kind, counter)
            except aiohttp.ClientError as error:
                status = -1
                wrong[f"{kind}: {type(error).__name__}: {str(error)[:80]}"] += 1
            statuses[f"{kind} {status}"] += 1
            if status not in (KINDS[kind][1], -1):
                wrong[f"{kind}: got {status}"] += 1

    async def sampler() -> None:
        started = time.monotonic()
        while time.monotonic() < deadline:
            rss, fds = process_figures(pid)
            elapsed = time.monotonic() - started
            samples.append({"t_s": round(elapsed, 1), "rss_kib": rss, "fds": fds})
            done = sum(statuses.values())
            print(
                f"  {elapsed:5.0f}/{args.duration} s  {done} requests  rss {rss} KiB  fds {fds}",
                flush=True,
            )
            await asyncio.sleep(SAMPLE_EVERY_S)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as client:
        await asyncio.gather(sampler(), *(client_loop(client) for _ in range(args.clients)))
        await asyncio.sleep(1.0)
        async with client.get(url + "/health") as resp:
            health = await resp.json()
    rss, fds = process_figures(pid)
    samples.append({"t_s": float(args.duration + 1), "rss_kib": rss, "fds": fds})
    return {
        "statuses": dict(sorted(statuses.items())),
        "wrong": dict(wrong),
        "samples": samples,
        "in_flight_at_end": health["in_flight"],
    }


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    """Flat after warm-up: the last sample within 10% (RSS) and 16 fds of the one at
    a quarter of the run."""
    samples = result["samples"]
    base = samples[len(samples) // 4]
    last = samples[-1]
    rss_growth = (last["rss_kib"] - base["rss_kib"]) / base["rss_kib"]
    fd_growth = last["fds"] - base["fds"]
    ok = (
        result["in_flight_at_end"] == 0
        and not result["wrong"]
        and rss_growth < 0.10
        and fd_growth <= 16
    )
    return {
        "passed": ok,
        "rss_growth_after_warmup": round(rss_growth, 4),
        "fd_growth_after_warmup": fd_growth,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=120, help="seconds of load")
    parser.add_argument("--clients", type=int, default=32, help="concurrent client loops")
    parser.add_argument("--out", type=Path, default=RESULTS / "proxy_soak.json")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="proxy_soak_"))
    backends, procs = [], []
    try:
        for i in range(2):
            port = free_port()
            cmd = [sys.executable, str(ROOT / "benches" / "bench_proxy.py"), "_backend", str(port)]
            log = open(workdir / f"backend{i}.log", "wb")  # noqa: SIM115 (closed with the process)
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
            backends.append(f"http://127.0.0.1:{port}")
        proxy_port = free_port()
        nodes = [{"id": f"n{i}", "address": b, "models": [MODEL]} for i, b in enumerate(backends)]
        config = {
            "server": {"listen": "127.0.0.1:0", "metrics_port": None},
            "proxy": {
                "enabled": True,
                "listen": f"127.0.0.1:{proxy_port}",
                "max_body_bytes": 1024 * 1024,
            },
            "nodes": nodes,
        }
        (workdir / "llmlb.yaml").write_text(json.dumps(config))
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llmlb_fast.cli",
                "serve",
                "--config",
                str(workdir / "llmlb.yaml"),
                "--log-level",
                "WARNING",
            ],
            stdout=subprocess.PIPE,
            stderr=open(workdir / "serve.log", "wb"),  # noqa: SIM115
        )
        procs.append(serve)
        assert serve.stdout is not None
        line = serve.stdout.readline().decode()
        assert "serving on port" in line, (workdir / "serve.log").read_text()
        time.sleep(1.0)
        url = f"http://127.0.0.1:{proxy_port}"
        print(f"soak: {args.duration} s, {args.clients} clients, {url}", flush=True)
        result = asyncio.run(load(url, args, serve.pid))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    result.update(verdict(result))
    report = {
        "command": " ".join(["python", "benches/proxy_soak.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_after": os.getloadavg(),
        },
        "mix": {kind: {"weight": w, "expected_status": s} for kind, (w, s) in KINDS.items()},
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: report[k]
                for k in (
                    "passed",
                    "rss_growth_after_warmup",
                    "fd_growth_after_warmup",
                    "in_flight_at_end",
                    "wrong",
                )
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
