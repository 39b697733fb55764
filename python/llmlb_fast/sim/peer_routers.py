"""The routers a live benchmark measures, as processes on 127.0.0.1 ephemeral ports:
``llmlb serve`` (gRPC service and HTTP proxy) and external routers (``sglang-router``,
``vllm-router`` with ``--policy cache_aware``). Each is a context manager that stops its
process on the way out, on errors and cancellation too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

EXTERNAL_ROUTERS = ("sglang-router", "vllm-router")
EXTERNAL_POLICY = "cache_aware"
START_TIMEOUT_S = 30.0


@dataclass
class External:
    name: str
    path: str | None
    reason: str = ""

    @property
    def label(self) -> str:
        return f"{self.name} ({EXTERNAL_POLICY})"


def find_externals(names: Sequence[str], bin_dir: str | None) -> list[External]:
    """Each router's executable: in ``bin_dir`` if given, else on PATH."""
    found = []
    for name in names:
        if name not in EXTERNAL_ROUTERS:
            raise ValueError(f"unknown external router {name!r}; known: {EXTERNAL_ROUTERS}")
        where = os.path.join(bin_dir, name) if bin_dir else shutil.which(name)
        if where and os.access(where, os.X_OK):
            found.append(External(name, where))
        else:
            place = bin_dir if bin_dir else "PATH"
            found.append(External(name, None, f"{name} not found in {place} (pip install {name})"))
    return found


def serve_config(policy: str, nodes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "policy": policy,
        "server": {"listen": "127.0.0.1:0", "metrics_port": None},
        "proxy": {"enabled": True, "listen": "127.0.0.1:0"},
        "timeouts": {"drain": 2},
        "nodes": nodes,
    }


def ports_of(line: str) -> dict[str, int]:
    """``llmlb serving on port 1; metrics port None; proxy port 3`` -> grpc, proxy."""
    ports = {}
    for part in line.split(";"):
        words = part.split()
        if words and words[-1].isdigit():
            ports["grpc" if "serving" in words else words[0]] = int(words[-1])
    return ports


async def stop_process(process: asyncio.subprocess.Process, grace_s: float = 5.0) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), grace_s)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def llmlb_service(
    config: dict[str, Any],
    workdir: Path,
    name: str = "serve",
    processes: list[asyncio.subprocess.Process] | None = None,
) -> AsyncIterator[dict[str, int]]:
    """``llmlb serve`` as a subprocess; yields its gRPC and proxy ports (and appends the
    process to ``processes``, for a benchmark that kills it)."""
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "llmlb_fast.cli", "serve", "--config", str(path)]
    with open(workdir / f"{name}.log", "wb") as log:
        process = await asyncio.create_subprocess_exec(
            *command, "--log-level", "WARNING", stdout=asyncio.subprocess.PIPE, stderr=log
        )
    if processes is not None:
        processes.append(process)
    try:
        assert process.stdout is not None
        try:
            line = (await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT_S)).decode()
        except asyncio.TimeoutError:
            line = ""
        if "serving on port" not in line:
            log_text = (workdir / f"{name}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"llmlb serve did not start: {line.strip()}\n{log_text}")
        yield ports_of(line)
    finally:
        await stop_process(process)


@contextlib.asynccontextmanager
async def external_router(
    external: External, worker_urls: list[str], workdir: Path
) -> AsyncIterator[str]:
    """An external router in front of the workers; yields its base URL."""
    assert external.path is not None
    port = free_port()
    common = ["--host", "127.0.0.1", "--port", str(port), "--worker-urls", *worker_urls]
    common += ["--policy", EXTERNAL_POLICY, "--prometheus-port", str(free_port())]
    common += ["--log-level", "error"]
    launch = ["launch"] if external.name == "sglang-router" else []
    with open(workdir / f"{external.name}.log", "wb") as log:
        process = await asyncio.create_subprocess_exec(
            external.path, *launch, *common, stdout=log, stderr=asyncio.subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_http_ready(url + "/v1/models", process, external.name, workdir)
        yield url
    finally:
        await stop_process(process)


async def wait_http_ready(
    url: str, process: asyncio.subprocess.Process, name: str, workdir: Path
) -> None:
    import aiohttp

    deadline = time.monotonic() + START_TIMEOUT_S
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                break
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
    log_text = (workdir / f"{name}.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{name} did not answer {url} in {START_TIMEOUT_S:.0f} s\n{log_text}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
