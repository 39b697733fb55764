"""Live mode end to end: ``llmlb sim-cluster`` registering with a real ``llmlb serve``
(gRPC and HTTP proxy on 127.0.0.1), its metrics reaching the router, a request through
the proxy, deregistration on shutdown, and ``llmlb bench --live`` on a tiny scenario."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_harness import write_config
from llmlb_fast.cli import main
from llmlb_fast.sim.node_server import SimNode, chat_to_tokens
from llmlb_fast.sim.profiles import PROFILES

from grpc_server.llmlb.v1 import router_pb2 as pb
from grpc_server.llmlb.v1 import router_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
MODEL = "llama-3-70b"


async def spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmlb_fast.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
    )


async def line_of(stream: asyncio.StreamReader | None, timeout_s: float = 20.0) -> str:
    assert stream is not None
    return (await asyncio.wait_for(stream.readline(), timeout_s)).decode()


@contextlib.asynccontextmanager
async def stopped_at_exit(process: asyncio.subprocess.Process) -> AsyncIterator[None]:
    try:
        yield
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, auth_token: str | None = None) -> AsyncIterator[tuple[str, str]]:
    """``llmlb serve`` with the proxy on and no nodes: (gRPC target, proxy URL)."""
    config = {
        "policy": "llmlb",
        "server": {"listen": "127.0.0.1:0", "metrics_port": None, "auth_token": auth_token},
        "proxy": {"enabled": True, "listen": "127.0.0.1:0"},
        "timeouts": {"drain": 1},
    }
    write_config(tmp_path / "llmlb.yaml", config)
    process = await spawn("serve", "--config", str(tmp_path / "llmlb.yaml"))
    async with stopped_at_exit(process):
        words = (await line_of(process.stdout)).replace(";", " ").split()
        assert words[:4] == ["llmlb", "serving", "on", "port"], words
        yield f"127.0.0.1:{words[4]}", f"http://127.0.0.1:{words[-1]}"


async def list_nodes(target: str) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
        reply = await stub.ListNodes(pb.ListNodesRequest())
    return {n.node.id: n for n in reply.nodes}


async def wait_for(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def test_sim_cluster_registers_reports_serves_and_deregisters(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as (target, proxy):
            cluster = await spawn(
                "sim-cluster",
                "--cluster",
                "h100x4:1,a100x4:1",
                "--dilation",
                "20",
                "--router",
                target,
            )
            async with stopped_at_exit(cluster):
                printed = [await line_of(cluster.stdout) for _ in range(3)]
                assert printed[0].startswith("sim-0 (h100x4) http://127.0.0.1:")
                assert printed[1].startswith("sim-1 (a100x4) http://127.0.0.1:")
                assert printed[2].startswith(f"registered with {target}")

                async def reported() -> bool:
                    nodes = await list_nodes(target)
                    return len(nodes) == 2 and all(n.metrics_fresh for n in nodes.values())

                await wait_for(reported)
                nodes = await list_nodes(target)
                h100 = nodes["sim-0"]
                assert h100.node.address == printed[0].split()[-1]
                assert h100.node.kv_capacity_tokens == PROFILES["h100x4"].kv_capacity_tokens
                for name in ("kv_cache_usage", "sm_utilization", "pcie_tx_bytes_per_s"):
                    assert name in h100.metrics
                assert (
                    h100.metrics["compute_memory_bytes"] == PROFILES["h100x4"].static_memory_bytes
                )

                # A long request through the proxy: the node reports it running, and the
                # router sees that through ReportMetrics.
                body = {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "Tell me a long story."}],
                    "max_tokens": 2000,
                    "stream": True,
                }
                async with (
                    aiohttp.ClientSession() as session,
                    session.post(proxy + "/v1/chat/completions", json=body) as response,
                ):
                    assert response.status == 200
                    node = response.headers["x-llmlb-node"]
                    assert node in ("sim-0", "sim-1")

                    async def running() -> bool:
                        metrics = (await list_nodes(target))[node].metrics
                        return metrics.get("num_requests_running") == 1.0

                    await wait_for(running)
                    text = (await response.read()).decode()
                assert text.rstrip().endswith("data: [DONE]")
                assert text.count(" tok") == 2000

                cluster.send_signal(signal.SIGINT)
                assert await asyncio.wait_for(cluster.wait(), 10) == 0
                assert await list_nodes(target) == {}

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_sim_cluster_registers_with_and_reports_to_every_router(tmp_path: Path) -> None:
    async def scenario() -> None:
        (tmp_path / "one").mkdir()
        (tmp_path / "two").mkdir()
        async with (
            serving(tmp_path / "one") as (first, _),
            serving(tmp_path / "two") as (second, _),
        ):
            cluster = await spawn(
                "sim-cluster", "--cluster", "h100x4:2", "--dilation", "20",
                "--router", first, "--router", second,
            )  # fmt: skip
            async with stopped_at_exit(cluster):
                printed = [await line_of(cluster.stdout) for _ in range(3)]
                assert printed[2].startswith(f"registered with {first}, {second}")

                async def reported_to_both() -> bool:
                    for target in (first, second):
                        nodes = await list_nodes(target)
                        if len(nodes) != 2 or not all(n.metrics_fresh for n in nodes.values()):
                            return False
                    return True

                await wait_for(reported_to_both)
                cluster.send_signal(signal.SIGINT)
                assert await asyncio.wait_for(cluster.wait(), 10) == 0
                assert await list_nodes(first) == {} == await list_nodes(second)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_sim_cluster_says_the_router_is_unreachable_and_keeps_trying() -> None:
    async def scenario() -> None:
        cluster = await spawn("sim-cluster", "--router", f"127.0.0.1:{free_port()}")
        async with stopped_at_exit(cluster):
            complaints = []
            while len(complaints) < 2:
                line = await line_of(cluster.stderr)
                assert line, "sim-cluster exited"
                if "unreachable" in line:
                    complaints.append(line)
            assert "retrying in" in complaints[0]
            cluster.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(cluster.wait(), 10) == 0

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_sim_cluster_exits_when_the_router_refuses_its_token(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, auth_token="secret") as (target, _):
            cluster = await spawn("sim-cluster", "--router", target, "--token", "wrong")
            async with stopped_at_exit(cluster):
                assert await asyncio.wait_for(cluster.wait(), 10) == 1
                assert cluster.stderr is not None
                error = (await cluster.stderr.read()).decode()
                assert "refused node sim-0: UNAUTHENTICATED" in error
                assert "Traceback" not in error

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_sim_cluster_rejects_a_bad_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim-cluster", "--cluster", "tpu:2"]) == 2
    assert "unknown profile 'tpu'" in capsys.readouterr().err


def test_live_bench_tiny_scenario_with_an_absent_external_router(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "bench",
            "--live",
            "--policies",
            "round_robin,llmlb",
            "--cluster",
            "h100x4:2",
            "--sessions",
            "2",
            "--streams",
            "2",
            "--output-tokens",
            "50",
            "--duration",
            "40",
            "--warmup",
            "5",
            "--dilation",
            "20",
            "--external",
            "sglang-router",
            "--external-bin-dir",
            str(tmp_path / "no-such-dir"),
            "--no-progress",
            "--no-plots",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "skipping sglang-router (cache_aware): sglang-router not found" in printed
    header = next(line for line in printed.splitlines() if line.startswith("| metric"))
    assert header.split("|")[2:-1] == [" round_robin ", " llmlb "]
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "live"
    assert "sglang-router (cache_aware)" in results["skipped"]
    for policy in ("round_robin", "llmlb"):
        assert results["results"][policy]["qps"] > 0
        assert results["live"][policy]["in_flight_after"] == 0
    assert results["results"]["llmlb"]["kv_hit_rate"] > 0.3  # shared system prompts


def test_a_conversation_turn_hits_the_cached_answer_and_streams_usage() -> None:
    async def turn(
        session: aiohttp.ClientSession, url: str, messages: list[dict[str, str]]
    ) -> tuple[str, dict[str, Any], int]:
        body = {
            "model": MODEL,
            "messages": messages,
            "max_tokens": 64,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        text, usage, chunks = "", {}, 0
        async with session.post(url + "/v1/chat/completions", json=body) as response:
            async for raw in response.content:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                chunks += 1
                for choice in chunk["choices"]:
                    text += choice["delta"].get("content", "")
                usage = chunk.get("usage") or usage
        return text, usage, chunks

    async def scenario() -> None:
        node = SimNode(PROFILES["h100x4"], node_id="n0", dilation=10.0, chunk_interval_s=0.5)
        await node.start()
        try:
            async with aiohttp.ClientSession() as session:
                messages = [
                    {"role": "system", "content": "You are the assistant of a bank. " * 30},
                    {"role": "user", "content": "What is my balance?"},
                ]
                answer, usage, chunks = await turn(session, node.url, messages)
                prompt = len(chat_to_tokens(messages))
                assert usage["prompt_tokens"] == prompt
                assert usage["completion_tokens"] == 64 and answer == " tok" * 64
                # 64 tokens take ~1.3 simulated s = 0.13 s of wall time: a chunk interval
                # of 0.5 s sends the first token, then the rest in one or two chunks.
                assert chunks <= 5

                messages += [
                    {"role": "assistant", "content": answer},
                    {"role": "user", "content": "And my card limit?"},
                ]
                _, usage, _ = await turn(session, node.url, messages)
                # The first turn's prompt and answer are a prefix of this prompt: all of
                # their full 16-token blocks are cached.
                cached = usage["prompt_tokens_details"]["cached_tokens"]
                assert cached == (prompt + 64) // 16 * 16
        finally:
            await node.stop()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_live_bench_with_replicas_over_redis_and_one_killed(
    redis_server: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--live --replicas 2``: two llmlb serve processes over a real redis-server (the
    benchmark starts its own; the fixture only proves the binary is there), the load
    split between them, the first SIGKILLed halfway; its requests go on elsewhere."""
    out = tmp_path / "out"
    code = main(
        [
            "bench", "--live", "--policies", "llmlb", "--replicas", "2",
            "--cluster", "h100x4:2", "--sessions", "2", "--streams", "3",
            "--output-tokens", "50", "--duration", "60", "--warmup", "5",
            "--dilation", "20", "--kill-replica-at", "30", "--kill-window", "20",
            "--no-progress", "--no-plots", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "llmlb x2 replicas: replica killed at 30 s" in printed
    live = json.loads((out / "results.json").read_text())["live"]["llmlb x2 replicas"]
    assert live["replicas"] == 2
    assert live["in_flight_after"] == 0  # the survivor released its peer's requests
    assert live["kill"]["kv_hit_after"] > 0.3
    assert live["redis"]["xadd_per_request"] > 0
    results = json.loads((out / "results.json").read_text())["results"]["llmlb x2 replicas"]
    assert results["qps"] > 0
