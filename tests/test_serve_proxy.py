"""``llmlb serve --config FILE`` with the HTTP proxy enabled, as a real process in front of
two aiohttp test backends on 127.0.0.1: streaming, breaker-driven migration, one router
shared by gRPC and the proxy, unknown models, and draining on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from grpc_harness import write_config
from prometheus_client.parser import text_string_to_metric_families
from proxy_backends import MODEL, Backend, sse_chunks

from grpc_server.llmlb.v1 import router_pb2 as pb
from grpc_server.llmlb.v1 import router_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
STREAMED = b"".join(sse_chunks(3))
CHAT = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Tell me a story."},
    ],
    "stream": True,
}


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def serve_config(backends: list[Backend], **sections: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "policy": "round_robin",
        "server": {"listen": "127.0.0.1:0", "metrics_port": 0},
        "proxy": {"enabled": True, "listen": "127.0.0.1:0", "backoff_cap": 0.01},
        "timeouts": {"drain": 5},
        "nodes": [{"id": b.name, "address": b.address, "models": [MODEL]} for b in backends],
    }
    config.update(sections)
    return config


@dataclass
class Served:
    process: asyncio.subprocess.Process
    proxy_url: str
    metrics_url: str
    stub: pb_grpc.RouterStub
    client: aiohttp.ClientSession

    async def send(
        self,
        payload: dict[str, Any],
        path: str = "/v1/chat/completions",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes, str | None]:
        """Status, body and the node that answered."""
        url = self.proxy_url + path
        async with self.client.post(url, json=payload, headers=headers) as response:
            return response.status, await response.read(), response.headers.get("x-llmlb-node")

    async def in_flight(self) -> dict[str, int]:
        reply = await self.stub.ListNodes(pb.ListNodesRequest())
        return {n.node.id: n.in_flight for n in reply.nodes}

    async def breaker(self, node_id: str) -> str:
        reply = await self.stub.ListNodes(pb.ListNodesRequest())
        return next(n.breaker_state for n in reply.nodes if n.node.id == node_id)

    async def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        async with self.client.get(self.metrics_url) as response:
            text = await response.text()
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((sample.labels, sample.value))
        return samples

    async def settled_metric(self, expected: float, name: str, **labels: str) -> float:
        """The sample once it reaches ``expected`` (the proxy's records reach the
        service's metrics in batches, a few ms after the response), or after 2 s."""
        value = 0.0
        for _ in range(100):
            value = sample(await self.metrics(), name, **labels)
            if value == expected:
                break
            await asyncio.sleep(0.02)
        return value


def ports_of(line: str) -> dict[str, int]:
    """``llmlb serving on port 1; metrics port 2; proxy port 3; ext_proc port None`` ->
    the numbers of those that listen."""
    ports = {}
    for part in line.split(";"):
        words = part.split()
        if words[-1].isdigit():
            ports["grpc" if "serving" in words else words[0]] = int(words[-1])
    return ports


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, config: dict[str, Any]) -> AsyncIterator[Served]:
    path = tmp_path / "llmlb.yaml"
    write_config(path, config)
    with open(tmp_path / "serve.log", "wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "llmlb_fast.cli",
            "serve",
            "--config",
            str(path),
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert "serving on port" in line, (line, (tmp_path / "serve.log").read_text())
        ports = ports_of(line)
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{ports['grpc']}") as channel,
            aiohttp.ClientSession() as client,
        ):
            yield Served(
                process,
                f"http://127.0.0.1:{ports['proxy']}",
                f"http://127.0.0.1:{ports['metrics']}/metrics",
                pb_grpc.RouterStub(channel),  # type: ignore[no-untyped-call]
                client,
            )
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def started(backends: list[Backend]) -> list[Backend]:
    for backend in backends:
        await backend.start()
    return backends


async def stopped(backends: list[Backend]) -> None:
    for backend in backends:
        if backend.hold is not None:
            backend.hold.set()
        await backend.stop()


async def arrived_at(backends: list[Backend]) -> tuple[Backend, Backend]:
    """Waits until one of two backends got a request: (that one, the other)."""
    a, b = backends
    waits = [asyncio.ensure_future(x.arrived.wait()) for x in backends]
    await asyncio.wait(waits, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    assert a.arrived.is_set() or b.arrived.is_set(), "no backend got the request"
    return (a, b) if a.arrived.is_set() else (b, a)


def sample(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    values = [v for found, v in samples.get(name, []) if labels.items() <= found.items()]
    return sum(values)


def test_streamed_chat_and_one_router_shared_with_grpc(tmp_path: Path) -> None:
    async def scenario() -> None:
        backends = await started([Backend("a"), Backend("b")])
        try:
            async with serving(tmp_path, serve_config(backends)) as s:
                status, data, node = await s.send(CHAT)
                assert (status, data) == (200, STREAMED)
                assert node in ("a", "b")

                # A request held by its backend is in flight in the router gRPC sees.
                hold = asyncio.Event()
                for backend in backends:
                    backend.hold = hold
                    backend.arrived.clear()
                held = asyncio.ensure_future(s.send(CHAT))
                target, _ = await arrived_at(backends)
                in_flight = await s.in_flight()
                assert in_flight[target.name] == 1 and sum(in_flight.values()) == 1
                scraped = await s.metrics()
                assert sample(scraped, "llmlb_in_flight_requests", node=target.name) == 1
                routed = await s.stub.Route(pb.RouteRequest(text="hello", model=MODEL))
                assert sum((await s.in_flight()).values()) == 2
                hold.set()
                assert (await held)[:2] == (200, STREAMED)
                await s.stub.Complete(
                    pb.CompleteRequest(request_id=routed.request_id, outcome=pb.OUTCOME_OK)
                )
                assert sum((await s.in_flight()).values()) == 0

                # Each request counted once: 2 through the proxy, 1 through gRPC.
                scraped = await s.metrics()
                completions = "llmlb_completions_total"
                assert sample(scraped, completions, policy="round_robin", outcome="ok") == 3
                assert sample(scraped, "llmlb_route_decisions_total", policy="round_robin") == 3
                assert sample(scraped, "llmlb_ttft_seconds_count", policy="round_robin") == 2
        finally:
            await stopped(backends)

    run(scenario)


def test_breaker_trip_migrates_a_waiting_request(tmp_path: Path) -> None:
    async def scenario() -> None:
        hold = asyncio.Event()
        backends = await started([Backend("a", hold=hold), Backend("b", hold=hold)])
        breaker = {"failure_threshold": 1, "cooldown": 60}
        try:
            async with serving(tmp_path, serve_config(backends, breaker=breaker)) as s:
                waiting = asyncio.ensure_future(s.send(CHAT))
                failing, healthy = await arrived_at(backends)
                # The node holding the request starts failing; the other answers at once.
                failing.fail_left = 1_000
                healthy.hold = None
                answers = []
                while await s.breaker(failing.name) != "open":
                    answers.append(await s.send(CHAT))
                    assert len(answers) < 10, "the breaker never opened"
                assert all(a[:2] == (200, STREAMED) for a in answers)
                # The waiting request moved to the healthy node; its client saw no failure.
                status, data, node = await asyncio.wait_for(waiting, 5)
                assert (status, data, node) == (200, STREAMED, healthy.name)
                await eventually(lambda: failing.cancelled == 1)
                assert sum((await s.in_flight()).values()) == 0
        finally:
            await stopped(backends)

    run(scenario)


def test_models_unknown_model_and_configured_models(tmp_path: Path) -> None:
    async def scenario() -> None:
        backends = await started(
            [Backend("a", models=[MODEL, "listed-only"]), Backend("b", models=[MODEL])]
        )
        config = serve_config(backends)
        config["nodes"][0]["models"] = [MODEL, "configured-only"]
        try:
            async with serving(tmp_path, config) as s:
                async with s.client.get(s.proxy_url + "/v1/models") as response:
                    listed = {m["id"] for m in (await response.json())["data"]}
                assert listed == {MODEL, "listed-only", "configured-only"}
                # Neither listed nor configured: the catalogue refuses it.
                # Listed by a backend but no node is configured to serve it: the router does.
                for model in ("gpt-9", "listed-only"):
                    status, data, _ = await s.send({**CHAT, "model": model})
                    assert status == 404, data
                    assert json.loads(data)["error"]["code"] == "model_not_found"
                # The model only node a serves goes to a.
                for _ in range(2):
                    payload = {**CHAT, "model": "configured-only"}
                    assert (await s.send(payload))[::2] == (200, "a")
                assert sum((await s.in_flight()).values()) == 0
                assert len(backends[1].received) == 0
        finally:
            await stopped(backends)

    run(scenario)


def test_sigterm_drains_proxy_requests(tmp_path: Path) -> None:
    async def scenario() -> None:
        hold = asyncio.Event()
        backends = await started([Backend("a", hold=hold), Backend("b", hold=hold)])
        try:
            async with serving(tmp_path, serve_config(backends)) as s:
                waiting = asyncio.ensure_future(s.send(CHAT))
                await arrived_at(backends)
                s.process.send_signal(signal.SIGTERM)
                # Draining: new requests are refused, the one in flight goes on.
                for _ in range(100):
                    status, data, _ = await s.send(CHAT)
                    if status == 503:
                        break
                    await asyncio.sleep(0.02)
                assert (status, b"draining" in data) == (503, True)
                assert s.process.returncode is None
                hold.set()
                assert (await asyncio.wait_for(waiting, 5))[:2] == (200, STREAMED)
                assert await asyncio.wait_for(s.process.wait(), 10) == 0
        finally:
            await stopped(backends)

    run(scenario)


def test_hot_reload_reaches_proxy_traffic(tmp_path: Path) -> None:
    async def scenario() -> None:
        backends = await started([Backend("a"), Backend("b")])
        config = serve_config(backends)
        config["server"]["reload_poll_interval"] = 0.05
        try:
            async with serving(tmp_path, config) as s:
                assert {(await s.send(CHAT))[2] for _ in range(4)} == {"a", "b"}
                # Node b dropped, every request through the canary policy.
                config["nodes"] = config["nodes"][:1]
                config["canary"] = {"policy": "least_request", "percent": 100}
                write_config(tmp_path / "llmlb.yaml", config)
                for _ in range(100):
                    if len(await s.in_flight()) == 1:
                        break
                    await asyncio.sleep(0.02)
                answers = [await s.send(CHAT) for _ in range(3)]
                assert [(status, node) for status, _, node in answers] == [(200, "a")] * 3
                assert len(backends[1].received) == 2
                decisions = await s.settled_metric(
                    3, "llmlb_route_decisions_total", policy="least_request"
                )
                assert decisions == 3
                scraped = await s.metrics()
                assert sample(scraped, "llmlb_config_reloads_total", result="ok") == 1
        finally:
            await stopped(backends)

    run(scenario)


def test_api_keys_guard_the_proxy_and_rotate_on_reload(tmp_path: Path) -> None:
    async def scenario() -> None:
        backends = await started([Backend("a")])
        key_file = tmp_path / "team-b.key"
        key_file.write_text("sk-team-b-0123456789\n")
        keys = [
            {"name": "team-a", "key": "sk-team-a-0123456789"},
            {"name": "team-b", "key_file": str(key_file)},
        ]
        config = serve_config(backends)
        config["proxy"] = {**config["proxy"], "api_keys": keys}
        config["server"]["reload_poll_interval"] = 0.05
        body = {**CHAT, "stream": False}

        def bearer(key: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {key}"}

        try:
            async with serving(tmp_path, config) as s:
                for headers in (None, bearer("sk-wrong-0123456789"), {"Authorization": "x"}):
                    status, data, _ = await s.send(body, headers=headers)
                    assert status == 401
                    assert json.loads(data)["error"]["code"] == "invalid_api_key"
                assert backends[0].received == []
                async with s.client.get(s.proxy_url + "/health") as response:
                    assert response.status == 200  # probes need no key
                assert (await s.send(body, headers=bearer("sk-team-a-0123456789")))[0] == 200
                assert (await s.send(body, headers=bearer("sk-team-b-0123456789")))[0] == 200
                # The router's key is not the backend's: it is not forwarded.
                assert all("Authorization" not in h for h in backends[0].headers)
                assert await s.settled_metric(1, "llmlb_proxy_requests_total", api_key="team-a")
                refused = await s.settled_metric(
                    3, "llmlb_route_errors_total", transport="proxy", error="unauthorized"
                )
                assert refused == 3
                # Rotated by a reload, no restart: the old key stops working.
                keys[0]["key"] = "sk-team-a-rotated-99"
                write_config(tmp_path / "llmlb.yaml", config)
                for _ in range(100):
                    status, _, _ = await s.send(body, headers=bearer("sk-team-a-0123456789"))
                    if status == 401:
                        break
                    await asyncio.sleep(0.05)
                assert status == 401
                assert (await s.send(body, headers=bearer("sk-team-a-rotated-99")))[0] == 200
        finally:
            await stopped(backends)

    run(scenario)
