"""Active-active replicas through a real redis-server on a loopback port: shared
in-flight counts and prefix credit, node and breaker changes, a SIGKILLed replica's
counts released after the TTL, Redis stopped mid-run and restarted, a joining replica
NOT_SERVING until warm."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from grpc_harness import Running, merged, running_server, write_config
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis_harness import RedisServer

from grpc_server.llmlb.v1 import router_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "You are the assistant of a bicycle shop; answer in one sentence. " * 10
TTL_S = 1.0


def replica_config(redis: RedisServer, name: str, **settings: Any) -> dict[str, Any]:
    replicas = {"redis_url": redis.url, "name": name, "ttl": TTL_S, "heartbeat_interval": 0.2}
    return {"replicas": {**replicas, **settings}}


@asynccontextmanager
async def replicas(
    redis: RedisServer, *names: str, **overrides: Any
) -> AsyncIterator[list[Running]]:
    async with AsyncExitStack() as stack:
        running = []
        for name in names:
            config = {**replica_config(redis, name), **overrides}
            running.append(await stack.enter_async_context(running_server(config)))
        yield running


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def in_flight(replica: Running) -> dict[str, int]:
    return {s.id: s.in_flight for s in replica.server.service.router.nodes()}


async def health(replica: Running) -> int:
    reply = await health_pb2_grpc.HealthStub(replica.channel).Check(
        health_pb2.HealthCheckRequest(service="")
    )
    return int(reply.status)


def test_two_replicas_share_in_flight_counts_and_prefix_credit(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> None:
        async with replicas(redis_server, "one", "two") as (one, two):
            await eventually(lambda: one.server.service.ready and two.server.service.ready)
            routed = await one.stub.Route(pb.RouteRequest(text=PROMPT))
            await eventually(lambda: in_flight(two) == in_flight(one))
            assert in_flight(two)[routed.node_id] == 1
            credit = two.server.service.router.prefix_credit(PROMPT)
            assert credit[routed.node_id].blocks > 0
            # The other replica keeps the conversation where the first put it.
            follow = await two.stub.Route(pb.RouteRequest(text=PROMPT + " And tyres?"))
            assert follow.node_id == routed.node_id
            await eventually(lambda: in_flight(one)[routed.node_id] == 2)
            for replica, reply in ((one, routed), (two, follow)):
                await replica.stub.Complete(
                    pb.CompleteRequest(request_id=reply.request_id, outcome=pb.OUTCOME_OK)
                )
            await eventually(lambda: in_flight(one) == in_flight(two) == {"a": 0, "b": 0})

    asyncio.run(scenario())


def test_node_registrations_and_breaker_openings_reach_every_replica(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> None:
        nodes = [
            {"id": n, "address": f"10.0.0.{i}:8000", "models": ["m"]} for i, n in enumerate("ab")
        ]
        async with replicas(redis_server, "one", "two", nodes=nodes) as (one, two):
            await eventually(lambda: two.server.service.ready)
            node = pb.NodeSpec(id="c", address="10.0.0.3:8000", models=["only-c"])
            await one.stub.RegisterNode(pb.RegisterNodeRequest(node=node))
            await eventually(lambda: "c" in in_flight(two))
            threshold = one.server.service.config.breaker.failure_threshold
            for _ in range(threshold):
                reply = await one.stub.Route(pb.RouteRequest(text="x", model="only-c"))
                assert reply.node_id == "c"
                await one.stub.Complete(
                    pb.CompleteRequest(request_id=reply.request_id, outcome=pb.OUTCOME_ERROR)
                )
            assert one.server.service.breakers.state("c") == "open"
            await eventually(lambda: two.server.service.breakers.state("c") == "open")
            await one.stub.DeregisterNode(pb.DeregisterNodeRequest(node_id="c"))
            await eventually(lambda: "c" not in in_flight(two))

    asyncio.run(scenario())


def test_a_killed_replicas_requests_stop_counting_after_the_ttl(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    path = tmp_path / "victim.yaml"
    write_config(path, merged(replica_config(redis_server, "victim")))
    process = subprocess.Popen(
        [sys.executable, "-m", "llmlb_fast.cli", "serve", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )

    async def scenario() -> None:
        assert process.stdout is not None
        line = await asyncio.to_thread(process.stdout.readline)
        port = int(line.split("port ")[1].split(";")[0])
        async with replicas(redis_server, "survivor") as (survivor,):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                from grpc_server.llmlb.v1 import router_pb2_grpc as pb_grpc

                victim = pb_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
                for i in range(6):
                    await victim.Route(pb.RouteRequest(text=f"{PROMPT} {i}"))
            router = survivor.server.service.router
            await eventually(lambda: router.remote_in_flight_total == 6)
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            killed_at = time.monotonic()
            await eventually(lambda: router.remote_in_flight_total == 0, timeout_s=TTL_S + 3)
            assert time.monotonic() - killed_at >= TTL_S * 0.5  # not before the TTL
            assert sum(in_flight(survivor).values()) == 0

    try:
        asyncio.run(scenario())
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_routing_goes_on_without_redis_and_resyncs_when_it_returns(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> None:
        async with replicas(redis_server, "one", "two") as (one, two):
            await eventually(lambda: two.server.service.ready)
            early = [await one.stub.Route(pb.RouteRequest(text=f"{PROMPT} {i}")) for i in range(4)]
            await eventually(lambda: two.server.service.router.remote_in_flight_total == 4)
            redis_server.stop()
            # Every request is routed, at once, on what each replica knows.
            started = time.monotonic()
            late = [await one.stub.Route(pb.RouteRequest(text=f"{PROMPT} x{i}")) for i in range(4)]
            own = await two.stub.Route(pb.RouteRequest(text="hello"))
            assert time.monotonic() - started < 1.0
            for reply in early[:3]:  # completions the other replica cannot hear of
                await one.stub.Complete(
                    pb.CompleteRequest(request_id=reply.request_id, outcome=pb.OUTCOME_OK)
                )
            assert len({r.request_id for r in late}) == 4 and own.node_id
            redis_server.start()
            # Resynchronised from snapshots: 1 early + 4 late requests of the first replica.
            await eventually(
                lambda: two.server.service.router.remote_in_flight_total == 5, timeout_s=10
            )
            await eventually(lambda: one.server.service.router.remote_in_flight_total == 1)
            assert in_flight(one) == in_flight(two)
            assert one.server.service.replication is not None
            assert one.server.service.replication.link.counters.reconnects >= 1

    asyncio.run(scenario())


def test_a_joining_replica_is_not_serving_until_warm(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with replicas(redis_server, "old") as (old,):
            for i in range(3):
                await old.stub.Route(pb.RouteRequest(text=f"{PROMPT} {i}"))
            # Routed and ended before anyone joined: only the stream's history has it.
            ended = await old.stub.Route(pb.RouteRequest(text="Long ago. " * 40))
            await old.stub.Complete(
                pb.CompleteRequest(request_id=ended.request_id, outcome=pb.OUTCOME_OK)
            )
            # A member that is listed but never answers holds the joiner back until the
            # warm-up timeout; then it serves on what it knows.
            redis_server.client().zadd(
                "{llmlb:default}:members", {"mute": int(time.time() * 1e3) + 60_000}
            )
            overrides = {
                **replica_config(redis_server, "new", warmup_timeout=1.5),
                "proxy": {"enabled": True, "listen": "127.0.0.1:0"},
            }
            async with running_server(overrides) as new, aiohttp.ClientSession() as http:
                started = time.monotonic()
                url = f"http://127.0.0.1:{new.server.proxy_port}/health"
                assert await health(new) == health_pb2.HealthCheckResponse.NOT_SERVING
                async with http.get(url) as response:
                    assert response.status == 503
                    assert (await response.json())["status"] == "warming_up"
                await eventually(lambda: new.server.service.router.remote_in_flight_total == 3)
                assert await health(new) == health_pb2.HealthCheckResponse.NOT_SERVING
                credit = new.server.service.router.prefix_credit("Long ago. " * 40)
                assert credit[ended.node_id].blocks > 0  # replayed from the stream
                await eventually(lambda: new.server.service.ready, timeout_s=5)
                assert time.monotonic() - started >= 1.0
                await asyncio.sleep(0.1)
                assert await health(new) == health_pb2.HealthCheckResponse.SERVING
                async with http.get(url) as response:
                    assert response.status == 200
            redis_server.client().zrem("{llmlb:default}:members", "mute")
            async with running_server(replica_config(redis_server, "third")) as third:
                await eventually(lambda: third.server.service.ready, timeout_s=1.0)
                assert third.server.service.router.remote_in_flight_total == 3

    asyncio.run(scenario())


def test_a_request_through_one_replicas_proxy_counts_on_the_other(
    redis_server: RedisServer,
) -> None:
    """The Rust proxy's decisions, first tokens and completions reach the other replica
    (through the service's batches, then Redis), like gRPC-routed ones."""
    from proxy_backends import MODEL, Backend

    async def scenario() -> None:
        resume = asyncio.Event()
        backend = Backend("a", hold=resume, stall_after_first=True)
        await backend.start()
        overrides = {
            "nodes": [{"id": "a", "address": backend.address}],
            "proxy": {"enabled": True, "listen": "127.0.0.1:0"},
        }
        try:
            async with (
                replicas(redis_server, "one", "two", **overrides) as (one, two),
                aiohttp.ClientSession() as http,
            ):
                other = two.server.service.router
                await eventually(lambda: one.server.service.ready and two.server.service.ready)
                url = f"http://127.0.0.1:{one.server.proxy_port}/v1/completions"
                body = {"model": MODEL, "prompt": PROMPT, "stream": True}
                async with http.post(url, json=body) as response:
                    assert response.status == 200
                    await response.content.readany()  # the first chunk is in
                    await eventually(lambda: other.remote_in_flight_total == 1)
                    assert other.prefix_credit(PROMPT, model=MODEL)["a"].blocks > 0
                    resume.set()
                    await response.read()
                await eventually(lambda: other.remote_in_flight_total == 0)
        finally:
            resume.set()
            await backend.stop()

    asyncio.run(scenario())
