"""Model-aware routing and request expiry over the real service."""

from __future__ import annotations

import asyncio

import grpc
from grpc_harness import Running, expect_error, route_and_complete, running_server

from grpc_server.llmlb.v1 import router_pb2 as pb

CODE = grpc.StatusCode
NODES = [
    {"id": "a", "address": "10.0.0.1:8000", "models": ["llama-3-70b"]},
    {"id": "b", "address": "10.0.0.2:8000", "models": ["qwen-2-7b"]},
    {"id": "any", "address": "10.0.0.3:8000"},
]


async def _nodes_of(s: Running, model: str, rounds: int = 9) -> set[str]:
    chosen = [
        (await route_and_complete(s.stub, f"{model} {i}", model=model)).node_id
        for i in range(rounds)
    ]
    return set(chosen)


def test_routes_only_to_nodes_serving_the_model() -> None:
    async def scenario() -> None:
        async with running_server({"policy": "round_robin", "nodes": NODES}) as s:
            assert await _nodes_of(s, "llama-3-70b") == {"a", "any"}
            assert await _nodes_of(s, "qwen-2-7b") == {"b", "any"}
            assert await _nodes_of(s, "") == {"a", "b", "any"}  # no model: any node
            routed = await s.stub.Route(
                pb.RouteRequest(text="x", model="qwen-2-7b", include_candidates=True)
            )
            skipped = {c.node_id: c.skipped for c in routed.candidates}
            assert skipped == {"a": "model_not_served", "b": "", "any": ""}

    asyncio.run(scenario())


def test_unknown_model_is_not_found_and_loses_nothing() -> None:
    async def scenario() -> None:
        async with running_server({"nodes": NODES[:2]}) as s:
            details = await expect_error(
                s.stub.Route(pb.RouteRequest(request_id="r", text="x", model="gpt-9")),
                CODE.NOT_FOUND,
            )
            assert "gpt-9" in details
            assert s.server.service.router.in_flight_total == 0
            errors = s.server.service.telemetry.registry.get_sample_value(
                "llmlb_route_errors_total", {"transport": "grpc", "error": "unknown_model"}
            )
            assert errors == 1
            # The same request id is free: the refused call left nothing in flight.
            routed = await s.stub.Route(
                pb.RouteRequest(request_id="r", text="x", model="qwen-2-7b")
            )
            assert routed.node_id == "b"

    asyncio.run(scenario())


def test_models_from_config_and_registration_are_listed() -> None:
    async def scenario() -> None:
        async with running_server({"nodes": NODES}) as s:
            spec = pb.NodeSpec(id="c", address="10.0.0.4:8000", models=["gpt-9"])
            assert (await s.stub.RegisterNode(pb.RegisterNodeRequest(node=spec))).created
            listed = (await s.stub.ListNodes(pb.ListNodesRequest())).nodes
            models = {n.node.id: list(n.node.models) for n in listed}
            assert models == {"a": ["llama-3-70b"], "b": ["qwen-2-7b"], "any": [], "c": ["gpt-9"]}
            routed = await s.stub.Route(
                pb.RouteRequest(text="x", model="gpt-9", include_candidates=True)
            )
            assert routed.node_id in {"c", "any"}
            skipped = {c.node_id for c in routed.candidates if c.skipped == "model_not_served"}
            assert skipped == {"a", "b"}
            await expect_error(
                s.stub.RegisterNode(
                    pb.RegisterNodeRequest(node=pb.NodeSpec(id="d", models=["ok", ""]))
                ),
                CODE.INVALID_ARGUMENT,
            )

    asyncio.run(scenario())


def test_sweeper_observes_requests_expired_inside_route() -> None:
    """``route()`` releases requests past ``timeouts.request`` on its own sweep; the
    service's sweeper must still count each one for the breaker and the metrics."""

    async def scenario() -> None:
        config = {
            "nodes": NODES[:2],
            "timeouts": {"request": 0.2},
            "breaker": {"failure_threshold": 1, "cooldown": 60},
        }
        async with running_server(config) as s:
            service = s.server.service
            stale = await s.stub.Route(pb.RouteRequest(text="x", model="llama-3-70b"))
            assert stale.node_id == "a"
            await asyncio.sleep(0.3)
            # This route's own sweep releases the stale request on node a.
            await route_and_complete(s.stub, "y", model="qwen-2-7b")
            assert service.router.in_flight_request_ids("a") == []
            await expect_error(
                s.stub.Complete(
                    pb.CompleteRequest(request_id=stale.request_id, outcome=pb.OUTCOME_OK)
                ),
                CODE.NOT_FOUND,
            )
            registry = service.telemetry.registry
            for _ in range(300):  # the sweeper runs every second
                timeouts = registry.get_sample_value("request_timeout_total", {"node": "a"})
                if timeouts:
                    break
                await asyncio.sleep(0.01)
            assert timeouts == 1
            expired = registry.get_sample_value(
                "llmlb_completions_total", {"policy": "llmlb", "outcome": "expired"}
            )
            assert expired == 1
            assert service.breakers.state("a") == "open"
            nodes = {n.node.id: n for n in (await s.stub.ListNodes(pb.ListNodesRequest())).nodes}
            assert nodes["a"].breaker_state == "open"
            assert nodes["b"].breaker_state == "closed"

    asyncio.run(scenario())
