"""Admission control in the Rust proxy: an in-flight cap with a bounded wait queue and a
deadline, and a request rate per API key, answered with 429 and Retry-After."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from llmlb_fast import Node, Router
from llmlb_fast.config import ServiceConfig
from llmlb_fast.transports.proxy import ProxyServer
from proxy_backends import MODEL, Backend
from service_harness import RecordingService


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


@asynccontextmanager
async def proxied(backend: Backend, proxy: dict[str, Any]) -> AsyncIterator[tuple[str, Any]]:
    await backend.start()
    config = ServiceConfig.model_validate({"proxy": proxy})
    service = RecordingService(Router(config.router_config(), [Node("a", backend.address)]), config)
    server = ProxyServer(service, None)
    url = f"http://127.0.0.1:{await server.start()}/v1/completions"
    try:
        yield url, (server, service)
    finally:
        await server.stop()
        await backend.stop()
        assert service.router.in_flight_total == 0


async def post(
    client: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None, **extra: Any
) -> tuple[int, dict[str, Any] | bytes, str | None]:
    body = {"model": MODEL, "prompt": "hi", **extra}
    async with client.post(url, json=body, headers=headers) as resp:
        data = await resp.read()
        parsed = await resp.json() if resp.status >= 400 else data
        return resp.status, parsed, resp.headers.get("Retry-After")


async def eventually(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_the_cap_queues_then_sheds_with_429() -> None:
    async def scenario() -> None:
        held = asyncio.Event()
        backend = Backend("a", hold=held)
        admission = {"max_in_flight": 2, "queue_size": 1, "queue_timeout": 2}
        async with proxied(backend, {"admission": admission}) as (url, (proxy, service)):
            async with aiohttp.ClientSession() as client:
                running = [asyncio.ensure_future(post(client, url)) for _ in range(2)]
                await eventually(lambda: len(backend.received) == 2)
                queued = asyncio.ensure_future(post(client, url))
                await asyncio.sleep(0.1)
                assert len(backend.received) == 2  # waits for a place, not sent
                status, error, retry_after = await post(client, url)
                assert (status, retry_after) == (429, "1")
                assert isinstance(error, dict)
                assert error["error"]["code"] == "too_many_requests"
                held.set()
                results = await asyncio.gather(*running, queued)
                assert [r[0] for r in results] == [200, 200, 200]
                assert len(backend.received) == 3
            proxy.flush()
            assert service.route_errors("proxy", "queue_full") == 1

    run(scenario)


def test_a_wait_past_the_deadline_is_a_429_and_a_stream_holds_its_place() -> None:
    async def scenario() -> None:
        resume = asyncio.Event()
        backend = Backend("a", hold=resume, stall_after_first=True)
        admission = {"max_in_flight": 1, "queue_size": 4, "queue_timeout": 0.3}
        async with proxied(backend, {"admission": admission}) as (url, (proxy, service)):
            async with aiohttp.ClientSession() as client:
                body = {"model": MODEL, "prompt": "story", "stream": True}
                async with client.post(url, json=body) as streaming:
                    await streaming.content.readany()  # streaming, holding the one place
                    started = time.monotonic()
                    status, _, _ = await post(client, url)
                    assert status == 429
                    assert 0.25 < time.monotonic() - started < 2.0
                    resume.set()
                    await streaming.read()
                assert (await post(client, url))[0] == 200  # the place is free again
            proxy.flush()
            assert service.route_errors("proxy", "queue_timeout") == 1

    run(scenario)


def test_each_api_key_gets_its_rate() -> None:
    async def scenario() -> None:
        keys = [
            {"name": "slow", "key": "sk-slow-0123456789", "rate": 0.5, "burst": 2},
            {"name": "free", "key": "sk-free-0123456789"},
        ]
        async with proxied(Backend("a"), {"api_keys": keys}) as (url, (proxy, service)):
            slow = {"Authorization": "Bearer sk-slow-0123456789"}
            free = {"Authorization": "Bearer sk-free-0123456789"}
            async with aiohttp.ClientSession() as client:
                assert [(await post(client, url, slow))[0] for _ in range(2)] == [200, 200]
                status, error, retry_after = await post(client, url, slow)
                assert status == 429 and retry_after is not None and int(retry_after) >= 1
                assert isinstance(error, dict)
                assert error["error"]["code"] == "rate_limit_exceeded"
                # Another key is not held back by it.
                assert [(await post(client, url, free))[0] for _ in range(5)] == [200] * 5
            proxy.flush()
            assert service.route_errors("proxy", "rate_limited") == 1

    run(scenario)
