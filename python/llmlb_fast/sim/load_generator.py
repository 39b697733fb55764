"""The live benchmark's load generator: the chat scenario as real streaming HTTP requests.

The same shape as :class:`~llmlb_fast.sim.workloads.ChatSessions` (closed loop):
``sessions`` system prompts, ``streams`` concurrent conversations per session, each
turn resends the whole history plus ``input_tokens`` of new user text and asks for
``output_tokens``; a new turn follows an exponential think time; after ``turns`` turns
(or a failed request: the user gives up) a new conversation starts. The text is
generated from the seed, so runs send the same prompts in the same order per stream.

Times are simulated: the client's wall-clock time to the first streamed token is
multiplied by the dilation (it includes the router's and the HTTP hops' real cost,
scaled up too). A request with no first token ``timeout_s`` (simulated) after it was
sent is abandoned (connection closed) and counts as a timeout, as in the DES.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

from llmlb_fast.sim.des import RequestRecord
from llmlb_fast.sim.node_server import TOKEN_BYTES, chat_to_tokens

_WORD_TEXT = (
    "order parcel refund invoice flight seat booking delay weather policy account balance "
    "transfer card limit review function loop error retry cache memory thread socket "
    "timeout server client token prompt answer question customer support product price "
    "ship return damaged warranty schedule doctor clinic visit travel hotel city museum"
)
WORDS = tuple(_WORD_TEXT.split())
CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class ChatLoad:
    sessions: int = 8
    streams: int = 10
    system_tokens: int = 1000
    input_tokens: int = 200
    output_tokens: int = 800
    turns: int = 4
    think_s: float = 2.0
    ramp_s: float = 5.0
    duration_s: float = 300.0
    timeout_s: float = 10.0
    seed: int = 0
    model: str = "llama-3-70b"

    def __post_init__(self) -> None:
        if min(self.sessions, self.streams, self.input_tokens, self.output_tokens, self.turns) < 1:
            raise ValueError("sessions, streams, input/output tokens and turns must be >= 1")
        if self.system_tokens < 0 or self.think_s < 0 or self.ramp_s < 0:
            raise ValueError("system tokens, think time and ramp must be >= 0")
        if self.duration_s <= 0 or self.timeout_s <= 0:
            raise ValueError("duration and timeout must be > 0")


def filler_text(rng: random.Random, tokens: int, tag: str = "") -> str:
    """ASCII text of exactly ``tokens`` simulated tokens (4 bytes each), led by ``tag``."""
    size = tokens * TOKEN_BYTES
    parts = [tag] if tag else []
    length = len(tag)
    while length < size:
        word = rng.choice(WORDS)
        parts.append(word)
        length += len(word) + 1
    return " ".join(parts)[:size]


# A replica that is down or died: worth another replica when no token came yet.
_RETRYABLE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)


@dataclass
class LoadStats:
    """What the generator saw, besides the per-request records."""

    records: list[RequestRecord] = field(default_factory=list)
    unknown_node: int = 0
    # Attempts sent again to another router replica (the first could not connect, or
    # broke before the first token).
    retries: int = 0


class LiveChatLoad:
    """Plays a :class:`ChatLoad` against ``base_url`` (an OpenAI-compatible endpoint), or
    against several (router replicas): each request goes to a random one, and to
    another when it cannot connect or breaks before its first token."""

    def __init__(
        self,
        base_url: str | Sequence[str],
        load: ChatLoad,
        dilation: float,
        node_index: dict[str, int],
    ) -> None:
        bases = [base_url] if isinstance(base_url, str) else list(base_url)
        self.urls = [base.rstrip("/") + CHAT_PATH for base in bases]
        self._splitter = random.Random(f"{load.seed}:replicas")
        self.load = load
        self.dilation = dilation
        self.node_index = node_index
        self.stats = LoadStats()
        rng = random.Random(f"{load.seed}:system")
        self.system_prompts = [
            filler_text(rng, load.system_tokens, f"[system prompt {s}]")
            for s in range(load.sessions)
        ]
        self._t0 = time.monotonic()

    def sim_now(self) -> float:
        return (time.monotonic() - self._t0) * self.dilation

    async def run(self) -> LoadStats:
        """Runs for ``duration_s`` simulated seconds; requests still running at the end
        are abandoned and stay ``pending`` (as in the DES)."""
        load = self.load
        self._t0 = time.monotonic()
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5.0)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            streams = [
                asyncio.create_task(self._stream(session, s))
                for s in range(load.sessions * load.streams)
            ]
            try:
                await asyncio.sleep(load.duration_s / self.dilation)
            finally:
                for task in streams:
                    task.cancel()
                await asyncio.gather(*streams, return_exceptions=True)
        return self.stats

    async def _stream(self, session: aiohttp.ClientSession, stream: int) -> None:
        load = self.load
        rng = random.Random(f"{load.seed}:{stream}")
        await asyncio.sleep(rng.uniform(0.0, load.ramp_s) / self.dilation)  # no lockstep
        conversation = 0
        while True:
            messages = [{"role": "system", "content": self.system_prompts[stream % load.sessions]}]
            for turn in range(load.turns):
                tag = f"[stream {stream} conversation {conversation} turn {turn}]"
                messages.append(
                    {"role": "user", "content": filler_text(rng, load.input_tokens, tag)}
                )
                answer = await self._request(session, messages)
                think = rng.expovariate(1.0 / load.think_s) if load.think_s > 0 else 0.0
                await asyncio.sleep(think / self.dilation)
                if answer is None:
                    break
                messages.append({"role": "assistant", "content": answer})
            conversation += 1

    async def _request(
        self, session: aiohttp.ClientSession, messages: list[dict[str, str]]
    ) -> str | None:
        """The answer's text, or None when the request failed or timed out."""
        record = RequestRecord(
            arrival_s=self.sim_now(), node=-1, prompt_tokens=len(chat_to_tokens(messages))
        )
        self.stats.records.append(record)
        body = {
            "model": self.load.model,
            "messages": messages,
            "max_tokens": self.load.output_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        first = asyncio.Event()
        exchange = asyncio.create_task(self._exchange(session, body, record, first))
        waiter = asyncio.create_task(first.wait())
        try:
            done, _ = await asyncio.wait(
                {exchange, waiter},
                timeout=self.load.timeout_s / self.dilation,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not done:
                record.outcome, record.finish_s = "timeout", self.sim_now()
                return None
            return await exchange
        finally:
            for task in (waiter, exchange):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        body: dict[str, object],
        record: RequestRecord,
        first: asyncio.Event,
    ) -> str | None:
        started = time.monotonic()
        replicas = list(range(len(self.urls)))
        self._splitter.shuffle(replicas)
        for attempt, replica in enumerate(replicas):
            record.replica = replica
            try:
                return await self._attempt(
                    session, self.urls[replica], body, record, first, started
                )
            except _RETRYABLE:
                if record.ttft_s is not None or attempt == len(replicas) - 1:
                    break  # tokens were streamed already: a retry would repeat them
                self.stats.retries += 1
        record.outcome, record.finish_s = "rejected", self.sim_now()
        return None

    async def _attempt(
        self,
        session: aiohttp.ClientSession,
        url: str,
        body: dict[str, object],
        record: RequestRecord,
        first: asyncio.Event,
        started: float,
    ) -> str | None:
        """One try at one replica; raises the connection errors worth retrying."""
        pieces: list[str] = []
        try:
            async with session.post(url, json=body) as response:
                node = response.headers.get("x-llmlb-node")
                if node is not None:
                    record.node = self.node_index.get(node, -1)
                if response.status != 200:
                    await response.read()
                    record.outcome, record.finish_s = "rejected", self.sim_now()
                    return None
                async for line in response.content:
                    if not line.startswith(b"data: "):
                        continue
                    data = line[6:].strip()
                    if data == b"[DONE]":
                        break
                    chunk = json.loads(data)
                    for choice in chunk.get("choices") or ():
                        text = (choice.get("delta") or {}).get("content")
                        if text and record.ttft_s is None:
                            record.ttft_s = (time.monotonic() - started) * self.dilation
                            self._note_node(record, chunk)
                            first.set()
                        if text:
                            pieces.append(text)
                    usage = chunk.get("usage")
                    if usage:
                        record.prompt_tokens = usage["prompt_tokens"]
                        details = usage.get("prompt_tokens_details") or {}
                        record.cached_tokens = details.get("cached_tokens") or 0
                        record.output_tokens = usage["completion_tokens"]
        except _RETRYABLE:
            raise
        except (aiohttp.ClientError, ValueError, KeyError):
            record.outcome, record.finish_s = "rejected", self.sim_now()
            return None
        if record.ttft_s is None:  # the stream ended without a token
            record.outcome, record.finish_s = "rejected", self.sim_now()
            return None
        record.outcome, record.finish_s = "ok", self.sim_now()
        return "".join(pieces)

    def _note_node(self, record: RequestRecord, chunk: dict[str, object]) -> None:
        """The node that answered, from the chunk id (``chatcmpl-NODE-N``): works behind
        any router, not only behind llmlb's proxy (which also says it in a header)."""
        if record.node >= 0:
            return
        chunk_id = str(chunk.get("id", ""))
        node_id = chunk_id.removeprefix("chatcmpl-").rpartition("-")[0]
        record.node = self.node_index.get(node_id, -1)
        if record.node < 0:
            self.stats.unknown_node += 1
