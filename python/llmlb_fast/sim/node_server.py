"""Live mode: one simulated GPU node as a real HTTP server speaking vLLM's OpenAI API.

Serves ``/v1/completions`` and ``/v1/chat/completions`` (with SSE streaming),
``/v1/models``, ``/health`` and ``/metrics`` (vLLM's Prometheus names), driving the
same :class:`~llmlb_fast.sim.engine.Engine` as the discrete-event mode in real time
sped up by ``dilation`` (10 = ten simulated seconds per wall second).

Text is turned into token ids four bytes at a time (each chat message on its own, as a
chat template does, ending with the assistant's header), so equal text prefixes are
equal token prefixes and hit the node's prefix cache. The generated text is `` tok``
per token, and its token ids are those of that text, so a conversation's next turn,
which resends the answer, hits the blocks the answer left in the cache. Streams send
one chunk every ``chunk_interval_s`` of wall time at most (what was generated since the
last one); a coarser interval keeps a busy benchmark from measuring Python's cost of
many small chunks instead of the simulated engine. With
``stream_options.include_usage`` the stream ends with a usage chunk, as vLLM's does
(``prompt_tokens_details.cached_tokens`` included). Every ``report_interval_s`` (simulated)
the node hands the GPU figures an NVML agent would report to ``on_metrics`` (for
example a client of the router's ``ReportMetrics`` stream). PCIe figures count the
host-device traffic of token ids (4 bytes each: prompt tokens in, generated tokens out);
tensor-parallel traffic between the GPUs goes over NVLink and is not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from llmlb_fast.kv_events.publisher import KvEventPublisher
from llmlb_fast.kv_events.wire import BlockRemoved, BlockStored, KvEvent
from llmlb_fast.sim.engine import Engine, EventKind, RequestState, SimRequest
from llmlb_fast.sim.monitor import EngineMonitor
from llmlb_fast.sim.profiles import BLOCK_TOKENS, HardwareProfile
from llmlb_fast.sim.workloads import chain_keys
from llmlb_fast.tokenizer import ModelTokenizer, TemplateError

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
MetricsCallback = Callable[[str, dict[str, float]], None]
OUTPUT_PIECE = " tok"
"""The text of one generated token (four bytes: one token of :func:`text_to_tokens`)."""
TOKEN_BYTES = 4


def text_to_tokens(text: str) -> list[int]:
    """Deterministic stand-in tokenizer: four UTF-8 bytes per token."""
    data = text.encode()
    return [int.from_bytes(data[i : i + 4], "little") for i in range(0, len(data), 4)]


def chat_to_tokens(messages: list[dict[str, Any]]) -> list[int]:
    """A chat template's tokens: each message's header and content, then the assistant's
    header (the generation prompt)."""
    tokens: list[int] = []
    for message in messages:
        tokens += text_to_tokens(f"<|{message.get('role', 'user')}|>")
        tokens += text_to_tokens(message["content"])
    return tokens + text_to_tokens("<|assistant|>")


@dataclass(eq=False)
class _Pending:
    request: SimRequest
    first_token: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class _VllmCollector:
    """Exposes the engine's state under vLLM's metric names at scrape time."""

    def __init__(self, node: SimNode) -> None:
        self.node = node

    def collect(self) -> Iterable[Metric]:
        node, engine = self.node, self.node.engine
        labels = ["model_name"]
        value = [node.model]
        snap = engine.snapshot(node.virtual_now())
        for name, doc, number in (
            ("vllm:num_requests_running", "Requests in the running batch.", snap.running),
            ("vllm:num_requests_waiting", "Requests waiting to be scheduled.", snap.waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage (1 = full).", snap.kv_usage),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=labels)
            gauge.add_metric(value, number)
            yield gauge
        c = engine.counters
        for name, doc, number in (
            ("vllm:prefix_cache_queries", "Prompt tokens looked up.", c.prompt_tokens),
            ("vllm:prefix_cache_hits", "Prompt tokens found cached.", c.cached_tokens),
            ("vllm:num_preemptions", "Preempted sequences.", c.preemptions),
            ("vllm:generation_tokens", "Generated tokens.", c.generated_tokens),
        ):
            counter = CounterMetricFamily(name, doc, labels=labels)
            counter.add_metric(value, number)
            yield counter
        histogram = HistogramMetricFamily(
            "vllm:time_to_first_token_seconds", "Time to first token (simulated s).", labels=labels
        )
        cumulative, running = [], 0
        for bound, count in zip(TTFT_BUCKETS, node.ttft_counts, strict=False):
            running += count
            cumulative.append((str(bound), running))
        cumulative.append(("+Inf", running + node.ttft_counts[-1]))
        histogram.add_metric(value, cumulative, node.ttft_sum)
        yield histogram


class SimNode:
    """A simulated node served over HTTP; ``await start()``, then ``await stop()``."""

    def __init__(
        self,
        profile: HardwareProfile,
        *,
        node_id: str = "sim-node",
        model: str = "llama-3-70b",
        dilation: float = 10.0,
        report_interval_s: float = 1.0,
        on_metrics: MetricsCallback | None = None,
        chunk_interval_s: float = 0.02,
        kv_events: bool = False,
        tokenizer: ModelTokenizer | None = None,
    ) -> None:
        if dilation <= 0 or report_interval_s <= 0 or chunk_interval_s <= 0:
            raise ValueError("dilation, report_interval_s and chunk_interval_s must be > 0")
        self.engine = Engine(profile, node_id=node_id, record_kv_events=kv_events)
        # With kv_events: vLLM's ZMQ publisher (PUB + replay ROUTER, bound at start).
        self.kv_events = kv_events
        # The model's tokenizer (a router in front tokenizing alike matches the blocks
        # the events report); None: the stand-in (four bytes per token).
        self.tokenizer = tokenizer
        self.kv_publisher: KvEventPublisher | None = None
        # The tokens of the blocks of requests in flight (events carry them), by key,
        # with how many of those requests hold each key.
        self._block_tokens: dict[int, tuple[list[int], int]] = {}
        self.node_id, self.model, self.dilation = node_id, model, dilation
        self.report_interval_s = report_interval_s
        self.on_metrics = on_metrics
        self.chunk_interval_s = chunk_interval_s
        self.ttft_counts = [0] * (len(TTFT_BUCKETS) + 1)
        self.ttft_sum = 0.0
        self.registry = CollectorRegistry()
        self.registry.register(_VllmCollector(self))
        self._pending: dict[str, _Pending] = {}
        self._wake = asyncio.Event()
        self._next_id = 0
        self._started = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    def virtual_now(self) -> float:
        return (time.monotonic() - self._started) * self.dilation

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        app.add_routes(
            [
                web.get("/health", self._health),
                web.get("/v1/models", self._models),
                web.get("/metrics", self._metrics),
                web.post("/v1/completions", self._completions),
                web.post("/v1/chat/completions", self._chat),
            ]
        )
        # handler_cancellation: a client that gives up cancels its request in the engine.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        if self.kv_events:
            self.kv_publisher = KvEventPublisher(f"tcp://{host}:0", f"tcp://{host}:0")
        self._started = time.monotonic()
        self._tasks = [asyncio.create_task(self._drive()), asyncio.create_task(self._report())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._runner is not None:
            await self._runner.cleanup()
        if self.kv_publisher is not None:
            await asyncio.to_thread(self.kv_publisher.close)
            self.kv_publisher = None

    # Engine loop --------------------------------------------------------------------
    async def _drive(self) -> None:
        while True:
            nxt = self.engine.next_time()
            self._wake.clear()
            if nxt is None:
                await self._wake.wait()
                continue
            delay = (nxt - self.virtual_now()) / self.dilation
            if delay > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                    continue  # a new request changed the schedule
                except asyncio.TimeoutError:
                    pass
            events = self.engine.advance(max(nxt, self.virtual_now()))
            self._publish_kv_events()
            for event in events:
                pending = self._pending.get(event.request.request_id)
                if pending is None:
                    continue
                if event.kind is EventKind.FIRST_TOKEN:
                    self._observe_ttft(event.request.ttft_s or 0.0)
                    pending.first_token.set()
                else:
                    pending.first_token.set()
                    pending.done.set()

    async def _report(self) -> None:
        monitor = EngineMonitor(self.engine, self.report_interval_s)
        counters = self.engine.counters
        last_in, last_out = counters.prompt_tokens, counters.generated_tokens
        while True:
            await asyncio.sleep(self.report_interval_s / self.dilation)
            figures = monitor.figures(monitor.read(self.virtual_now()))
            tokens_in = counters.prompt_tokens - last_in
            tokens_out = counters.generated_tokens - last_out
            last_in, last_out = counters.prompt_tokens, counters.generated_tokens
            figures["pcie_rx_bytes_per_s"] = tokens_in * TOKEN_BYTES / self.report_interval_s
            figures["pcie_tx_bytes_per_s"] = tokens_out * TOKEN_BYTES / self.report_interval_s
            if self.on_metrics is not None:
                self.on_metrics(self.node_id, figures)

    # KV events -----------------------------------------------------------------------
    def _hold_block_tokens(self, request: SimRequest, tokens: list[int]) -> None:
        for i, key in enumerate(request.block_keys):
            block, holders = self._block_tokens.get(
                key, (tokens[BLOCK_TOKENS * i : BLOCK_TOKENS * (i + 1)], 0)
            )
            self._block_tokens[key] = (block, holders + 1)

    def _drop_block_tokens(self, request: SimRequest) -> None:
        for key in request.block_keys:
            block, holders = self._block_tokens[key]
            if holders == 1:
                del self._block_tokens[key]
            else:
                self._block_tokens[key] = (block, holders - 1)

    def _publish_kv_events(self) -> None:
        """What the engine stored and evicted since the last call, as vLLM publishes it:
        the engine's block keys as its hashes, with the stored blocks' tokens."""
        if self.kv_publisher is None:
            return
        batch: list[KvEvent] = []
        for kind, keys, parent in self.engine.take_kv_events():
            if kind == "stored":
                blocks = [self._block_tokens.get(key) for key in keys]
                tokens = [t for block in blocks if block is not None for t in block[0]]
                batch.append(BlockStored(list(keys), parent, tokens, BLOCK_TOKENS))
            else:
                batch.append(BlockRemoved(list(keys)))
        if batch:
            self.kv_publisher.publish(batch)

    def _observe_ttft(self, ttft: float) -> None:
        self.ttft_sum += ttft
        for i, bound in enumerate(TTFT_BUCKETS):
            if ttft <= bound:
                self.ttft_counts[i] += 1
                return
        self.ttft_counts[-1] += 1

    # HTTP ---------------------------------------------------------------------------
    async def _health(self, _: web.Request) -> web.Response:
        return web.Response(text="")

    async def _models(self, _: web.Request) -> web.Response:
        model = {"id": self.model, "object": "model", "owned_by": "llmlb-sim"}
        return web.json_response({"object": "list", "data": [model]})

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain")

    async def _completions(self, http: web.Request) -> web.StreamResponse:
        body = await _json_body(http)
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            tokens = (
                self.tokenizer.encode_text(prompt) if self.tokenizer else text_to_tokens(prompt)
            )
        elif isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            tokens = list(prompt)
        else:
            raise _bad_request("prompt must be a string or a list of token ids")
        return await self._serve(http, body, tokens, chat=False)

    async def _chat(self, http: web.Request) -> web.StreamResponse:
        body = await _json_body(http)
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
        ):
            raise _bad_request("messages must be a list of {role, content} objects")
        if self.tokenizer is None:
            return await self._serve(http, body, chat_to_tokens(messages), chat=True)
        try:
            tokens = self.tokenizer.encode_chat(messages)
        except TemplateError as error:
            raise _bad_request(str(error)) from None
        return await self._serve(http, body, tokens, chat=True)

    async def _serve(
        self, http: web.Request, body: dict[str, Any], tokens: list[int], *, chat: bool
    ) -> web.StreamResponse:
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 16))
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise _bad_request("max_tokens must be an integer >= 1")
        if not tokens:
            raise _bad_request("the prompt is empty")
        self._next_id += 1
        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{self.node_id}-{self._next_id}"
        output = text_to_tokens(OUTPUT_PIECE) * max_tokens
        all_tokens = [*tokens, *output]
        request = SimRequest(
            request_id,
            len(tokens),
            max_tokens,
            chain_keys(all_tokens, []),
            arrival_s=self.virtual_now(),
        )
        self._hold_block_tokens(request, all_tokens)
        try:
            self.engine.submit(request, self.virtual_now())
        except ValueError as e:
            self._drop_block_tokens(request)
            raise _bad_request(str(e)) from None
        self._publish_kv_events()
        pending = _Pending(request)
        self._pending[request_id] = pending
        self._wake.set()
        try:
            if body.get("stream"):
                options = body.get("stream_options")
                usage = isinstance(options, dict) and options.get("include_usage") is True
                return await self._stream(http, pending, chat, usage)
            await pending.done.wait()
            return web.json_response(self._full_response(pending, chat))
        finally:
            if request.state is not RequestState.FINISHED:
                self.engine.cancel(request, self.virtual_now())
            self._publish_kv_events()
            self._drop_block_tokens(request)
            self._pending.pop(request_id, None)

    async def _stream(
        self, http: web.Request, pending: _Pending, chat: bool, usage: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(http)
        try:
            async for piece, finish in self._pieces(pending):
                chunk = self._chunk(pending.request.request_id, piece, finish, chat)
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if usage:
                chunk = self._chunk(pending.request.request_id, "", None, chat)
                chunk["choices"] = []
                chunk["usage"] = _usage(pending.request)
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away; _serve cancels the request in the engine
        return response

    async def _pieces(self, pending: _Pending) -> AsyncIterator[tuple[str, str | None]]:
        """Text deltas as the simulated tokens come out (polled; one word per token)."""
        await pending.first_token.wait()
        sent = 0
        while True:
            request = pending.request
            if request.state is RequestState.FINISHED:
                total = request.output_tokens
            else:
                total = max(1, self.engine.generated_tokens(request, self.virtual_now()))
            if total > sent:
                yield OUTPUT_PIECE * (total - sent), None
                sent = total
            if request.state is RequestState.FINISHED:
                yield "", "length"
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(pending.done.wait(), timeout=self.chunk_interval_s)

    def _chunk(self, request_id: str, text: str, finish: str | None, chat: bool) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            choice["delta"] = {"content": text} if text else {}
        else:
            choice["text"] = text
        return {
            "id": request_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [choice],
        }

    def _full_response(self, pending: _Pending, chat: bool) -> dict[str, Any]:
        request = pending.request
        text = OUTPUT_PIECE * request.output_tokens
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {
            "id": request.request_id,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [choice],
            "usage": _usage(request),
        }


def _usage(request: SimRequest) -> dict[str, Any]:
    return {
        "prompt_tokens": request.prompt_tokens,
        "completion_tokens": request.output_tokens,
        "total_tokens": request.prompt_tokens + request.output_tokens,
        "prompt_tokens_details": {"cached_tokens": request.cached_tokens},
    }


async def _json_body(http: web.Request) -> dict[str, Any]:
    try:
        body = await http.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _bad_request("the body is not JSON") from None
    if not isinstance(body, dict):
        raise _bad_request("the body must be a JSON object")
    return body


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": {"message": message, "type": "invalid_request_error"}}),
        content_type="application/json",
    )
