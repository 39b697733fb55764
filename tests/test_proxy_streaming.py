"""The Rust proxy's byte path on loopback: SSE frames forwarded as they arrive, slow
readers held back by backpressure instead of buffered, streams limited by silence
rather than by their length, and one routing key for every transport."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from llmlb_fast import Node, Router, RouterConfig
from llmlb_fast._core import routing_key
from llmlb_fast.config import ServiceConfig
from llmlb_fast.transports.proxy import ProxyServer, ProxySettings
from proxy_backends import MODEL, Backend, sse_chunks
from service_harness import RecordingService


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


async def proxied(
    backends: list[Backend], settings: ProxySettings | None = None
) -> tuple[ProxyServer, RecordingService, str]:
    for backend in backends:
        await backend.start()
    router = Router(RouterConfig(policy="llmlb"), [Node(b.name, b.address) for b in backends])
    service = RecordingService(router)
    proxy = ProxyServer(service, settings)
    return proxy, service, f"http://127.0.0.1:{await proxy.start()}"


def stream_body() -> dict[str, object]:
    return {"model": MODEL, "prompt": "Once upon a time", "stream": True}


def test_each_sse_chunk_is_forwarded_as_it_arrives() -> None:
    async def scenario() -> None:
        # 30 chunks 20 ms apart: a chunk buffered until more bytes come would arrive 20 ms
        # late. (Nagle's algorithm does not stall loopback streams here even without
        # TCP_NODELAY, which the proxy sets on both sides; this checks the relay itself.)
        backend = Backend("a", chunks=sse_chunks(30), chunk_delay_s=0.02)
        proxy, _service, url = await proxied([backend])
        arrived: list[float] = []
        try:
            async with (
                aiohttp.ClientSession() as client,
                client.post(url + "/v1/completions", json=stream_body()) as resp,
            ):
                async for _chunk in resp.content.iter_any():
                    arrived.append(time.perf_counter())
        finally:
            await proxy.stop()
            await backend.stop()
        # One read per chunk (none coalesced), each right after the backend wrote it.
        assert len(arrived) == len(backend.sent_at) == 31
        lags_ms = [1e3 * (got - sent) for got, sent in zip(arrived, backend.sent_at, strict=True)]
        assert statistics.median(lags_ms) < 1.0, lags_ms
        assert max(lags_ms) < 15.0, lags_ms

    run(scenario)


class FloodBackend:
    """Streams ``total`` bytes as fast as the connection takes them, counting what it
    managed to write."""

    def __init__(self, total: int, chunk: int = 64 * 1024) -> None:
        self.total, self.chunk = total, chunk
        self.written = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/completions", self._stream)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        event = b"data: " + b"x" * (self.chunk - 8) + b"\n\n"
        while self.written < self.total:
            await response.write(event)  # waits while the transport's buffer is full
            self.written += len(event)
        await response.write_eof()
        return response

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def test_a_slow_reader_holds_the_backend_back_instead_of_filling_memory() -> None:
    async def scenario() -> None:
        flood = FloodBackend(total=256 * 1024 * 1024)
        address = await flood.start()
        router = Router(None, [Node("a", address)])
        service = RecordingService(router)
        proxy = ProxyServer(service)
        url = f"http://127.0.0.1:{await proxy.start()}"
        try:
            async with (
                aiohttp.ClientSession() as client,
                client.post(url + "/v1/completions", json=stream_body()) as resp,
            ):
                await resp.content.readany()
                await asyncio.sleep(1.0)  # the client reads nothing for a second
                # Only socket buffers' worth got out of the backend (not 256 MB).
                assert flood.written < 48 * 1024 * 1024, flood.written
                received = 0
                async for chunk in resp.content.iter_any():
                    received += len(chunk)
            assert flood.written == flood.total
            assert received > 0.99 * flood.total - 64 * 1024
        finally:
            await proxy.stop()
            await flood.stop()
        assert router.in_flight_total == 0
        assert [c.outcome for c in service.completions] == ["ok"]

    run(scenario)


def test_a_long_stream_that_keeps_talking_outlives_the_request_timeout() -> None:
    async def scenario() -> None:
        # 12 chunks 0.1 s apart (1.2 s in all) under a 0.4 s timeout: never silent that long.
        backend = Backend("a", chunks=sse_chunks(11), chunk_delay_s=0.1)
        proxy, service, url = await proxied([backend], ProxySettings(request_timeout_s=0.4))
        try:
            async with (
                aiohttp.ClientSession() as client,
                client.post(url + "/v1/completions", json=stream_body()) as resp,
            ):
                assert await resp.read() == b"".join(sse_chunks(11))
        finally:
            await proxy.stop()
            await backend.stop()
        assert [c.outcome for c in service.completions] == ["ok"]

    run(scenario)


def test_a_stream_that_goes_silent_is_cut_and_booked_as_a_timeout() -> None:
    async def scenario() -> None:
        never = asyncio.Event()
        backend = Backend("a", hold=never, stall_after_first=True)
        proxy, service, url = await proxied([backend], ProxySettings(request_timeout_s=0.3))
        try:
            async with (
                aiohttp.ClientSession() as client,
                client.post(url + "/v1/completions", json=stream_body()) as resp,
            ):
                assert resp.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    await resp.read()
        finally:
            never.set()
            await proxy.stop()
            await backend.stop()
        assert [c.outcome for c in service.completions] == ["timeout"]

    run(scenario)


def test_every_transport_hashes_the_same_routing_key() -> None:
    """The chat rendering is pinned; the proxy's requests credit exactly the blocks that
    the same rendered text gets through ``Router.route`` (what gRPC callers and the
    ext_proc picker, which builds its key with the same ``routing_key``, send)."""
    messages = [
        {"role": "system", "content": "You answer in one line. " * 20},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image"}]},
    ]
    body = {"model": MODEL, "messages": messages}
    key = routing_key("/v1/chat/completions", json.dumps(body).encode())
    assert key.prompt == f"<|system|>\n{messages[0]['content']}\n<|user|>\nHi\n"

    async def scenario() -> None:
        backends = [Backend("a"), Backend("b")]
        proxy, service, url = await proxied(backends)
        try:
            async with (
                aiohttp.ClientSession() as client,
                client.post(url + "/v1/chat/completions", json=body) as resp,
            ):
                assert resp.status == 200
                node = resp.headers["x-llmlb-node"]
        finally:
            await proxy.stop()
            for backend in backends:
                await backend.stop()
        router = service.router
        credit = router.prefix_credit(key.prompt, model=MODEL)
        assert credit[node].blocks == len(key.prompt) // router.config.char_block_size
        other = "b" if node == "a" else "a"
        assert other not in credit or credit[other].blocks == 0

    run(scenario)


def test_the_canary_splits_proxy_traffic_by_session() -> None:
    async def scenario() -> None:
        backend = Backend("a")
        await backend.start()
        config = ServiceConfig.model_validate(
            {"policy": "llmlb", "canary": {"policy": "round_robin", "percent": 50}}
        )
        service = RecordingService(
            Router(config.router_config(), [Node("a", backend.address)]), config
        )
        proxy = ProxyServer(service)
        url = f"http://127.0.0.1:{await proxy.start()}/v1/completions"
        policies: dict[str, set[str]] = {}
        try:
            async with aiohttp.ClientSession() as client:
                for session in range(24):
                    for _ in range(4):
                        headers = {"x-session-id": f"user-{session}"}
                        body = {"model": MODEL, "prompt": "hi"}
                        async with client.post(url, json=body, headers=headers) as resp:
                            assert resp.status == 200
                            request_id = resp.headers["x-llmlb-request-id"]
                        proxy.flush()
                        [completion] = [
                            c for c in service.completions if c.request_id == request_id
                        ]
                        policies.setdefault(f"user-{session}", set()).add(completion.policy)
        finally:
            await proxy.stop()
            await backend.stop()
        # Each session stays on one side, the same side the core's rule gives it.
        assert all(len(chosen) == 1 for chosen in policies.values())
        for session, chosen in policies.items():
            expected = "round_robin" if service.canary.choose(session) else "llmlb"
            assert chosen == {expected}
        assert {p for chosen in policies.values() for p in chosen} == {"round_robin", "llmlb"}

    run(scenario)
