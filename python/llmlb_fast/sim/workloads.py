"""Workloads: what requests arrive, when, and with which tokens.

A workload hands out :class:`WorkItem` s: token ids for the router (equal prefixes are
equal token ids), the chain keys of the 16-token blocks for the engine's prefix cache,
and the output length. Closed-loop workloads issue the next request when one finishes
(:meth:`Workload.on_done`); open-loop ones schedule every arrival up front.

- :class:`ChatSessions` — the article's scenario: sessions with a shared system prompt,
  each with ``streams`` concurrent conversations whose history grows turn by turn
  (200 new input tokens, 800 output tokens per turn by default).
- :class:`TraceReplay` — a Mooncake-format JSONL trace (``hash_ids`` name 512-token
  blocks) or an Azure LLM inference CSV trace (TIMESTAMP, ContextTokens,
  GeneratedTokens), at the trace's timestamps, scaled, or at fixed concurrency.
- :class:`Uniform` — requests of fixed size sharing nothing (the control).
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from llmlb_fast import hash_token_blocks
from llmlb_fast.sim.profiles import BLOCK_TOKENS

MOONCAKE_BLOCK_TOKENS = 512
"""Tokens per ``hash_ids`` entry in the Mooncake traces."""

FRESH_TOKEN_BASE = 1 << 31
"""Token ids of never-shared text start here; trace-derived ids stay below it."""


@dataclass(eq=False)
class WorkItem:
    """One request to issue. ``tokens`` and ``block_keys`` may be left None until
    :meth:`Workload.materialize` (a trace builds them only when the request arrives,
    a chat turn only if asked: the simulator routes by block keys)."""

    request_id: str
    arrival_s: float
    tokens: list[int] | None
    prompt_tokens: int
    output_tokens: int
    block_keys: list[int] | None
    stream: int = -1  # closed-loop stream that issued it, -1 for open-loop arrivals
    record: TraceRecord | None = None
    conversation: _Conversation | None = None


def chain_keys(tokens: Sequence[int], keys: list[int]) -> list[int]:
    """Extends ``keys`` with the chain key of every full block of ``tokens`` not yet keyed.

    The keys are the router's own block hashes (:func:`llmlb_fast.hash_token_blocks`):
    key ``i`` covers the whole prefix up to block ``i``, so equal keys mean equal
    prefixes, and the simulator can route by them without hashing a prompt twice.
    """
    start = len(keys) * BLOCK_TOKENS
    end = start + (len(tokens) - start) // BLOCK_TOKENS * BLOCK_TOKENS
    if end > start:
        parent = keys[-1] if keys else None
        keys.extend(hash_token_blocks(tokens[start:end], block_size=BLOCK_TOKENS, parent=parent))
    return keys


class FreshTokens:
    """Token ids never used before (text no other request shares)."""

    def __init__(self) -> None:
        self.next = FRESH_TOKEN_BASE

    def take(self, n: int) -> range:
        start = self.next
        self.next += n
        if self.next >= 1 << 32:
            raise OverflowError("the workload ran out of 32-bit token ids")
        return range(start, start + n)


class Workload:
    """Base: a closed-loop or open-loop source of work items."""

    name = "workload"

    def start(self) -> list[WorkItem]:
        raise NotImplementedError

    def on_done(self, item: WorkItem, now: float, ok: bool) -> list[WorkItem]:
        return []

    def materialize(self, item: WorkItem) -> tuple[list[int], list[int]]:
        """The item's prompt token ids and block keys, built now if they were deferred."""
        assert item.tokens is not None and item.block_keys is not None
        return item.tokens, item.block_keys

    def block_keys(self, item: WorkItem) -> list[int]:
        """The item's block keys alone (cheaper: no copy of a long prompt)."""
        if item.block_keys is not None:
            return item.block_keys
        return self.materialize(item)[1]

    def describe(self) -> dict[str, object]:
        return {"name": self.name}


# -- The article's chat scenario ---------------------------------------------------


@dataclass
class _Conversation:
    """A conversation's history: its token ids as ranges (never copied into lists on
    the hot path), the chain keys of its full blocks and the tokens after them."""

    segments: list[range] = field(default_factory=list)
    length: int = 0
    keys: list[int] = field(default_factory=list)
    tail: list[int] = field(default_factory=list)
    turn: int = 0

    def extend(self, tokens: range) -> None:
        """Appends tokens and keys every block they complete."""
        self.segments.append(tokens)
        self.length += len(tokens)
        keys, tail = self.keys, self.tail
        if tail:
            need = BLOCK_TOKENS - len(tail)
            tail.extend(tokens[:need])
            if len(tail) < BLOCK_TOKENS:
                return
            keys.extend(hash_token_blocks(tail, block_size=BLOCK_TOKENS, parent=_last(keys)))
            tokens = tokens[need:]
        full = len(tokens) // BLOCK_TOKENS * BLOCK_TOKENS
        if full:
            keys.extend(
                hash_token_blocks(tokens[:full], block_size=BLOCK_TOKENS, parent=_last(keys))
            )
        self.tail = list(tokens[full:])

    def token_ids(self, n: int) -> list[int]:
        """The first ``n`` token ids."""
        ids: list[int] = []
        for segment in self.segments:
            ids.extend(segment[: n - len(ids)])
            if len(ids) >= n:
                break
        return ids

    def fork(self) -> _Conversation:
        """A new conversation starting with this one's history."""
        return _Conversation(list(self.segments), self.length, list(self.keys), list(self.tail))


def _last(keys: list[int]) -> int | None:
    return keys[-1] if keys else None


class ChatSessions(Workload):
    """Sessions sharing a system prompt; conversations with a growing history.

    With ``rate_per_s`` None, each session runs ``streams`` closed-loop conversation
    streams (a new turn ``think`` seconds after the previous answer; a new conversation
    after ``turns`` turns). With ``rate_per_s``, conversations arrive as a Poisson
    process across sessions and each runs its ``turns`` turns closed-loop, then leaves.
    """

    name = "chat"

    def __init__(
        self,
        *,
        sessions: int = 8,
        streams: int = 20,
        system_tokens: int = 1000,
        input_tokens: int = 200,
        output_tokens: int = 800,
        turns: int = 4,
        think_s: float = 2.0,
        rate_per_s: float | None = None,
        ramp_s: float = 120.0,
        duration_s: float = 7200.0,
        seed: int = 0,
    ) -> None:
        if min(sessions, streams, input_tokens, output_tokens, turns) < 1:
            raise ValueError("sessions, streams, input/output tokens and turns must be >= 1")
        if system_tokens < 0 or think_s < 0 or ramp_s < 0 or duration_s <= 0:
            raise ValueError("system_tokens, think_s and ramp_s must be >= 0, duration_s > 0")
        if rate_per_s is not None and rate_per_s <= 0:
            raise ValueError("rate_per_s must be > 0")
        self.sessions, self.streams = sessions, streams
        self.input_tokens, self.output_tokens = input_tokens, output_tokens
        self.turns, self.think_s, self.rate_per_s = turns, think_s, rate_per_s
        self.ramp_s = ramp_s
        self.duration_s = duration_s
        self.rng = random.Random(seed)
        self.fresh = FreshTokens()
        self.system_prompts: list[_Conversation] = []
        for _ in range(sessions):
            system_prompt = _Conversation()
            system_prompt.extend(self.fresh.take(system_tokens))
            self.system_prompts.append(system_prompt)
        self.system_tokens = system_tokens
        self.conversations: dict[int, _Conversation] = {}
        self._next_id = 0

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "sessions": self.sessions,
            "streams_per_session": self.streams,
            "system_tokens": self.system_tokens,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "turns": self.turns,
            "think_s": self.think_s,
            "rate_per_s": self.rate_per_s,
            "ramp_s": self.ramp_s,
            "duration_s": self.duration_s,
        }

    def start(self) -> list[WorkItem]:
        if self.rate_per_s is None:
            streams = self.sessions * self.streams
            # Streams started together stay in step for most of an hour: every node's KV
            # cache fills at the same turn and empties at the same restart. Starting them
            # over about one conversation's length spreads their turns as in steady traffic.
            return [self._turn(s, self.rng.uniform(0, self.ramp_s)) for s in range(streams)]
        items: list[WorkItem] = []
        t = 0.0
        stream = 0
        while True:
            t += self.rng.expovariate(self.rate_per_s)
            if t >= self.duration_s:
                return items
            items.append(self._turn(stream, t))
            stream += 1

    def on_done(self, item: WorkItem, now: float, ok: bool) -> list[WorkItem]:
        conversation = self.conversations[item.stream]
        if not ok:
            conversation.turn = self.turns  # the user gives up on this conversation
        if conversation.turn >= self.turns:
            del self.conversations[item.stream]
            if self.rate_per_s is not None:
                return []
        at = now + (self.rng.expovariate(1.0 / self.think_s) if self.think_s > 0 else 0.0)
        if at >= self.duration_s:
            self.conversations.pop(item.stream, None)
            return []
        return [self._turn(item.stream, at)]

    def _turn(self, stream: int, at: float) -> WorkItem:
        conversation = self.conversations.get(stream)
        if conversation is None:
            session = (
                stream % self.sessions
                if self.rate_per_s is None
                else (self.rng.randrange(self.sessions))
            )
            conversation = self.system_prompts[session].fork()
            self.conversations[stream] = conversation
        prompt_tokens = conversation.length + self.input_tokens
        conversation.extend(self.fresh.take(self.input_tokens + self.output_tokens))
        conversation.turn += 1
        self._next_id += 1
        return WorkItem(
            request_id=f"chat-{self._next_id}",
            arrival_s=at,
            tokens=None,
            prompt_tokens=prompt_tokens,
            output_tokens=self.output_tokens,
            block_keys=list(conversation.keys),
            stream=stream,
            conversation=conversation,
        )

    def materialize(self, item: WorkItem) -> tuple[list[int], list[int]]:
        if item.tokens is None and item.conversation is not None:
            item.tokens = item.conversation.token_ids(item.prompt_tokens)
        return super().materialize(item)


# -- Trace replay ------------------------------------------------------------------


@dataclass(frozen=True)
class TraceRecord:
    timestamp_s: float
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()


def read_trace(path: str | Path) -> list[TraceRecord]:
    """Reads a Mooncake JSONL trace or an Azure-format CSV trace, sorted by time."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trace {str(path)!r} does not exist")
    records = _read_csv(path) if path.suffix.lower() == ".csv" else _read_jsonl(path)
    if not records:
        raise ValueError(f"trace {str(path)!r} holds no requests")
    records.sort(key=lambda r: r.timestamp_s)
    start = records[0].timestamp_s
    return [
        TraceRecord(r.timestamp_s - start, r.input_tokens, r.output_tokens, r.hash_ids)
        for r in records
    ]


def _positive_int(value: object, what: str, where: str) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{where}: {what} {value!r} is not an integer") from None
    if number < 1:
        raise ValueError(f"{where}: {what} must be >= 1, got {number}")
    return number


def _read_jsonl(path: Path) -> list[TraceRecord]:
    records: list[TraceRecord] = []
    with path.open() as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object")
            missing = {"timestamp", "input_length", "output_length"} - row.keys()
            if missing:
                raise ValueError(f"{where}: missing {sorted(missing)}")
            hash_ids = row.get("hash_ids", [])
            if not isinstance(hash_ids, list) or not all(
                isinstance(h, int) and 0 <= h < FRESH_TOKEN_BASE // MOONCAKE_BLOCK_TOKENS
                for h in hash_ids
            ):
                raise ValueError(f"{where}: hash_ids must be a list of small non-negative ints")
            records.append(
                TraceRecord(
                    float(row["timestamp"]) / 1000.0,
                    _positive_int(row["input_length"], "input_length", where),
                    _positive_int(row["output_length"], "output_length", where),
                    tuple(hash_ids),
                )
            )
    return records


def _parse_timestamp(text: str, where: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    head, dot, frac = text.partition(".")
    if dot:  # Azure writes 7 fractional digits; datetime takes at most 6.
        text = f"{head}.{frac[:6]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"{where}: timestamp {text!r} is neither seconds nor a date") from None


def _read_csv(path: Path) -> list[TraceRecord]:
    records: list[TraceRecord] = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = {c.strip().lower(): c for c in reader.fieldnames or []}
        aliases = {
            "timestamp": ("timestamp",),
            "input": ("contexttokens", "input_length", "input_tokens"),
            "output": ("generatedtokens", "output_length", "output_tokens"),
        }
        found: dict[str, str] = {}
        for role, names in aliases.items():
            for name in names:
                if name in columns:
                    found[role] = columns[name]
                    break
            else:
                raise ValueError(
                    f"{path}: no {role} column (expected one of {', '.join(names)}); "
                    f"columns are {reader.fieldnames}"
                )
        for line_no, row in enumerate(reader, 2):
            where = f"{path}:{line_no}"
            records.append(
                TraceRecord(
                    _parse_timestamp(row[found["timestamp"]], where),
                    _positive_int(row[found["input"]], "input tokens", where),
                    _positive_int(row[found["output"]], "output tokens", where),
                )
            )
    return records


def trace_tokens(record: TraceRecord, fresh: FreshTokens) -> list[int]:
    """Token ids of a trace prompt: block ``h`` of 512 tokens is ids ``h*512 .. h*512+511``,
    so equal ``hash_ids`` prefixes are equal token prefixes; the rest is fresh text."""
    tokens: list[int] = []
    for h in record.hash_ids:
        base = h * MOONCAKE_BLOCK_TOKENS
        tokens.extend(range(base, base + MOONCAKE_BLOCK_TOKENS))
        if len(tokens) >= record.input_tokens:
            break
    del tokens[record.input_tokens :]
    if len(tokens) < record.input_tokens:
        tokens.extend(fresh.take(record.input_tokens - len(tokens)))
    return tokens


class TraceReplay(Workload):
    """Replays trace records at their timestamps (divided by ``speedup``), or with
    ``concurrency`` closed-loop streams ignoring the timestamps. ``arrival_spread_s``
    moves each timestamp forward by a seeded uniform offset in [0, spread): a trace
    whose timestamps were rounded to whole seconds (the Mooncake trace: ~10 requests
    share each instant) then arrives as it did, not in simultaneous bursts."""

    def __init__(
        self,
        records: Sequence[TraceRecord],
        *,
        name: str = "trace",
        speedup: float = 1.0,
        concurrency: int | None = None,
        limit: int | None = None,
        arrival_spread_s: float = 0.0,
        seed: int = 0,
    ) -> None:
        if speedup <= 0:
            raise ValueError("speedup must be > 0")
        if arrival_spread_s < 0:
            raise ValueError("arrival_spread_s must be >= 0")
        self.arrival_spread_s = arrival_spread_s
        self.seed = seed
        if concurrency is not None and concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.records = list(records[:limit] if limit else records)
        self.name = name
        self.speedup = speedup
        self.concurrency = concurrency
        self.fresh = FreshTokens()
        self._pending: Iterator[tuple[int, TraceRecord]] = iter(enumerate(self.records))

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "requests": len(self.records),
            "speedup": self.speedup,
            "concurrency": self.concurrency,
            **({"arrival_spread_s": self.arrival_spread_s} if self.arrival_spread_s else {}),
        }

    def start(self) -> list[WorkItem]:
        if self.concurrency is None:
            spread, speedup = random.Random(self.seed ^ 0x5B8EAD), self.speedup
            return [
                self._item(
                    i, r, (r.timestamp_s + spread.random() * self.arrival_spread_s) / speedup
                )
                for i, r in self._pending
            ]
        items = []
        for stream in range(self.concurrency):
            nxt = next(self._pending, None)
            if nxt is None:
                break
            items.append(self._item(nxt[0], nxt[1], 0.0, stream))
        return items

    def on_done(self, item: WorkItem, now: float, ok: bool) -> list[WorkItem]:
        if self.concurrency is None:
            return []
        nxt = next(self._pending, None)
        return [] if nxt is None else [self._item(nxt[0], nxt[1], now, item.stream)]

    def _item(self, index: int, record: TraceRecord, at: float, stream: int = -1) -> WorkItem:
        return WorkItem(
            request_id=f"{self.name}-{index}",
            arrival_s=at,
            tokens=None,
            prompt_tokens=record.input_tokens,
            output_tokens=record.output_tokens,
            block_keys=None,
            stream=stream,
            record=record,
        )

    def materialize(self, item: WorkItem) -> tuple[list[int], list[int]]:
        if item.tokens is not None and item.block_keys is not None:
            return item.tokens, item.block_keys
        assert item.record is not None
        tokens = trace_tokens(item.record, self.fresh)
        keys = chain_keys(tokens, [])
        # Generated text is never shared in a trace; its blocks still take cache room.
        output = self.fresh.take(item.record.output_tokens)
        keys = chain_keys([*tokens, *output], keys)
        return tokens, keys


# -- Control: nothing shared ---------------------------------------------------------


class Uniform(Workload):
    """Fixed-size requests of fresh text, by ``concurrency`` streams or Poisson ``rate_per_s``."""

    name = "uniform"

    def __init__(
        self,
        *,
        input_tokens: int = 1200,
        output_tokens: int = 800,
        concurrency: int | None = 160,
        rate_per_s: float | None = None,
        duration_s: float = 7200.0,
        seed: int = 0,
    ) -> None:
        if (concurrency is None) == (rate_per_s is None):
            raise ValueError("give exactly one of concurrency and rate_per_s")
        if min(input_tokens, output_tokens) < 1:
            raise ValueError("input and output tokens must be >= 1")
        self.input_tokens, self.output_tokens = input_tokens, output_tokens
        self.concurrency, self.rate_per_s = concurrency, rate_per_s
        self.duration_s = duration_s
        self.rng = random.Random(seed)
        self.fresh = FreshTokens()
        self._next_id = 0

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "concurrency": self.concurrency,
            "rate_per_s": self.rate_per_s,
            "duration_s": self.duration_s,
        }

    def start(self) -> list[WorkItem]:
        if self.concurrency is not None:
            return [self._item(self.rng.uniform(0, 5.0), s) for s in range(self.concurrency)]
        items: list[WorkItem] = []
        t = 0.0
        assert self.rate_per_s is not None
        while True:
            t += self.rng.expovariate(self.rate_per_s)
            if t >= self.duration_s:
                return items
            items.append(self._item(t))

    def on_done(self, item: WorkItem, now: float, ok: bool) -> list[WorkItem]:
        if self.concurrency is None or now >= self.duration_s:
            return []
        return [self._item(now, item.stream)]

    def _item(self, at: float, stream: int = -1) -> WorkItem:
        tokens = list(self.fresh.take(self.input_tokens))
        output = self.fresh.take(self.output_tokens)
        self._next_id += 1
        return WorkItem(
            request_id=f"uniform-{self._next_id}",
            arrival_s=at,
            tokens=tokens,
            prompt_tokens=len(tokens),
            output_tokens=self.output_tokens,
            block_keys=chain_keys([*tokens, *output], []),
            stream=stream,
        )
