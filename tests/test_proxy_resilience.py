"""Retries, timeouts, migration on a breaker trip and client disconnects, on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from llmlb_fast import Node, Router, RouterConfig
from llmlb_fast.transports.proxy import ProxyServer, ProxySettings
from proxy_backends import MODEL, Backend, closed_port_address, sse_chunks
from service_harness import RecordingService

FAST_RETRY = ProxySettings(backoff_base_s=0.001, backoff_cap_s=0.01)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def body(prompt: str = "tell me a story", **extra: object) -> dict[str, object]:
    return {"model": MODEL, "prompt": prompt, "stream": True, **extra}


async def eventually(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


class Cluster:
    """Backends + router + proxy; checks that nothing stays in flight at the end."""

    def __init__(
        self,
        backends: list[Backend],
        extra_nodes: list[Node] | None = None,
        settings: ProxySettings = FAST_RETRY,
        policy: str = "llmlb",
    ) -> None:
        self.backends = backends
        self.extra_nodes = extra_nodes or []
        self.settings = settings
        self.policy = policy

    async def __aenter__(self) -> Cluster:
        for backend in self.backends:
            await backend.start()
        nodes = [*self.extra_nodes, *(Node(b.name, b.address) for b in self.backends)]
        self.router = Router(RouterConfig(policy=self.policy), nodes)
        self.service = RecordingService(self.router)
        self.completions = self.service.completions
        self.proxy = ProxyServer(self.service, self.settings)
        self.url = f"http://127.0.0.1:{await self.proxy.start()}"
        self.client = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        await self.proxy.stop()
        for backend in self.backends:
            await backend.stop()
        if exc[0] is None:
            assert self.router.in_flight_total == 0

    async def post(self, payload: dict[str, object]) -> tuple[int, bytes, str | None]:
        async with self.client.post(self.url + "/v1/completions", json=payload) as resp:
            return resp.status, await resp.read(), resp.headers.get("x-llmlb-node")

    def outcomes(self, node_id: str) -> list[str]:
        self.proxy.flush()  # completions reach the service in batches
        return [c.outcome for c in self.completions if c.node_id == node_id]


def test_connect_errors_are_retried_on_another_node() -> None:
    async def scenario() -> None:
        dead = Node("dead", closed_port_address())
        async with Cluster([Backend("live")], [dead]) as c:
            results = [await c.post(body(f"prompt {i}")) for i in range(6)]
            assert all(status == 200 for status, _, _ in results)
            assert all(node == "live" for _, _, node in results)
            assert all(data == b"".join(sse_chunks(3)) for _, data, _ in results)
            # The dead node was tried (and reported failing), the client never saw it.
            assert c.outcomes("dead") and set(c.outcomes("dead")) == {"error"}
            assert c.outcomes("live") == ["ok"] * 6

    run(scenario)


def test_5xx_before_the_first_byte_is_retried_elsewhere() -> None:
    async def scenario() -> None:
        flaky = Backend("flaky", fail_first=100, fail_status=503)
        async with Cluster([flaky, Backend("good")], policy="round_robin") as c:
            for i in range(4):
                status, data, node = await c.post(body(f"p{i}"))
                assert (status, node) == (200, "good")
                assert data == b"".join(sse_chunks(3))
            assert len(flaky.received) >= 1
            assert set(c.outcomes("flaky")) == {"error"}

    run(scenario)


def test_a_retry_excludes_failed_nodes_and_blames_no_other_node() -> None:
    async def scenario() -> None:
        # The dead node holds the prompt's prefix, so prefix-aware routing picks it again
        # on the retry; the retry must go elsewhere without completing spare decisions.
        dead = Node("dead", closed_port_address())
        async with Cluster([Backend("live")], [dead], policy="prefix_aware") as c:
            warm = c.router.route("same prompt", exclude=["live"])
            c.router.complete(warm.request_id, "error")
            for _ in range(3):
                status, _, node = await c.post(body("same prompt"))
                assert (status, node) == (200, "live")
            dead_stats = c.router.node_stats("dead")
            assert dead_stats["ok"] == 0
            assert dead_stats["completed"] == 1 + len(c.outcomes("dead"))
            assert c.outcomes("dead") and set(c.outcomes("dead")) == {"error"}
            assert c.router.node_stats("live")["completed"] == 3

    run(scenario)


def test_a_single_node_is_retried_after_a_transient_failure() -> None:
    async def scenario() -> None:
        flaky = Backend("only", fail_first=1, fail_status=503)
        async with Cluster([flaky]) as c:
            status, data, node = await c.post(body())
            assert (status, node, data) == (200, "only", b"".join(sse_chunks(3)))
            assert c.outcomes("only") == ["error", "ok"]

    run(scenario)


def test_all_attempts_failing_gives_502_and_releases_every_slot() -> None:
    async def scenario() -> None:
        dead = [Node(f"dead{i}", closed_port_address()) for i in range(2)]
        async with Cluster([], dead) as c:
            async with c.client.post(c.url + "/v1/completions", json=body()) as resp:
                assert resp.status == 502
                error = (await resp.json())["error"]
            assert error["code"] == "upstream_failed"
            assert "3 attempts" in error["message"]
            c.proxy.flush()
            assert [x.outcome for x in c.completions] == ["error"] * 3

    run(scenario)


def test_timeout_answers_504_and_is_reported() -> None:
    async def scenario() -> None:
        never = asyncio.Event()
        slow = Backend("slow", hold=never)
        settings = ProxySettings(request_timeout_s=0.3)
        async with Cluster([slow], settings=settings) as c:
            started = time.monotonic()
            async with c.client.post(c.url + "/v1/completions", json=body()) as resp:
                assert resp.status == 504
                assert (await resp.json())["error"]["code"] == "upstream_timeout"
            assert time.monotonic() - started < 2.0
            c.proxy.flush()
            assert c.service.timed_out_nodes == ["slow"]
            assert c.outcomes("slow") == ["timeout"]
            never.set()

    run(scenario)


def test_breaker_trip_migrates_requests_that_have_not_streamed() -> None:
    async def scenario() -> None:
        stuck = asyncio.Event()
        sick = Backend("sick", hold=stuck)
        healthy = Backend("healthy")
        await healthy.start()
        async with Cluster([sick]) as c:
            # Only the sick node exists at first, so every request lands there and waits.
            posts = [asyncio.ensure_future(c.post(body(f"q{i}"))) for i in range(4)]
            await eventually(lambda: len(sick.received) == 4)
            c.router.upsert_node(Node("healthy", healthy.address))
            # What the service's breaker does on a trip:
            c.router.set_breaker_state("sick", "open")
            moved = c.proxy.migrate("sick", c.router.in_flight_request_ids("sick"))
            assert len(moved) == 4
            results = await asyncio.gather(*posts)
            assert [(status, node) for status, _, node in results] == [(200, "healthy")] * 4
            assert all(data == b"".join(sse_chunks(3)) for _, data, _ in results)
            assert c.outcomes("healthy") == ["ok"] * 4
            await eventually(lambda: sick.cancelled == 4)  # cancelled on the sick node
            stuck.set()
        await healthy.stop()

    run(scenario)


def test_migration_leaves_requests_that_already_stream() -> None:
    async def scenario() -> None:
        resume = asyncio.Event()
        streaming = Backend("a", hold=resume, stall_after_first=True)
        async with Cluster([streaming, Backend("b")], policy="round_robin") as c:
            async with c.client.post(c.url + "/v1/completions", json=body()) as resp:
                assert resp.headers["x-llmlb-node"] == "a"
                first = await resp.content.readany()
                assert first == sse_chunks(3)[0]
                c.router.set_breaker_state("a", "open")
                assert c.proxy.migrate("a", c.router.in_flight_request_ids("a")) == []
                resume.set()
                rest = await resp.read()
            assert first + rest == b"".join(sse_chunks(3))
            assert c.outcomes("a") == ["ok"]

    run(scenario)


@pytest.mark.parametrize("stage", ["before_first_byte", "mid_stream"])
def test_client_disconnect_releases_the_slot(stage: str) -> None:
    async def scenario() -> None:
        held = asyncio.Event()
        backend = Backend("a", hold=held, stall_after_first=stage == "mid_stream")
        async with Cluster([backend]) as c:

            async def disconnecting_client() -> None:
                async with (
                    aiohttp.ClientSession() as session,
                    session.post(c.url + "/v1/completions", json=body()) as resp,
                ):
                    await resp.content.readany()
                    await asyncio.sleep(3600)

            client = asyncio.ensure_future(disconnecting_client())
            await eventually(lambda: c.router.in_flight_total == 1 and backend.arrived.is_set())
            await asyncio.sleep(0.05)
            client.cancel()  # closes the client's connection
            await eventually(lambda: c.router.in_flight_total == 0)
            # The proxy also dropped its upstream request.
            await eventually(lambda: backend.cancelled == 1)
            assert c.outcomes("a") == ["ok"]
            held.set()

    run(scenario)


def test_backend_dying_mid_stream_truncates_the_client_stream() -> None:
    async def scenario() -> None:
        backend = Backend("a", break_after_first=True)
        async with Cluster([backend]) as c:
            async with c.client.post(c.url + "/v1/completions", json=body()) as resp:
                assert resp.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    await resp.read()
            await eventually(lambda: c.router.in_flight_total == 0)
            assert c.outcomes("a") == ["error"]

    run(scenario)
