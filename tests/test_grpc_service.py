"""The gRPC routing service end to end: a real server on loopback, real clients."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
from grpc_harness import expect_error, route_and_complete, running_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from llmlb_fast.server import SERVICE_NAME
from prometheus_client.parser import text_string_to_metric_families

from grpc_server.llmlb.v1 import router_pb2 as pb

CODE = grpc.StatusCode
SYSTEM_PROMPT = "You are a helpful assistant. " * 20


def test_route_and_complete_round_trip() -> None:
    async def scenario() -> None:
        async with running_server() as s:
            routed = await s.stub.Route(
                pb.RouteRequest(
                    request_id="r1", model="m", text=SYSTEM_PROMPT + "hi", include_candidates=True
                )
            )
            assert routed.request_id == "r1"
            assert routed.node_id in {"a", "b"}
            assert routed.address == {"a": "10.0.0.1:8000", "b": "10.0.0.2:8000"}[routed.node_id]
            assert routed.policy == "llmlb"
            assert routed.reason
            assert routed.prompt_tokens > 0
            assert {c.node_id for c in routed.candidates} == {"a", "b"}
            nodes = {n.node.id: n for n in (await s.stub.ListNodes(pb.ListNodesRequest())).nodes}
            assert nodes[routed.node_id].in_flight == 1
            done = await s.stub.Complete(
                pb.CompleteRequest(
                    request_id="r1", outcome=pb.OUTCOME_OK, ttft_seconds=0.05, tokens_out=10
                )
            )
            assert done.node_id == routed.node_id
            assert done.duration_seconds >= 0
            nodes = {n.node.id: n for n in (await s.stub.ListNodes(pb.ListNodesRequest())).nodes}
            assert nodes[routed.node_id].in_flight == 0
            # The same prompt again is matched against the prefix the first one left.
            again = await s.stub.Route(pb.RouteRequest(model="m", text=SYSTEM_PROMPT + "hi"))
            assert again.matched_prefix_tokens > 0
            assert again.node_id == routed.node_id
            assert not again.candidates  # only when asked for
            tokens = await s.stub.Route(pb.RouteRequest(token_ids=pb.TokenIds(ids=list(range(64)))))
            assert tokens.prompt_tokens == 64

    asyncio.run(scenario())


def test_bad_input_gets_the_right_status() -> None:
    async def scenario() -> None:
        async with running_server() as s:
            stub = s.stub
            details = await expect_error(
                stub.Complete(pb.CompleteRequest(request_id="nope", outcome=pb.OUTCOME_OK)),
                CODE.NOT_FOUND,
            )
            assert "nope" in details
            await stub.Route(pb.RouteRequest(request_id="dup", text="x"))
            await expect_error(
                stub.Route(pb.RouteRequest(request_id="dup", text="y")), CODE.ALREADY_EXISTS
            )
            details = await expect_error(
                stub.Complete(pb.CompleteRequest(request_id="dup")), CODE.INVALID_ARGUMENT
            )
            assert "outcome" in details
            details = await expect_error(
                stub.Route(pb.RouteRequest(request_id="x" * 300, text="y")), CODE.INVALID_ARGUMENT
            )
            assert "request_id" in details
            await expect_error(
                stub.Complete(
                    pb.CompleteRequest(request_id="dup", outcome=pb.OUTCOME_OK, ttft_seconds=-1)
                ),
                CODE.INVALID_ARGUMENT,
            )
            # The refused completion lost nothing: the request is still in flight.
            await stub.Complete(pb.CompleteRequest(request_id="dup", outcome=pb.OUTCOME_OK))
            await expect_error(
                stub.RegisterNode(pb.RegisterNodeRequest(node=pb.NodeSpec(address="x"))),
                CODE.INVALID_ARGUMENT,
            )
            await expect_error(
                stub.RegisterNode(pb.RegisterNodeRequest(node=pb.NodeSpec(id="c", peak_tflops=-1))),
                CODE.INVALID_ARGUMENT,
            )
            await expect_error(
                stub.DeregisterNode(pb.DeregisterNodeRequest(node_id="zz")), CODE.NOT_FOUND
            )

    asyncio.run(scenario())


def test_oversized_message_is_resource_exhausted() -> None:
    async def scenario() -> None:
        async with running_server({"server": {"max_message_bytes": 64 * 1024}}) as s:
            await expect_error(
                s.stub.Route(pb.RouteRequest(text="x" * 100_000)), CODE.RESOURCE_EXHAUSTED
            )
            await route_and_complete(s.stub, "small prompts still work")

    asyncio.run(scenario())


def test_register_list_deregister() -> None:
    async def scenario() -> None:
        async with running_server({"nodes": []}) as s:
            await expect_error(s.stub.Route(pb.RouteRequest(text="x")), CODE.UNAVAILABLE)
            spec = pb.NodeSpec(
                id="c", address="10.0.0.3:8000", kv_capacity_tokens=4096, labels={"zone": "z1"}
            )
            assert (await s.stub.RegisterNode(pb.RegisterNodeRequest(node=spec))).created
            assert not (await s.stub.RegisterNode(pb.RegisterNodeRequest(node=spec))).created
            listed = (await s.stub.ListNodes(pb.ListNodesRequest())).nodes
            assert [n.node.id for n in listed] == ["c"]
            assert listed[0].node.labels["zone"] == "z1"
            assert listed[0].node.kv_capacity_tokens == 4096
            routed = await s.stub.Route(pb.RouteRequest(request_id="q", text="hello"))
            assert routed.node_id == "c"
            removed = await s.stub.DeregisterNode(pb.DeregisterNodeRequest(node_id="c"))
            assert list(removed.in_flight_request_ids) == ["q"]
            assert not (await s.stub.ListNodes(pb.ListNodesRequest())).nodes

    asyncio.run(scenario())


def _saturated(node_id: str) -> pb.NodeMetrics:
    return pb.NodeMetrics(
        node_id=node_id,
        gpu_memory_used_bytes=79e9,
        gpu_memory_total_bytes=80e9,
        kv_cache_usage=0.99,
        sm_utilization=0.97,
        prefix_cache_hit_rate=0.4,
    )


def test_metric_stream_changes_decisions() -> None:
    async def scenario() -> None:
        overrides = {"policy": "gpu_aware", "breaker": {"enabled": False}}
        async with running_server(overrides) as s:
            before = {(await route_and_complete(s.stub, f"p{i}")).node_id for i in range(8)}
            assert "a" in before

            async def samples():  # type: ignore[no-untyped-def]
                yield _saturated("a")
                yield pb.NodeMetrics(node_id="b", gpu_memory_used_bytes=10e9,
                                     gpu_memory_total_bytes=80e9, sm_utilization=0.2)  # fmt: skip

            reply = await s.stub.ReportMetrics(samples())
            assert reply.accepted == 2
            after = {(await route_and_complete(s.stub, f"q{i}")).node_id for i in range(8)}
            assert after == {"b"}
            nodes = {n.node.id: n for n in (await s.stub.ListNodes(pb.ListNodesRequest())).nodes}
            assert nodes["a"].metrics_fresh
            assert nodes["a"].metrics["sm_utilization"] == 0.97

            async def bad():  # type: ignore[no-untyped-def]
                yield pb.NodeMetrics(node_id="b", sm_utilization=0.1)
                yield pb.NodeMetrics(node_id="b", sm_utilization=7.0)

            details = await expect_error(s.stub.ReportMetrics(bad()), CODE.INVALID_ARGUMENT)
            assert "sample 1" in details and "1 earlier" in details

            async def unknown():  # type: ignore[no-untyped-def]
                yield pb.NodeMetrics(node_id="nobody", sm_utilization=0.1)

            await expect_error(s.stub.ReportMetrics(unknown()), CODE.NOT_FOUND)

    asyncio.run(scenario())


def test_admin_calls_need_the_bearer_token() -> None:
    async def scenario() -> None:
        async with running_server({"server": {"auth_token": "s3cret"}}) as s:
            spec = pb.RegisterNodeRequest(node=pb.NodeSpec(id="c", address="x"))
            details = await expect_error(s.stub.RegisterNode(spec), CODE.UNAUTHENTICATED)
            assert "missing" in details
            wrong = (("authorization", "Bearer nope"),)
            details = await expect_error(
                s.stub.RegisterNode(spec, metadata=wrong), CODE.UNAUTHENTICATED
            )
            assert "wrong" in details

            async def one():  # type: ignore[no-untyped-def]
                yield pb.NodeMetrics(node_id="a", sm_utilization=0.5)

            await expect_error(s.stub.ReportMetrics(one()), CODE.UNAUTHENTICATED)
            await expect_error(
                s.stub.DeregisterNode(pb.DeregisterNodeRequest(node_id="a")), CODE.UNAUTHENTICATED
            )
            good = (("authorization", "Bearer s3cret"),)
            assert (await s.stub.RegisterNode(spec, metadata=good)).created
            assert (await s.stub.ReportMetrics(one(), metadata=good)).accepted == 1
            # Routing calls need no token.
            await route_and_complete(s.stub, "hello")

    asyncio.run(scenario())


def test_health_and_reflection() -> None:
    async def scenario() -> None:
        async with running_server() as s:
            health = health_pb2_grpc.HealthStub(s.channel)
            for name in ("", SERVICE_NAME):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            reflect = reflection_pb2_grpc.ServerReflectionStub(s.channel)

            async def ask():  # type: ignore[no-untyped-def]
                yield reflection_pb2.ServerReflectionRequest(list_services="")
                yield reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)

            replies = [r async for r in reflect.ServerReflectionInfo(ask())]
            services = {svc.name for svc in replies[0].list_services_response.service}
            assert {"llmlb.v1.Router", "grpc.health.v1.Health"} <= services
            assert replies[1].file_descriptor_response.file_descriptor_proto

    asyncio.run(scenario())


def test_graceful_stop_drains_routed_requests() -> None:
    async def scenario() -> None:
        async with running_server() as s:
            await s.stub.Route(pb.RouteRequest(request_id="long", text="x"))
            stopping = asyncio.create_task(s.server.stop(drain_s=10.0))
            health = health_pb2_grpc.HealthStub(s.channel)
            await asyncio.sleep(0.1)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            await expect_error(s.stub.Route(pb.RouteRequest(text="new")), CODE.UNAVAILABLE)
            assert not stopping.done()
            await s.stub.Complete(pb.CompleteRequest(request_id="long", outcome=pb.OUTCOME_OK))
            await asyncio.wait_for(stopping, timeout=5.0)

    asyncio.run(scenario())


def _scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def test_metrics_endpoint() -> None:
    async def scenario() -> None:
        async with running_server({"server": {"metrics_port": 0}}) as s:
            assert s.server.metrics_port
            for i in range(3):
                await route_and_complete(s.stub, SYSTEM_PROMPT + str(i))
            await route_and_complete(s.stub, "slow", outcome=pb.OUTCOME_TIMEOUT)

            async def one():  # type: ignore[no-untyped-def]
                yield _saturated("a")

            await s.stub.ReportMetrics(one())
            m = await asyncio.to_thread(_scrape, s.server.metrics_port)
            assert ({"node": "a"}, 97.0) in m["gpu_utilization_percent"]
            hit = {(lbl["source"], lbl["node"]): v for lbl, v in m["kv_cache_hit_rate"]}
            assert 0 < hit[("prefix_index", "")] < 1
            assert hit[("engine", "a")] == 0.4
            assert sum(v for _, v in m["request_timeout_total"]) == 1
            decisions = sum(
                v for lbl, v in m["llmlb_route_decisions_total"] if lbl["policy"] == "llmlb"
            )
            assert decisions == 4
            assert any(v == 4 for lbl, v in m["llmlb_route_latency_seconds_count"])
            assert {lbl["node"] for lbl, _ in m["llmlb_in_flight_requests"]} == {"a", "b"}
            assert ({"node": "a"}, 0.0) in m["llmlb_breaker_state"]
            assert ({"policy": "llmlb", "outcome": "ok"}, 3.0) in m["llmlb_completions_total"]

    asyncio.run(scenario())


def test_first_token_releases_the_prompt_and_huge_prompts_are_invalid() -> None:
    async def scenario() -> None:
        async with running_server() as s:
            await s.stub.RegisterNode(
                pb.RegisterNodeRequest(
                    node=pb.NodeSpec(id="small", address="s:1", kv_capacity_tokens=1000)
                )
            )
            await s.stub.DeregisterNode(pb.DeregisterNodeRequest(node_id="a"))
            await s.stub.DeregisterNode(pb.DeregisterNodeRequest(node_id="b"))
            too_long = pb.RouteRequest(token_ids=pb.TokenIds(ids=list(range(2000))))
            details = await expect_error(s.stub.Route(too_long), CODE.INVALID_ARGUMENT)
            assert "longer than the KV cache" in details
            routed = await s.stub.Route(
                pb.RouteRequest(
                    token_ids=pb.TokenIds(ids=list(range(500))), expected_output_tokens=8
                )
            )

            async def pending() -> int:
                [node] = (await s.stub.ListNodes(pb.ListNodesRequest())).nodes
                return int(node.backlog_tokens)

            assert 400 < await pending() <= 500  # draining at the declared rate meanwhile
            await s.stub.FirstToken(pb.FirstTokenRequest(request_id=routed.request_id))
            assert await pending() == 0
            await expect_error(
                s.stub.FirstToken(pb.FirstTokenRequest(request_id="nope")), CODE.NOT_FOUND
            )
            reply = await s.stub.RouteStream(
                [
                    pb.RouteStreamRequest(
                        calls=[
                            pb.StreamCall(
                                tag=1,
                                first_token=pb.FirstTokenRequest(request_id=routed.request_id),
                            )
                        ]
                    )
                ]
            ).read()
            assert reply.results[0].WhichOneof("result") == "first_token"

    asyncio.run(scenario())
