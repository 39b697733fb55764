"""Circuit breakers over the real service: trip, half-open probe, recovery, events."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from typing import Any

import grpc
from grpc_harness import Running, expect_error, route_and_complete, running_server

from grpc_server.llmlb.v1 import router_pb2 as pb

BREAKER = {
    "failure_threshold": 3,
    "cooldown": 0.5,
    # KV-use overload is off by default (a busy engine sits near full); these tests opt in.
    "overload": {"window": 0.2, "kv_cache_usage": 0.99},
}


class EventWatcher:
    """Collects WatchEvents messages in the background."""

    def __init__(self, s: Running, kinds: tuple[int, ...] = ()) -> None:
        self.call = s.stub.WatchEvents(pb.WatchEventsRequest(kinds=kinds))
        self.events: list[pb.Event] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> EventWatcher:
        await self.call.initial_metadata()  # subscribed from here on
        self._task = asyncio.create_task(self._collect())
        return self

    async def _collect(self) -> None:
        async for event in self.call:
            self.events.append(event)

    async def wait_for(self, kind: int, timeout: float = 5.0) -> pb.Event:
        async def poll() -> pb.Event:
            while True:
                for event in self.events:
                    if event.kind == kind:
                        self.events.remove(event)
                        return event
                await asyncio.sleep(0.01)

        return await asyncio.wait_for(poll(), timeout)

    def cancel(self) -> None:
        self.call.cancel()


async def _route_to(s: Running, node: str, rid: str) -> pb.RouteResponse:
    """Routes until the request lands on ``node`` (others are completed ok)."""
    for i in range(50):
        routed = await s.stub.Route(pb.RouteRequest(request_id=f"{rid}-{i}", text=f"{rid} {i}"))
        if routed.node_id == node:
            return routed
        await s.stub.Complete(
            pb.CompleteRequest(request_id=routed.request_id, outcome=pb.OUTCOME_OK)
        )
    raise AssertionError(f"never routed to {node}")


def test_breaker_trips_half_opens_and_recovers() -> None:
    async def scenario() -> None:
        async with running_server({"policy": "round_robin", "breaker": BREAKER}) as s:
            watcher = await EventWatcher(s).start()
            stranded = await _route_to(s, "a", "stranded")  # stays in flight on a
            for i in range(3):
                failed = await _route_to(s, "a", f"fail{i}")
                await s.stub.Complete(
                    pb.CompleteRequest(request_id=failed.request_id, outcome=pb.OUTCOME_TIMEOUT)
                )
            opened = await watcher.wait_for(pb.EVENT_KIND_BREAKER_OPENED)
            assert opened.node_id == "a" and opened.to_state == "open"
            assert "3 consecutive failures" in opened.reason
            assert stranded.request_id in opened.in_flight_request_ids
            for i in range(4):  # open: nothing goes to a
                assert (await route_and_complete(s.stub, f"while open {i}")).node_id == "b"
            half = await watcher.wait_for(pb.EVENT_KIND_BREAKER_HALF_OPENED)
            assert half.node_id == "a" and half.from_state == "open"
            # Exactly one probe gets through to a half-open node.
            routed = [await s.stub.Route(pb.RouteRequest(text=f"probe? {i}")) for i in range(6)]
            probes = [r for r in routed if r.node_id == "a"]
            assert len(probes) == 1
            done = await s.stub.Complete(
                pb.CompleteRequest(request_id=probes[0].request_id, outcome=pb.OUTCOME_OK)
            )
            assert done.was_probe
            closed = await watcher.wait_for(pb.EVENT_KIND_BREAKER_CLOSED)
            assert closed.node_id == "a" and closed.reason.startswith("probe")
            nodes = {n.node.id: n for n in (await s.stub.ListNodes(pb.ListNodesRequest())).nodes}
            assert nodes["a"].breaker_state == "closed"
            watcher.cancel()

    asyncio.run(scenario())


async def _half_opened(s: Running) -> EventWatcher:
    """Trips node a (failure_threshold 1) and waits for it to go half-open."""
    watcher = await EventWatcher(s).start()
    failed = await _route_to(s, "a", "f")
    await s.stub.Complete(
        pb.CompleteRequest(request_id=failed.request_id, outcome=pb.OUTCOME_ERROR)
    )
    await watcher.wait_for(pb.EVENT_KIND_BREAKER_OPENED)
    await watcher.wait_for(pb.EVENT_KIND_BREAKER_HALF_OPENED)
    return watcher


def test_failed_probe_reopens() -> None:
    async def scenario() -> None:
        breaker = {**BREAKER, "failure_threshold": 1}
        async with running_server({"policy": "round_robin", "breaker": breaker}) as s:
            watcher = await _half_opened(s)
            probe = await _route_to(s, "a", "probe")
            await s.stub.Complete(
                pb.CompleteRequest(request_id=probe.request_id, outcome=pb.OUTCOME_ERROR)
            )
            reopened = await watcher.wait_for(pb.EVENT_KIND_BREAKER_OPENED)
            assert reopened.from_state == "half_open" and "probe" in reopened.reason
            watcher.cancel()

    asyncio.run(scenario())


def test_half_open_admits_the_configured_number_of_probes() -> None:
    async def scenario() -> None:
        breaker = {**BREAKER, "failure_threshold": 1, "half_open_probes": 3}
        async with running_server({"policy": "round_robin", "breaker": breaker}) as s:
            watcher = await _half_opened(s)
            routed = [await s.stub.Route(pb.RouteRequest(text=f"probe? {i}")) for i in range(12)]
            probes = [r for r in routed if r.node_id == "a"]
            assert len(probes) == 3  # three at once, the rest elsewhere
            done = await s.stub.Complete(
                pb.CompleteRequest(request_id=probes[0].request_id, outcome=pb.OUTCOME_OK)
            )
            assert done.was_probe
            closed = await watcher.wait_for(pb.EVENT_KIND_BREAKER_CLOSED)
            assert closed.node_id == "a"
            for r in [*probes[1:], *(r for r in routed if r.node_id != "a")]:
                await s.stub.Complete(
                    pb.CompleteRequest(request_id=r.request_id, outcome=pb.OUTCOME_OK)
                )
            watcher.cancel()

    asyncio.run(scenario())


def test_sustained_overload_trips_and_filters_events() -> None:
    async def scenario() -> None:
        async with running_server({"breaker": BREAKER}) as s:
            watcher = await EventWatcher(s, kinds=(pb.EVENT_KIND_BREAKER_OPENED,)).start()

            async def overloaded():  # type: ignore[no-untyped-def]
                for _ in range(4):
                    yield pb.NodeMetrics(node_id="b", kv_cache_usage=0.995)
                    await asyncio.sleep(0.1)

            await s.stub.ReportMetrics(overloaded())
            opened = await watcher.wait_for(pb.EVENT_KIND_BREAKER_OPENED)
            assert opened.node_id == "b" and "kv_cache_usage" in opened.reason
            await asyncio.sleep(0.5)  # half-open happened, but this watcher filters it out
            assert all(e.kind == pb.EVENT_KIND_BREAKER_OPENED for e in watcher.events)
            details = await expect_error(
                s.stub.WatchEvents(pb.WatchEventsRequest(kinds=[99])).read(),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
            assert "99" in details
            watcher.cancel()

    asyncio.run(scenario())


def test_breaker_events_are_posted_to_the_webhook() -> None:
    received: list[dict[str, Any]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    hook = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=hook.serve_forever, daemon=True)
    thread.start()

    async def scenario() -> None:
        overrides = {
            "policy": "round_robin",
            "breaker": {**BREAKER, "failure_threshold": 1, "cooldown": 60},
            "alerts": {"webhook_url": f"http://127.0.0.1:{hook.server_port}/alert"},
        }
        async with running_server(overrides) as s:
            failed = await _route_to(s, "b", "f")
            await s.stub.Complete(
                pb.CompleteRequest(request_id=failed.request_id, outcome=pb.OUTCOME_ERROR)
            )
            for _ in range(200):
                if received:
                    break
                await asyncio.sleep(0.01)
            await s.server.service.alerter.drain()

    try:
        asyncio.run(scenario())
    finally:
        hook.shutdown()
        hook.server_close()
        thread.join()
    assert received and received[0]["kind"] == "breaker_opened"
    assert received[0]["node_id"] == "b"
