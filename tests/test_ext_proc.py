"""The Envoy ext_proc endpoint picker (Rust, on the service's data path), driven over
loopback gRPC by a client speaking the Envoy protocol: the message sequences Envoy sends
with a BUFFERED request body and, as the Gateway API Inference Extension configures it,
FULL_DUPLEX_STREAMED bodies. tests/test_envoy.py runs it behind a real Envoy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import json_format, struct_pb2
from llmlb_fast import Completion, Node, Router, RouterConfig
from llmlb_fast.config import ServiceConfig
from llmlb_fast.transports.proxy import ProxyServer, ProxySettings
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
        await self.push(message)
        return await self.read()

    async def push(self, message: pb.ProcessingRequest) -> None:
        """Sends without waiting for an answer (full duplex: Envoy streams on)."""
        await self._outbox.put(message)

    async def read(self) -> pb.ProcessingResponse:
        response: pb.ProcessingResponse = await asyncio.wait_for(self._call.read(), 5)
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
        config: ServiceConfig | None = None,
    ) -> None:
        self.router = Router(RouterConfig(policy=policy), NODES if nodes is None else nodes)
        self.service = RecordingService(self.router, config)
        self.picker = ProxyServer(self.service, settings)

    @property
    def completions(self) -> list[Completion]:
        self.picker.flush()  # the data path hands completions over in batches
        return self.service.completions

    def route_errors(self, transport: str, error: str) -> float:
        self.picker.flush()
        return self.service.route_errors(transport, error)

    async def __aenter__(self) -> Picker:
        await self.picker.start(http=False, ext_proc=("127.0.0.1", 0))
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.picker.ext_proc_port}")
        self.stub = pb_grpc.ExternalProcessorStub(self.channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()
        await self.picker.stop()
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
            assert [c.outcome for c in p.completions].count("timeout") == 1

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
            assert p.route_errors("ext_proc", "draining") == 1

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
            assert p.route_errors("ext_proc", "unknown_model") == 1
            assert p.route_errors("ext_proc", "no_available_node") == 1
            assert p.route_errors("proxy", "unknown_model") == 0

    run(scenario)


# --- FULL_DUPLEX_STREAMED, the Gateway API Inference Extension's stock mode -------------

DUPLEX = pb.ProtocolConfiguration(
    request_body_mode=ProcessingMode.FULL_DUPLEX_STREAMED,
    response_body_mode=ProcessingMode.FULL_DUPLEX_STREAMED,
)


def duplex_headers(**extra: str) -> pb.ProcessingRequest:
    message = request_headers(**extra)
    message.protocol_config.CopyFrom(DUPLEX)  # only the first message carries it
    return message


def streamed_body(message: pb.BodyResponse | pb.CommonResponse) -> tuple[bytes, bool]:
    common = message.response if isinstance(message, pb.BodyResponse) else message
    streamed = common.body_mutation.streamed_response
    assert common.body_mutation.WhichOneof("mutation") == "streamed_response"
    return streamed.body, streamed.end_of_stream


async def duplex_request(
    envoy: Envoy, raw: bytes, trailers: bool = False
) -> list[pb.ProcessingResponse]:
    """Headers, the body in two chunks and then an empty last one (as Envoy 1.40 sends
    an HTTP/1.1 body), or trailers to end it; returns every answer until the last."""
    await envoy.push(duplex_headers())
    half = len(raw) // 2
    await envoy.push(pb.ProcessingRequest(request_body=pb.HttpBody(body=raw[:half])))
    await envoy.push(pb.ProcessingRequest(request_body=pb.HttpBody(body=raw[half:])))
    if trailers:
        await envoy.push(pb.ProcessingRequest(request_trailers=pb.HttpTrailers()))
    else:
        await envoy.push(pb.ProcessingRequest(request_body=pb.HttpBody(end_of_stream=True)))
    answers = [await envoy.read()]
    while answers[-1].WhichOneof("response") != ("request_trailers" if trailers else "x"):
        kind = answers[-1].WhichOneof("response")
        if kind == "immediate_response":
            break
        if kind == "request_body" and not trailers and streamed_body(answers[-1].request_body)[1]:
            break
        answers.append(await envoy.read())
    return answers


def test_full_duplex_answers_headers_then_the_body_given_back_and_echoes_the_response() -> None:
    async def scenario() -> None:
        async with Picker() as p:
            envoy = Envoy(p.stub)
            raw = json.dumps(CHAT).encode()
            headers, *bodies = await duplex_request(envoy, raw)
            assert headers.WhichOneof("response") == "request_headers"
            common = headers.request_headers.response
            assert common.clear_route_cache
            set_headers = mutation(common)
            node = set_headers["x-llmlb-node"]
            assert set_headers["x-gateway-destination-endpoint"] == ENDPOINTS[node]
            assert set_headers["content-length"] == str(len(raw))
            metadata = json_format.MessageToDict(headers.dynamic_metadata)
            assert metadata == {"envoy.lb": {"x-gateway-destination-endpoint": ENDPOINTS[node]}}
            given_back = [streamed_body(b.request_body) for b in bodies]
            assert b"".join(body for body, _ in given_back) == raw
            assert [end for _, end in given_back] == [False] * (len(given_back) - 1) + [True]
            assert p.router.in_flight_total == 1

            await envoy.send(response_headers(200))
            chunks = sse_chunks(3)
            for chunk in chunks:
                echoed = await envoy.send(response_body(chunk))
                assert streamed_body(echoed.response_body) == (chunk, False)
            last = await envoy.send(response_body(b"", end=True))
            assert streamed_body(last.response_body) == (b"", True)
            assert p.router.in_flight_total == 0
            await envoy.close()
            [done] = p.completions
            assert (done.node_id, done.outcome) == (node, "ok")
            assert p.router.node_stats(node)["tokens_out"] == 3

    run(scenario)


def test_full_duplex_request_ended_by_trailers() -> None:
    async def scenario() -> None:
        async with Picker() as p:
            envoy = Envoy(p.stub)
            raw = json.dumps(CHAT).encode()
            answers = await duplex_request(envoy, raw, trailers=True)
            kinds = [a.WhichOneof("response") for a in answers]
            assert kinds[0] == "request_headers" and kinds[-1] == "request_trailers"
            assert set(kinds[1:-1]) == {"request_body"}
            given_back = [streamed_body(a.request_body) for a in answers[1:-1]]
            assert b"".join(body for body, _ in given_back) == raw
            assert not any(end for _, end in given_back)  # the trailers end the stream
            await envoy.send(response_headers(200, "application/json"))
            await envoy.send(response_body(b'{"usage":{"completion_tokens":7}}', end=True))
            await envoy.close()
            [done] = p.completions
            assert done.outcome == "ok"
            assert p.router.node_stats(done.node_id)["tokens_out"] == 7

    run(scenario)


def test_full_duplex_long_body_is_given_back_in_chunks_envoy_accepts() -> None:
    async def scenario() -> None:
        async with Picker() as p:
            long_chat = {**CHAT, "messages": [{"role": "user", "content": "x" * 150_000}]}
            raw = json.dumps(long_chat).encode()
            envoy = Envoy(p.stub)
            _, *bodies = await duplex_request(envoy, raw)
            sizes = [len(streamed_body(b.request_body)[0]) for b in bodies]
            assert len(sizes) == 3 and max(sizes) <= 62_000 and sum(sizes) == len(raw)
            await envoy.close()

    run(scenario)


def test_full_duplex_bad_body_gets_an_immediate_error_and_no_slot() -> None:
    async def scenario() -> None:
        async with Picker() as p:
            envoy = Envoy(p.stub)
            [answer] = await duplex_request(envoy, b"{not json")
            assert answer.immediate_response.status.code == 400
            await envoy.close()
            assert p.router.in_flight_total == 0 and p.completions == []

    run(scenario)


def subset_hint(*endpoints: str) -> base_pb2.Metadata:
    hint = struct_pb2.Struct()
    hint.update({"x-gateway-destination-endpoint-subset": list(endpoints)})
    return base_pb2.Metadata(filter_metadata={"envoy.lb.subset_hint": hint})


def test_subset_hint_limits_the_endpoints_and_an_empty_match_is_a_503() -> None:
    async def scenario() -> None:
        async with Picker(policy="round_robin") as p:
            for _ in range(4):
                envoy = Envoy(p.stub)
                message = request_headers()
                message.metadata_context.CopyFrom(subset_hint(ENDPOINTS["b"]))
                await envoy.send(message)
                reply = await envoy.send(request_body(CHAT))
                assert mutation(reply.request_body.response)["x-llmlb-node"] == "b"
                await envoy.close()
            for subset in ((), ("10.9.9.9:1",)):
                envoy = Envoy(p.stub)
                message = request_headers()
                message.metadata_context.CopyFrom(subset_hint(*subset))
                await envoy.send(message)
                reply = await envoy.send(request_body(CHAT))
                assert reply.immediate_response.status.code == 503
                await envoy.close()
            assert [c.node_id for c in p.completions] == ["b"] * 4
            assert p.route_errors("ext_proc", "no_available_node") == 2

    run(scenario)


def test_fail_open_answers_without_a_destination_when_no_node_can_take_it() -> None:
    async def scenario() -> None:
        config = ServiceConfig.model_validate({"proxy": {"ext_proc": {"fail_open": True}}})
        async with Picker(config=config) as p:
            for node in ENDPOINTS:
                p.router.set_breaker_state(node, "open")
            envoy = Envoy(p.stub)
            await envoy.send(request_headers())
            reply = await envoy.send(request_body(CHAT))
            assert reply.WhichOneof("response") == "request_body"
            assert mutation(reply.request_body.response) == {}
            assert not reply.HasField("dynamic_metadata")
            await envoy.close()
            assert p.route_errors("ext_proc", "no_available_node") == 1
            p.service.drain()  # draining still says so (503), fail-open or not
            envoy = Envoy(p.stub)
            await envoy.send(request_headers())
            reply = await envoy.send(request_body(CHAT))
            assert reply.immediate_response.status.code == 503
            await envoy.close()

    run(scenario)


def test_unsupported_body_mode_ends_the_stream_with_invalid_argument() -> None:
    async def scenario() -> None:
        async with Picker() as p:
            envoy = Envoy(p.stub)
            message = request_headers()
            message.protocol_config.request_body_mode = ProcessingMode.STREAMED
            await envoy.push(message)
            try:
                await envoy.read()
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "FULL_DUPLEX_STREAMED" in (error.details() or "")
            else:
                raise AssertionError("the stream should have failed")

    run(scenario)
