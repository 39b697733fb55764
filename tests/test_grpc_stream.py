"""RouteStream (batched Route and Complete on one stream) over the real service."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_harness import running_server

from grpc_server.llmlb.v1 import router_pb2 as pb
from grpc_server.stream_client import RouteStreamClient, StreamCallError

CODE = grpc.StatusCode
NODES = [
    {"id": "a", "address": "10.0.0.1:8000", "models": ["m"]},
    {"id": "b", "address": "10.0.0.2:8000", "models": ["m"]},
]


def _route(tag: int, request_id: str, **fields: object) -> pb.StreamCall:
    return pb.StreamCall(tag=tag, route=pb.RouteRequest(request_id=request_id, **fields))  # type: ignore[arg-type]


def _complete(tag: int, request_id: str, outcome: pb.Outcome = pb.OUTCOME_OK) -> pb.StreamCall:
    request = pb.CompleteRequest(request_id=request_id, outcome=outcome)
    return pb.StreamCall(tag=tag, complete=request)


def test_a_batch_is_answered_in_order_and_errors_do_not_end_the_stream() -> None:
    async def scenario() -> None:
        async with running_server({"nodes": NODES}) as s:
            call = s.stub.RouteStream()
            batch = [
                _route(7, "r1", text="hello", include_candidates=True),
                _complete(8, "r1"),
                _complete(9, "r1"),  # completed already
                _route(10, "r2", text="x", model="nobody-serves-this"),
                pb.StreamCall(tag=11),  # neither route nor complete
                _complete(12, "r2", outcome=pb.OUTCOME_UNSPECIFIED),
                _route(13, "r3", token_ids=pb.TokenIds(ids=[1, 2, 3])),
            ]
            await call.write(pb.RouteStreamRequest(calls=batch))
            results = list((await call.read()).results)
            assert [r.tag for r in results] == [7, 8, 9, 10, 11, 12, 13]
            kinds = [r.WhichOneof("result") for r in results]
            assert kinds == ["route", "complete", "error", "error", "error", "error", "route"]
            routed, completed = results[0].route, results[1].complete
            assert routed.request_id == "r1" and routed.node_id in {"a", "b"}
            assert {c.node_id for c in routed.candidates} == {"a", "b"}
            assert completed.node_id == routed.node_id
            errors = [(r.error.code, r.error.message) for r in results[2:6]]
            assert errors[0][0] == CODE.NOT_FOUND.value[0] and "r1" in errors[0][1]
            assert errors[1][0] == CODE.NOT_FOUND.value[0] and "nobody-serves-this" in errors[1][1]
            assert errors[2][0] == CODE.INVALID_ARGUMENT.value[0] and "no route" in errors[2][1]
            assert errors[3][0] == CODE.INVALID_ARGUMENT.value[0] and "outcome" in errors[3][1]
            assert results[6].route.prompt_tokens == 3
            # The stream goes on after refused calls.
            await call.write(pb.RouteStreamRequest(calls=[_complete(14, "r3")]))
            (last,) = (await call.read()).results
            assert last.tag == 14 and last.complete.node_id == results[6].route.node_id
            await call.done_writing()
            assert await call.code() == CODE.OK
            assert s.server.service.router.in_flight_total == 0

    asyncio.run(scenario())


def test_stream_client_multiplexes_concurrent_callers() -> None:
    async def scenario() -> None:
        # max_batch=4: the 50 callers' calls are split over many messages.
        async with running_server() as s, RouteStreamClient(s.stub, max_batch=4) as client:

            async def one(i: int) -> str:
                routed = await client.route(pb.RouteRequest(text=f"prompt {i}"))
                done = await client.complete(
                    pb.CompleteRequest(request_id=routed.request_id, outcome=pb.OUTCOME_OK)
                )
                assert done.node_id == routed.node_id
                return routed.request_id

            ids = await asyncio.gather(*(one(i) for i in range(50)))
            assert len(set(ids)) == 50
            with pytest.raises(StreamCallError) as refused:
                await client.complete(pb.CompleteRequest(request_id=ids[0], outcome=pb.OUTCOME_OK))
            assert refused.value.code == CODE.NOT_FOUND
            nodes = (await s.stub.ListNodes(pb.ListNodesRequest())).nodes
            assert sum(n.routed_total for n in nodes) == 50
            assert s.server.service.router.in_flight_total == 0

    asyncio.run(scenario())


def test_stream_refuses_new_routes_while_draining_but_takes_completions() -> None:
    async def scenario() -> None:
        async with running_server() as s, RouteStreamClient(s.stub) as client:
            routed = await client.route(pb.RouteRequest(text="long"))
            stopping = asyncio.create_task(s.server.stop(drain_s=10.0))
            await asyncio.sleep(0.1)
            with pytest.raises(StreamCallError) as refused:
                await client.route(pb.RouteRequest(text="new"))
            assert refused.value.code == CODE.UNAVAILABLE
            assert "draining" in refused.value.message
            await client.complete(
                pb.CompleteRequest(request_id=routed.request_id, outcome=pb.OUTCOME_OK)
            )
            await asyncio.wait_for(stopping, timeout=5.0)

    asyncio.run(scenario())
