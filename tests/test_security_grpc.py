"""Bearer tokens on every gRPC call (``server.auth``): data-plane and admin tokens,
reflection, health left open for probes, tokens from files and the environment,
rotation by hot reload. Over real gRPC on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_harness import expect_error, merged, running_server, write_config
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from llmlb_fast.config import destructive_changes, parse_config

from grpc_server.llmlb.v1 import router_pb2 as pb

CODE = grpc.StatusCode
ROUTE_KEY = "route-token-0123456789"
ADMIN_KEY = "admin-token-0123456789"
FAST_POLL = {"listen": "127.0.0.1:0", "metrics_port": None, "reload_poll_interval": 0.05}


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def auth(route: list[dict[str, str]], admin: list[dict[str, str]]) -> dict[str, Any]:
    return {"server": {**FAST_POLL, "auth": {"route_tokens": route, "admin_tokens": admin}}}


BOTH = auth([{"name": "gateway", "key": ROUTE_KEY}], [{"name": "ops", "key": ADMIN_KEY}])


async def route_and_complete(stub: Any, metadata: Any) -> None:
    routed = await stub.Route(pb.RouteRequest(text="hello"), metadata=metadata)
    done = pb.CompleteRequest(request_id=routed.request_id, outcome=pb.OUTCOME_OK)
    await stub.Complete(done, metadata=metadata)


def test_data_plane_calls_need_a_route_or_admin_token() -> None:
    async def scenario() -> None:
        async with running_server(BOTH) as s:
            details = await expect_error(
                s.stub.Route(pb.RouteRequest(text="x")), CODE.UNAUTHENTICATED
            )
            assert "missing" in details
            wrong = bearer("not-a-token-at-all")
            details = await expect_error(
                s.stub.Route(pb.RouteRequest(text="x"), metadata=wrong), CODE.UNAUTHENTICATED
            )
            assert "wrong" in details
            complete = pb.CompleteRequest(request_id="someone-elses", outcome=pb.OUTCOME_ERROR)
            await expect_error(s.stub.Complete(complete), CODE.UNAUTHENTICATED)
            await expect_error(
                s.stub.FirstToken(pb.FirstTokenRequest(request_id="x")), CODE.UNAUTHENTICATED
            )

            async def one_batch() -> AsyncIterator[pb.RouteStreamRequest]:
                yield pb.RouteStreamRequest(calls=[pb.StreamCall(route=pb.RouteRequest(text="x"))])

            stream = s.stub.RouteStream(one_batch())
            assert await stream.code() == CODE.UNAUTHENTICATED
            for key in (ROUTE_KEY, ADMIN_KEY):
                await route_and_complete(s.stub, bearer(key))
            replies = [r async for r in s.stub.RouteStream(one_batch(), metadata=bearer(ROUTE_KEY))]
            assert len(replies[0].results) == 1
            assert s.server.service.in_flight_total == 1  # the streamed route, not completed
            assert (
                len(s.server.service.router.in_flight_request_ids("a"))
                + len(s.server.service.router.in_flight_request_ids("b"))
                == 1
            )

    asyncio.run(scenario())


def test_admin_calls_refuse_route_tokens_and_anonymous_callers() -> None:
    async def scenario() -> None:
        async with running_server(BOTH) as s:
            listing = pb.ListNodesRequest()
            await expect_error(s.stub.ListNodes(listing), CODE.UNAUTHENTICATED)
            details = await expect_error(
                s.stub.ListNodes(listing, metadata=bearer(ROUTE_KEY)), CODE.PERMISSION_DENIED
            )
            assert "route token" in details
            spec = pb.RegisterNodeRequest(node=pb.NodeSpec(id="c", address="http://10.0.0.3:80"))
            await expect_error(
                s.stub.RegisterNode(spec, metadata=bearer(ROUTE_KEY)), CODE.PERMISSION_DENIED
            )
            events = s.stub.WatchEvents(pb.WatchEventsRequest())
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in events:
                    pass
            assert refused.value.code() == CODE.UNAUTHENTICATED
            assert (await s.stub.RegisterNode(spec, metadata=bearer(ADMIN_KEY))).created
            nodes = await s.stub.ListNodes(listing, metadata=bearer(ADMIN_KEY))
            assert {n.node.id for n in nodes.nodes} == {"a", "b", "c"}

    asyncio.run(scenario())


def test_reflection_needs_a_token_and_health_stays_open() -> None:
    async def scenario() -> None:
        async with running_server(BOTH) as s:
            health = health_pb2_grpc.HealthStub(s.channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            reflect = reflection_pb2_grpc.ServerReflectionStub(s.channel)

            async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
                yield reflection_pb2.ServerReflectionRequest(list_services="")

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in reflect.ServerReflectionInfo(ask()):
                    pass
            assert refused.value.code() == CODE.UNAUTHENTICATED
            replies = [
                r async for r in reflect.ServerReflectionInfo(ask(), metadata=bearer(ROUTE_KEY))
            ]
            services = {svc.name for svc in replies[0].list_services_response.service}
            assert "llmlb.v1.Router" in services

    asyncio.run(scenario())


def test_admin_token_alone_leaves_the_data_plane_open() -> None:
    async def scenario() -> None:
        async with running_server(auth([], [{"name": "ops", "key": ADMIN_KEY}])) as s:
            await route_and_complete(s.stub, ())
            await expect_error(s.stub.ListNodes(pb.ListNodesRequest()), CODE.UNAUTHENTICATED)

    asyncio.run(scenario())


def test_tokens_from_files_and_env_rotate_on_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "route-token"
    secret.write_text(ROUTE_KEY + "\n")  # a mounted secret ends with a newline
    monkeypatch.setenv("LLMLB_TEST_ADMIN_TOKEN", ADMIN_KEY)
    path = tmp_path / "llmlb.yaml"
    first = auth(
        [{"name": "gateway", "key_file": str(secret)}],
        [{"name": "ops", "key_env": "LLMLB_TEST_ADMIN_TOKEN"}],
    )
    rotated_key = "rotated-route-token-0123"

    async def scenario() -> None:
        async with running_server(first, config_path=path) as s:
            await route_and_complete(s.stub, bearer(ROUTE_KEY))
            second = auth(
                [{"name": "gateway", "key": rotated_key}], first["server"]["auth"]["admin_tokens"]
            )
            write_config(path, merged(second))
            for _ in range(200):
                if s.server.service.grpc_credentials.route == (rotated_key.encode(),):
                    break
                await asyncio.sleep(0.02)
            await expect_error(
                s.stub.Route(pb.RouteRequest(text="x"), metadata=bearer(ROUTE_KEY)),
                CODE.UNAUTHENTICATED,
            )
            await route_and_complete(s.stub, bearer(rotated_key))
            # A token file that goes missing fails the reload: the last good tokens stay.
            broken = auth([{"name": "gateway", "key_file": str(tmp_path / "gone")}], [])
            write_config(path, merged(broken))
            await asyncio.sleep(0.3)
            await route_and_complete(s.stub, bearer(rotated_key))
            assert s.server.service.grpc_credentials.admin == (ADMIN_KEY.encode(),)

    asyncio.run(scenario())


def test_a_reload_that_drops_every_token_is_refused() -> None:
    guarded = parse_config(merged(BOTH))
    opened = parse_config(merged({"server": FAST_POLL}))
    assert destructive_changes(guarded, opened) == [
        "it drops every server.auth.route_tokens",
        "it drops every server.auth.admin_tokens",
    ]
    allowed = parse_config(merged({"server": {**FAST_POLL, "allow_destructive_reload": True}}))
    assert destructive_changes(guarded, allowed) == []


def test_registration_refuses_addresses_that_are_not_http_host_port() -> None:
    async def scenario() -> None:
        async with running_server() as s:
            for address in ("", "http://a\r\nx:1", "file:///etc/passwd", "ftp://x:21", "h:0"):
                spec = pb.RegisterNodeRequest(node=pb.NodeSpec(id="c", address=address))
                details = await expect_error(s.stub.RegisterNode(spec), CODE.INVALID_ARGUMENT)
                assert "address" in details
            for address in ("10.0.0.3:8000", "https://gpu-3.internal/v1"):
                spec = pb.RegisterNodeRequest(node=pb.NodeSpec(id="c", address=address))
                await s.stub.RegisterNode(spec)

    asyncio.run(scenario())


def test_config_refuses_a_node_address_of_another_scheme() -> None:
    with pytest.raises(ValueError, match="must be http"):
        parse_config(merged({"nodes": [{"id": "a", "address": "ftp://10.0.0.1:21"}]}))
