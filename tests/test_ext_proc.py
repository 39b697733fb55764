"""The Envoy ext_proc endpoint picker, driven over loopback gRPC by a client speaking the
Envoy protocol (the message sequence Envoy sends with a BUFFERED request body)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import json_format
from llmlb_fast import Node, Router, RouterConfig
from llmlb_fast.transports.ext_proc import EndpointPicker, add_to_server
from llmlb_fast.transports.proxy import ProxySettings
from proxy_backends import sse_chunks
from service_harness import RecordingService

NODES = [Node("a", "http://127.0.0.1:18001"), Node("b", "http://10.0.0.2:8000")]
ENDPOINTS = {"a": "127.0.0.1:18001", "b": "10.0.0.2:8000"}


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def headers(pairs: dict[str, str], end_of_stream: bool = False) -> pb.HttpHeaders:
    # Current Envoy sends raw_value; the picker must read it.
    return pb.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
        ),
        end_of_stream=end_of_stream,
    )


def request_headers(path: str = "/v1/chat/completions", **extra: str) -> pb.ProcessingRequest:
    pairs = {
        ":method": "POST",
        ":path": path,
        ":authority": "gw",
        "content-type": "application/json",
    }
    return pb.ProcessingRequest(request_headers=headers({**pairs, **extra}))


def request_body(document: object) -> pb.ProcessingRequest:
    raw = document if isinstance(document, bytes) else json.dumps(document).encode()
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=raw, end_of_stream=True))


def response_headers(status: int, content_type: str = "text/event-stream") -> pb.ProcessingRequest:
    pairs = {":status": str(status), "content-type": content_type}
    return pb.ProcessingRequest(response_headers=headers(pairs))


def response_body(chunk: bytes, end: bool = False) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=chunk, end_of_stream=end))


class Envoy:
    """Plays Envoy's side of one ext_proc stream: send a message, read the answer."""

    def __init__(self, stub: pb_grpc.ExternalProcessorStub) -> None:
        self._outbox: asyncio.Queue[pb.ProcessingRequest | None] = asyncio.Queue()
        self._call = stub.Process(self._messages())

    async def _messages(self) -> AsyncIterator[pb.ProcessingRequest]:
        while (message := await self._outbox.get()) is not None:
            yield message

    async def send(self, message: pb.ProcessingRequest) -> pb.ProcessingResponse:
        await self._outbox.put(message)
        response: pb.ProcessingResponse = await self._call.read()
        return response

    async def close(self) -> None:
        await self._outbox.put(None)
        assert await self._call.read() == grpc.aio.EOF

    def cancel(self) -> None:
        self._call.cancel()


class Picker:
    def __init__(
        self,
        policy: str = "llmlb",
        settings: ProxySettings | None = None,
        nodes: list[Node] | None = None,
    ) -> None:
        self.router = Router(RouterConfig(policy=policy), NODES if nodes is None else nodes)
        self.service = RecordingService(self.router)
        self.completions = self.service.completions
        self.picker = EndpointPicker(self.service, settings)

    async def __aenter__(self) -> Picker:
        self.server = grpc.aio.server()
        add_to_server(self.picker, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.ExternalProcessorStub(self.channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()
        await self.server.stop(None)
        if exc[0] is None:
            assert self.router.in_flight_total == 0


def mutation(response: pb.CommonResponse) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in response.header_mutation.set_headers}


CHAT = {
    "model": "m",
    "stream": True,
    "max_tokens": 50,
    "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
}


def test_full_exchange_picks_an_endpoint_and_completes_at_response_end() -> None:
    async def scenario() -> None:
        async with Picker() as p:
            envoy = Envoy(p.stub)
            first = await envoy.send(request_headers())
            assert first.WhichOneof("response") == "request_headers"
            assert not first.request_headers.response.header_mutation.set_headers

            picked = await envoy.send(request_body(CHAT))
            assert picked.WhichOneof("response") == "request_body"
            common = picked.request_body.response
            assert common.clear_route_cache
            set_headers = mutation(common)
            node = set_headers["x-llmlb-node"]
            endpoint = set_headers["x-gateway-destination-endpoint"]
            assert endpoint == ENDPOINTS[node]
            metadata = json_format.MessageToDict(picked.dynamic_metadata)
            assert metadata == {"envoy.lb": {"x-gateway-destination-endpoint": endpoint}}
            assert p.router.in_flight_total == 1
            assert p.router.in_flight_request_ids(node) == [set_headers["x-llmlb-request-id"]]

            answer = await envoy.send(response_headers(200))
            assert answer.WhichOneof("response") == "response_headers"
            chunks = sse_chunks(4)
            for chunk in chunks[:-1]:
                reply = await envoy.send(response_body(chunk))
                assert reply.WhichOneof("response") == "response_body"
                assert p.router.in_flight_total == 1
            await envoy.send(response_body(chunks[-1], end=True))
            assert p.router.in_flight_total == 0
            await envoy.close()
            [done] = p.completions
            assert (done.node_id, done.outcome) == (node, "ok")
            stats = p.router.node_stats(node)
            assert stats["tokens_out"] == 4
            assert stats["mean_ttft_s"] is not None

    run(scenario)


def test_shared_prefix_goes_to_the_same_endpoint() -> None:
    async def scenario() -> None:
        async with Picker(policy="prefix_aware") as p:
            system = {"role": "system", "content": "You are a careful assistant. " * 40}
            picked = []
            for question in ("q1", "q2", "q3"):
                chat = {"model": "m", "messages": [system, {"role": "user", "content": question}]}
                envoy = Envoy(p.stub)
                await envoy.send(request_headers())
                reply = await envoy.send(request_body(chat))
                picked.append(
                    mutation(reply.request_body.response)["x-gateway-destination-endpoint"]
                )
                await envoy.send(response_headers(200, "application/json"))
                await envoy.send(response_body(b'{"usage":{"completion_tokens":2}}', end=True))
                await envoy.close()
            assert len(set(picked)) == 1

    run(scenario)


def test_bad_body_gets_an_immediate_openai_error() -> None:
    async def scenario() -> None:
        async with Picker() as p:
            cases = [
                (b"{not json", 400, "invalid_json"),
                ({"messages": [{"role": "user", "content": "x"}]}, 400, "missing_model"),
            ]
            for document, status, code in cases:
                envoy = Envoy(p.stub)
                await envoy.send(request_headers())
                reply = await envoy.send(request_body(document))
                assert reply.WhichOneof("response") == "immediate_response"
                immediate = reply.immediate_response
                assert immediate.status.code == status
                assert json.loads(immediate.body)["error"]["code"] == code
                await envoy.close()
            too_big = Envoy(p.stub)
            reply = await too_big.send(request_headers(**{"content-length": str(10**9)}))
            assert reply.immediate_response.status.code == 413
            await too_big.close()
            assert p.completions == []

    run(scenario)


def test_model_decides_the_node_and_an_unknown_model_gets_a_404() -> None:
    async def scenario() -> None:
        nodes = [Node("a", "http://10.0.0.1:8000", models=["m"]), Node("c", "x:1", models=["x"])]
        async with Picker(nodes=nodes) as p:
            envoy = Envoy(p.stub)
            await envoy.send(request_headers())
            reply = await envoy.send(request_body({**CHAT, "model": "gpt-9"}))
            assert reply.immediate_response.status.code == 404
            assert json.loads(reply.immediate_response.body)["error"]["code"] == "model_not_found"
            await envoy.close()
            for _ in range(3):
                envoy = Envoy(p.stub)
                await envoy.send(request_headers())
                picked = await envoy.send(request_body(CHAT))
                assert mutation(picked.request_body.response)["x-llmlb-node"] == "a"
                await envoy.send(response_headers(200))
                await envoy.send(response_body(b"data: [DONE]\n\n", end=True))
                await envoy.close()
            assert [c.node_id for c in p.completions] == ["a"] * 3
            assert p.router.in_flight_total == 0

    run(scenario)


def test_upstream_status_sets_the_outcome() -> None:
    async def scenario() -> None:
        async with Picker() as p:
            for status in (503, 504, 400):
                envoy = Envoy(p.stub)
                await envoy.send(request_headers())
                await envoy.send(request_body(CHAT))
                await envoy.send(response_headers(status, "application/json"))
                await envoy.send(response_body(b'{"error":{}}', end=True))
                await envoy.close()
            assert [c.outcome for c in p.completions] == ["error", "timeout", "ok"]
            assert len(p.service.timed_out_nodes) == 1

    run(scenario)


def test_stream_closed_before_the_response_releases_the_slot() -> None:
    async def scenario() -> None:
        async with Picker() as p:
            envoy = Envoy(p.stub)
            await envoy.send(request_headers())
            await envoy.send(request_body(CHAT))
            assert p.router.in_flight_total == 1
            envoy.cancel()  # Envoy resets the stream (client gone, upstream reset)
            for _ in range(200):
                if p.router.in_flight_total == 0:
                    break
                await asyncio.sleep(0.01)
            assert p.router.in_flight_total == 0
            assert [c.outcome for c in p.completions] == ["error"]

    run(scenario)


def test_bodyless_request_is_routed_at_the_headers() -> None:
    async def scenario() -> None:
        async with Picker() as p:
            envoy = Envoy(p.stub)
            message = pb.ProcessingRequest(
                request_headers=headers(
                    {":method": "GET", ":path": "/v1/models"}, end_of_stream=True
                )
            )
            reply = await envoy.send(message)
            endpoint = mutation(reply.request_headers.response)["x-gateway-destination-endpoint"]
            assert endpoint in ENDPOINTS.values()
            end = pb.ProcessingRequest(
                response_headers=headers({":status": "200"}, end_of_stream=True)
            )
            await envoy.send(end)
            await envoy.close()
            assert [c.outcome for c in p.completions] == ["ok"]

    run(scenario)


def test_draining_service_answers_unavailable_and_counts_the_refusal() -> None:
    async def scenario() -> None:
        async with Picker() as p:
            p.service.drain()
            envoy = Envoy(p.stub)
            await envoy.send(request_headers())
            reply = await envoy.send(request_body(CHAT))
            assert reply.WhichOneof("response") == "immediate_response"
            assert reply.immediate_response.status.code == 503
            assert "draining" in json.loads(reply.immediate_response.body)["error"]["message"]
            await envoy.close()
            assert p.router.in_flight_total == 0
            assert p.service.route_errors("ext_proc", "draining") == 1

    run(scenario)


def test_route_errors_are_counted_by_kind() -> None:
    async def scenario() -> None:
        async with Picker(nodes=[Node("a", "http://127.0.0.1:18001", models=["m"])]) as p:
            envoy = Envoy(p.stub)
            await envoy.send(request_headers())
            reply = await envoy.send(request_body({**CHAT, "model": "gpt-9"}))
            assert reply.immediate_response.status.code == 404
            await envoy.close()
            p.router.set_breaker_state("a", "open")
            envoy = Envoy(p.stub)
            await envoy.send(request_headers())
            reply = await envoy.send(request_body(CHAT))
            assert reply.immediate_response.status.code == 503
            await envoy.close()
            assert p.service.route_errors("ext_proc", "unknown_model") == 1
            assert p.service.route_errors("ext_proc", "no_available_node") == 1
            assert p.service.route_errors("proxy", "unknown_model") == 0

    run(scenario)
