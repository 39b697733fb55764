"""Small OpenAI-style aiohttp backends on 127.0.0.1 for the proxy tests and benchmark."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Sequence

from aiohttp import web
from multidict import CIMultiDict

MODEL = "test-model"


def sse_chunks(n: int, *, usage: bool = False) -> list[bytes]:
    """``n`` token events then ``[DONE]``, as vLLM streams them."""
    chunks = [
        b'data: {"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":"t%d"}]}\n\n'
        % i
        for i in range(n)
    ]
    if usage:
        chunks.append(
            b'data: {"id":"cmpl-1","choices":[],"usage":{"prompt_tokens":7,'
            b'"completion_tokens":%d,"total_tokens":%d}}\n\n' % (n, n + 7)
        )
    return [*chunks, b"data: [DONE]\n\n"]


def completion_json(text: str = "hello", completion_tokens: int = 3) -> bytes:
    return json.dumps(
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "model": MODEL,
            "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": 5,
                "completion_tokens": completion_tokens,
                "total_tokens": 5 + completion_tokens,
            },
        }
    ).encode()


class Backend:
    """One fake engine. ``hold`` (when set) makes each request wait for the event before
    answering; ``stall_after_first`` streams the first chunk, then waits for ``hold``."""

    def __init__(
        self,
        name: str,
        *,
        chunks: Sequence[bytes] | None = None,
        models: Sequence[str] = (MODEL,),
        fail_first: int = 0,
        fail_status: int = 500,
        hold: asyncio.Event | None = None,
        stall_after_first: bool = False,
        break_after_first: bool = False,
        chunk_gate: asyncio.Event | None = None,
        chunk_delay_s: float = 0.0,
    ) -> None:
        self.name = name
        self.chunks = list(chunks) if chunks is not None else sse_chunks(3)
        self.models = list(models)
        self.fail_left = fail_first
        self.fail_status = fail_status
        self.hold = hold
        self.stall_after_first = stall_after_first
        self.break_after_first = break_after_first
        self.chunk_gate = chunk_gate
        self.chunk_delay_s = chunk_delay_s
        # perf_counter() right after each streamed chunk was written.
        self.sent_at: list[float] = []
        self.received: list[dict[str, object]] = []
        # Case-insensitive, as HTTP header names are (the proxy sends them lower-case).
        self.headers: list[CIMultiDict[str]] = []
        self.models_calls = 0
        self.cancelled = 0
        self.arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.address = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.address = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.address

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _models(self, _request: web.Request) -> web.Response:
        self.models_calls += 1
        data = [{"id": m, "object": "model", "owned_by": self.name} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received.append(body)
        self.headers.append(CIMultiDict(request.headers))
        self.arrived.set()
        try:
            if self.fail_left > 0:
                self.fail_left -= 1
                return web.json_response({"error": "boom"}, status=self.fail_status)
            if self.hold is not None and not self.stall_after_first:
                await self.hold.wait()
            if not body.get("stream"):
                return web.Response(body=completion_json(), content_type="application/json")
            return await self._stream(request)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, chunk in enumerate(self.chunks):
            if i and self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            await response.write(chunk)
            self.sent_at.append(time.perf_counter())
            if i == 0 and self.break_after_first:
                assert request.transport is not None
                request.transport.close()
                return response
            if i == 0 and self.stall_after_first and self.hold is not None:
                await self.hold.wait()
            if self.chunk_gate is not None:
                await self.chunk_gate.wait()
                self.chunk_gate.clear()
        await response.write_eof()
        return response


def closed_port_address() -> str:
    """An address where nothing listens (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
