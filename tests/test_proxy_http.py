"""The HTTP proxy against real aiohttp backends on loopback: passthrough, models, bad input."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from llmlb_fast import Completion, Node, Router, RouterConfig
from llmlb_fast._core import RoutingKey
from llmlb_fast.transports.proxy import ProxyServer, ProxySettings
from llmlb_fast.transports.proxy.routing_key import routing_key
from proxy_backends import MODEL, Backend, completion_json, sse_chunks
from service_harness import RecordingService

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


@dataclass
class Harness:
    router: Router
    proxy: ProxyServer
    url: str
    client: aiohttp.ClientSession
    completions: list[Completion] = field(default_factory=list)


@asynccontextmanager
async def running(
    backends: list[Backend], settings: ProxySettings | None = None, policy: str = "llmlb"
) -> AsyncIterator[Harness]:
    for backend in backends:
        await backend.start()
    nodes = [Node(b.name, b.address) for b in backends]
    router = Router(RouterConfig(policy=policy), nodes)
    service = RecordingService(router)
    completions = service.completions
    proxy = ProxyServer(service, settings)
    port = await proxy.start()
    client = aiohttp.ClientSession(auto_decompress=False)
    try:
        yield Harness(router, proxy, f"http://127.0.0.1:{port}", client, completions)
    finally:
        await client.close()
        await proxy.stop()
        for backend in backends:
            await backend.stop()
    assert router.in_flight_total == 0


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def stream_body(**extra: object) -> dict[str, object]:
    return {"model": MODEL, "prompt": "Once upon a time", "stream": True, **extra}


def test_sse_passes_through_byte_for_byte_and_chunk_by_chunk() -> None:
    # Irregular chunks: an event split across writes, a comment line, two events in one.
    chunks = [
        b'data: {"choices":[{"text":"a"}]}\n\n',
        b'data: {"choices":[{"te',
        b'xt":"b"}]}\n\n: keep-alive comment\n\n',
        b'data: {"choices":[{"text":"c"}]}\n\ndata: {"choices":[{"text":"d"}]}\n\n',
        b"data: [DONE]\n\n",
    ]

    async def scenario() -> None:
        gate = asyncio.Event()
        backend = Backend("a", chunks=chunks, chunk_gate=gate)
        async with running([backend]) as h:
            async with h.client.post(h.url + "/v1/completions", json=stream_body()) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "text/event-stream"
                assert resp.headers["x-llmlb-node"] == "a"
                # The first chunk arrives while the backend still waits to send the second.
                first = await resp.content.readany()
                assert first == chunks[0]
                assert h.router.in_flight_total == 1
                # Its first bytes carried the first token: no prefill left queued.
                assert h.router.nodes()[0].pending_prefill_tokens == 0
                received = bytearray(first)
                while True:
                    gate.set()
                    chunk = await resp.content.readany()
                    if not chunk:
                        break
                    received += chunk
            assert bytes(received) == b"".join(chunks)
            # Four token events; the comment and [DONE] are not tokens.
            assert h.router.node_stats("a")["tokens_out"] == 4
        [completion] = h.completions
        assert completion.outcome == "ok"
        assert completion.node_id == "a"

    run(scenario)


def test_streaming_counts_usage_and_completes_once() -> None:
    async def scenario() -> None:
        backend = Backend("a", chunks=sse_chunks(5, usage=True))
        async with running([backend]) as h:
            async with h.client.post(h.url + "/v1/completions", json=stream_body()) as resp:
                assert await resp.read() == b"".join(sse_chunks(5, usage=True))
            stats = h.router.node_stats("a")
        assert [c.outcome for c in h.completions] == ["ok"]
        # The usage block wins over counting events (6 data events, usage says 5).
        assert stats["tokens_out"] == 5
        assert stats["tokens_in"] == 7
        assert stats["mean_ttft_s"] is not None and stats["mean_ttft_s"] > 0

    run(scenario)


def test_non_streaming_body_and_headers_pass_through() -> None:
    async def scenario() -> None:
        backend = Backend("a")
        async with running([backend]) as h:
            body = {"model": MODEL, "prompt": "hi", "max_tokens": 3}
            headers = {"Authorization": "Bearer k-123", "X-Custom": "v"}
            async with h.client.post(h.url + "/v1/completions", json=body, headers=headers) as resp:
                assert resp.status == 200
                assert await resp.read() == completion_json()
                assert resp.headers["Content-Type"].startswith("application/json")
            assert backend.received == [body]
            assert backend.headers[0]["Authorization"] == "Bearer k-123"
            assert backend.headers[0]["X-Custom"] == "v"
            # Non-streaming: tokens from the usage block, no time to first token.
            assert h.router.node_stats("a")["tokens_out"] == 3
            assert h.router.node_stats("a")["mean_ttft_s"] is None
        assert [c.outcome for c in h.completions] == ["ok"]

    run(scenario)


def test_chat_completions_are_forwarded_to_the_chat_endpoint() -> None:
    async def scenario() -> None:
        backend = Backend("a")
        async with running([backend]) as h:
            body = {
                "model": MODEL,
                "stream": True,
                "messages": [
                    {"role": "system", "content": "You are terse."},
                    {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                ],
            }
            async with h.client.post(h.url + "/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                assert await resp.read() == b"".join(sse_chunks(3))
            assert backend.received == [body]

    run(scenario)


def render_messages(messages: list[dict[str, str]]) -> str:
    key = routing_key(CHAT, json.dumps({"model": "m", "messages": messages}).encode())
    assert key.prompt is not None
    return key.prompt


def key_of(path: str, body: dict[str, object]) -> RoutingKey:
    return routing_key(path, json.dumps(body).encode())


def test_chat_rendering_keeps_shared_history_as_a_prefix() -> None:
    system = {"role": "system", "content": "S" * 500}
    turn1 = [system, {"role": "user", "content": "first question"}]
    turn2 = [*turn1, {"role": "assistant", "content": "answer"}, {"role": "user", "content": "q2"}]
    assert render_messages(turn2).startswith(render_messages(turn1))
    other_user = [system, {"role": "user", "content": "unrelated"}]
    shared = render_messages([system])
    assert render_messages(other_user).startswith(shared)

    # Through the real router: the second turn matches the first turn's blocks.
    router = Router(RouterConfig(policy="prefix_aware"), [Node("a"), Node("b")])
    first = key_of(CHAT, {"model": "m", "messages": turn1})
    second = key_of(CHAT, {"model": "m", "messages": turn2})
    d1 = router.route(first.prompt)
    d2 = router.route(second.prompt)
    assert d2.node_id == d1.node_id
    assert d2.matched_blocks >= len(render_messages(turn1)) // router.config.char_block_size
    router.complete(d1.request_id)
    router.complete(d2.request_id)


def test_models_is_the_union_of_backends_and_is_cached() -> None:
    async def scenario() -> None:
        a = Backend("a", models=["m1", "shared"])
        b = Backend("b", models=["m2", "shared"])
        async with running([a, b]) as h:
            for _ in range(2):
                async with h.client.get(h.url + "/v1/models") as resp:
                    assert resp.status == 200
                    document = await resp.json()
            ids = sorted(m["id"] for m in document["data"])
            assert ids == ["m1", "m2", "shared"]
            assert document["object"] == "list"
            assert a.models_calls == 1 and b.models_calls == 1

    run(scenario)


async def expect_error(
    h: Harness,
    status: int,
    code: str,
    *,
    data: bytes | None = None,
    json_body: object = None,
    path: str = "/v1/completions",
) -> None:
    async with h.client.post(h.url + path, data=data, json=json_body) as resp:
        assert resp.status == status
        document = await resp.json()
    error = document["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    assert h.router.in_flight_total == 0


def test_bad_input_gets_openai_errors_and_nothing_in_flight() -> None:
    async def scenario() -> None:
        backend = Backend("a")
        settings = ProxySettings(max_body_bytes=4096)
        async with running([backend], settings) as h:
            await expect_error(h, 400, "invalid_json", data=b'{"model": "x",')
            await expect_error(h, 400, "invalid_json", json_body=[1, 2])
            await expect_error(h, 400, "missing_model", json_body={"prompt": "hi"})
            await expect_error(
                h, 404, "model_not_found", json_body={"model": "nope", "prompt": "x"}
            )
            await expect_error(
                h, 413, "request_too_large", json_body={"model": MODEL, "prompt": "x" * 10_000}
            )
            await expect_error(
                h,
                400,
                "invalid_messages",
                json_body={"model": MODEL, "messages": "hi"},
                path="/v1/chat/completions",
            )
            await expect_error(h, 400, "invalid_prompt", json_body={"model": MODEL, "prompt": 3})
            await expect_error(
                h,
                400,
                "invalid_max_tokens",
                json_body={"model": MODEL, "prompt": "x", "max_tokens": -1},
            )
            async with h.client.get(h.url + "/v1/nothing-here") as resp:
                assert resp.status == 404
                assert (await resp.json())["error"]["code"] == "unknown_endpoint"
            assert backend.received == []
        assert h.completions == []

    run(scenario)


def test_backend_4xx_is_passed_through_without_retry() -> None:
    async def scenario() -> None:
        a = Backend("a", fail_first=1, fail_status=400)
        async with running([a]) as h:
            async with h.client.post(h.url + "/v1/completions", json=stream_body()) as resp:
                assert resp.status == 400
                assert await resp.json() == {"error": "boom"}
            assert len(a.received) == 1
        assert [c.outcome for c in h.completions] == ["ok"]

    run(scenario)


def test_routing_key_of_token_id_prompts() -> None:
    key = key_of(COMPLETIONS, {"model": "m", "prompt": [1, 2, 3], "max_tokens": 9})
    assert key.token_ids == [1, 2, 3] and key.prompt is None
    assert key.expected_output_tokens == 9
    batch = key_of(COMPLETIONS, {"model": "m", "prompt": [[4, 5], [6]]})
    assert batch.token_ids == [4, 5]
    strings = key_of(COMPLETIONS, {"model": "m", "prompt": ["ab", "cd"]})
    assert strings.prompt == "ab"


def test_node_address_without_scheme_means_http() -> None:
    async def scenario() -> None:
        backend = Backend("a")
        await backend.start()
        router = Router(None, [Node("a", backend.address.removeprefix("http://"))])
        proxy = ProxyServer(RecordingService(router))
        port = await proxy.start()
        async with aiohttp.ClientSession() as client:
            body = {"model": MODEL, "prompt": "hi"}
            async with client.post(f"http://127.0.0.1:{port}/v1/completions", json=body) as resp:
                assert resp.status == 200
                assert await resp.read() == completion_json()
        await proxy.stop()
        await backend.stop()
        assert router.in_flight_total == 0

    run(scenario)


def test_refusals_are_counted_and_draining_answers_503() -> None:
    async def scenario() -> None:
        backend = Backend("a")
        async with running([backend]) as h:
            service = h.proxy.service
            assert isinstance(service, RecordingService)
            await expect_error(
                h, 404, "model_not_found", json_body={"model": "nope", "prompt": "x"}
            )
            h.router.set_breaker_state("a", "open")
            await expect_error(h, 503, "no_backend_available", json_body=stream_body())
            h.router.set_breaker_state("a", "closed")
            service.drain()
            await expect_error(h, 503, "no_backend_available", json_body=stream_body())
            assert backend.received == []
            h.proxy.flush()  # refusals reach the service in batches
            assert service.route_errors("proxy", "unknown_model") == 1
            assert service.route_errors("proxy", "no_available_node") == 1
            assert service.route_errors("proxy", "draining") == 1
        assert h.completions == []

    run(scenario)


def test_a_refused_body_does_not_poison_the_clients_connection_pool() -> None:
    """A 413 leaves the rest of the body unread, so it says ``Connection: close``; a
    client reusing its pooled connections then never writes into a closed one."""

    async def scenario() -> None:
        async with running([Backend("a")], ProxySettings(max_body_bytes=64 * 1024)) as h:
            connector = aiohttp.TCPConnector(limit=4)
            async with aiohttp.ClientSession(connector=connector) as client:

                async def one(i: int) -> int:
                    if i % 2:
                        data = b"x" * (1024 * 1024)
                        async with client.post(h.url + "/v1/completions", data=data) as resp:
                            if resp.status == 413:
                                assert resp.headers["Connection"] == "close"
                            return resp.status
                    async with client.post(h.url + "/v1/completions", json=stream_body()) as resp:
                        await resp.read()
                        return resp.status

                statuses = await asyncio.gather(*(one(i) for i in range(40)))
            assert statuses == [200, 413] * 20

    run(scenario)
