"""Consumes every node's KV-event stream on one thread and applies it to the router.

Per node and data-parallel rank (vLLM publishes rank ``r`` on the endpoint's port + r)
a SUB socket receives ``(topic, seq, payload)``; the payload goes to
``Router.apply_kv_event_batch`` (decoded and applied in Rust, off ``route()``'s path:
routing only reads the index). Sequence numbers keep each stream whole:

- a gap asks the engine's replay socket for the missing batches (live ones wait); if
  the replay cannot fill it, the node turns ``unconfirmed`` (what it had confirmed
  becomes expiring guesses) and is ``live`` again from the next whole batch;
- a sequence lower than expected on the live socket means the publisher restarted
  (so did its engine, and its cache): the node's map is cleared;
- a publisher that disconnects and does not come back within ``dead_after_s`` turns the
  node ``unconfirmed``; on reconnection a replay fills what was missed;
- a malformed message is counted and skipped; the stream goes on.

On connecting, the stream asks for a replay from sequence 0, so a router that starts
after its engines learns what they already hold (as far as the engine's buffer goes).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import zmq
from zmq.utils.monitor import recv_monitor_message

from llmlb_fast._core import Router
from llmlb_fast.errors import InvalidInputError, UnknownNodeError
from llmlb_fast.kv_events.wire import END_SEQ, decode_seq

log = logging.getLogger(__name__)

_POLL_MS = 20
_CONNECTED = zmq.EVENT_HANDSHAKE_SUCCEEDED
_DISCONNECTED = zmq.EVENT_DISCONNECTED


@dataclass(frozen=True)
class KvEventSource:
    """Where one node's engine publishes (a node's ``kv_events`` config)."""

    node_id: str
    endpoint: str
    topic: str = ""
    replay_endpoint: str | None = None
    model: str | None = None
    data_parallel_size: int = 1


def rank_endpoint(endpoint: str, rank: int) -> str:
    """vLLM's endpoint of data-parallel rank ``rank``: the port offset by the rank."""
    if rank == 0:
        return endpoint
    parts = urlsplit(endpoint)
    if parts.port is None:
        raise ValueError(f"{endpoint}: data-parallel ranks need a tcp endpoint with a port")
    host = endpoint[: endpoint.rindex(":")]
    return f"{host}:{parts.port + rank}"


@dataclass
class NodeIngestStats:
    """Counters of one node's stream (read by the Prometheus collector)."""

    batches: int = 0
    blocks: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    replays: Counter[str] = field(default_factory=Counter)
    last_batch_ts: float | None = None


class _Stream:
    """One rank of one node: its sockets and where its sequence stands."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], source: KvEventSource, rank: int):
        self.source = source
        self.rank = rank
        self.sub: zmq.Socket[bytes] = context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 100_000)
        self.sub.setsockopt(zmq.SUBSCRIBE, source.topic.encode())
        self.monitor: zmq.Socket[bytes] = self.sub.get_monitor_socket(_CONNECTED | _DISCONNECTED)
        self.sub.connect(rank_endpoint(source.endpoint, rank))
        self.replay: zmq.Socket[bytes] | None = None
        self._context = context
        self.next_seq: int | None = None
        self.pending: list[tuple[int, bytes]] = []
        self.replay_deadline: float | None = None
        self.connected = False
        self.disconnected_at: float | None = time.monotonic()

    def request_replay(self, start_seq: int, timeout_s: float) -> bool:
        """Asks for batches from ``start_seq`` on; False without a replay endpoint."""
        if self.source.replay_endpoint is None:
            return False
        if self.replay is None:
            self.replay = self._context.socket(zmq.DEALER)
            self.replay.setsockopt(zmq.LINGER, 0)
            self.replay.connect(rank_endpoint(self.source.replay_endpoint, self.rank))
        self.replay.send_multipart([b"", start_seq.to_bytes(8, "big", signed=True)])
        self.replay_deadline = time.monotonic() + timeout_s
        return True

    def drop_replay_socket(self) -> None:
        """A replay that timed out may still answer: a fresh socket ignores it."""
        if self.replay is not None:
            self.replay.close()
            self.replay = None
        self.replay_deadline = None

    def close(self) -> None:
        self.sub.disable_monitor()
        self.monitor.close()
        self.sub.close()
        if self.replay is not None:
            self.replay.close()


class KvEventIngest:
    """The ingestion thread. ``set_sources`` (any thread) says which nodes to follow."""

    def __init__(
        self,
        router: Router,
        *,
        dead_after_s: float = 2.0,
        replay_timeout_s: float = 1.0,
    ) -> None:
        self._router = router
        self.dead_after_s = dead_after_s
        self.replay_timeout_s = replay_timeout_s
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._lock = threading.Lock()
        self._wanted: dict[str, KvEventSource] = {}
        self._changed = False
        self._streams: dict[str, list[_Stream]] = {}
        self.stats: dict[str, NodeIngestStats] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.loop_errors = 0

    # -- control (any thread) ------------------------------------------------------

    def set_sources(self, sources: Iterable[KvEventSource]) -> None:
        with self._lock:
            self._wanted = {s.node_id: s for s in sources}
            self._changed = True
            for node_id in self._wanted:
                self.stats.setdefault(node_id, NodeIngestStats())

    def start(self) -> None:
        self._context = zmq.Context()
        self._thread = threading.Thread(target=self._run, name="kv-event-ingest", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        assert self._context is not None
        try:
            while not self._stop.is_set():
                try:
                    self._sync_sources()
                    self._poll_once()
                    self._check_deadlines()
                except Exception:  # a bug here must not end every node's stream
                    self.loop_errors += 1
                    log.exception("KV event ingestion: unexpected error; going on")
                    self._stop.wait(_POLL_MS / 1000)
        finally:
            for node_id in list(self._streams):
                self._close_node(node_id, state="off")
            self._context.term()

    def _sync_sources(self) -> None:
        with self._lock:
            if not self._changed:
                return
            wanted, self._changed = dict(self._wanted), False
        for node_id in list(self._streams):
            source = wanted.get(node_id)
            if source is None or source != self._streams[node_id][0].source:
                self._close_node(node_id, state="off")
        for node_id, source in wanted.items():
            if node_id not in self._streams:
                self._open_node(source)

    def _open_node(self, source: KvEventSource) -> None:
        assert self._context is not None
        ranks = range(source.data_parallel_size)
        self._streams[source.node_id] = [_Stream(self._context, source, r) for r in ranks]
        self._set_state(source.node_id, "live")

    def _close_node(self, node_id: str, *, state: str) -> None:
        for stream in self._streams.pop(node_id):
            stream.close()
        self._set_state(node_id, state)

    def _set_state(self, node_id: str, state: str) -> None:
        # Deregistered meanwhile: its sources go at the next sync.
        with contextlib.suppress(UnknownNodeError):
            self._router.set_kv_events_state(node_id, state)

    def _poll_once(self) -> None:
        poller = zmq.Poller()
        owners: dict[zmq.Socket[bytes], tuple[str, _Stream]] = {}
        for streams in self._streams.values():
            for stream in streams:
                for socket, kind in ((stream.sub, "sub"), (stream.monitor, "monitor")):
                    poller.register(socket, zmq.POLLIN)
                    owners[socket] = (kind, stream)
                if stream.replay is not None:
                    poller.register(stream.replay, zmq.POLLIN)
                    owners[stream.replay] = ("replay", stream)
        if not owners:
            self._stop.wait(_POLL_MS / 1000)
            return
        for socket, _ in poller.poll(_POLL_MS):
            kind, stream = owners[socket]
            if kind == "monitor":
                self._on_monitor(stream)
            elif kind == "replay":
                self._on_replay(stream)
            else:
                self._on_live(stream)

    # -- live messages ---------------------------------------------------------------

    def _on_live(self, stream: _Stream) -> None:
        stats = self.stats[stream.source.node_id]
        for _ in range(1000):  # bounded drain
            try:
                frames = stream.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            message = self._parse(frames, stats)
            if message is not None:
                self._on_sequenced(stream, *message)

    @staticmethod
    def _parse(frames: list[bytes], stats: NodeIngestStats) -> tuple[int, bytes] | None:
        if len(frames) != 3:
            stats.errors["malformed"] += 1
            return None
        try:
            return decode_seq(frames[1]), frames[2]
        except ValueError:
            stats.errors["malformed"] += 1
            return None

    def _on_sequenced(self, stream: _Stream, seq: int, payload: bytes) -> None:
        if stream.replay_deadline is not None:
            stream.pending.append((seq, payload))
            return
        expected = stream.next_seq
        if expected is not None and seq < expected:
            # The live socket never repeats: the publisher (and its engine) restarted.
            self.stats[stream.source.node_id].errors["publisher_restart"] += 1
            self._clear_rank(stream)
            stream.next_seq = None
            expected = None
        if expected is None or seq == expected:
            self._apply(stream, seq, payload)
            return
        self.stats[stream.source.node_id].errors["gap"] += 1
        stream.pending.append((seq, payload))
        if not stream.request_replay(expected, self.replay_timeout_s):
            self._give_up_gap(stream)

    def _apply(self, stream: _Stream, seq: int, payload: bytes) -> None:
        node_id = stream.source.node_id
        stats = self.stats[node_id]
        stream.next_seq = seq + 1
        try:
            outcome = self._router.apply_kv_event_batch(node_id, payload, model=stream.source.model)
        except InvalidInputError:
            stats.errors["malformed"] += 1
            return
        except UnknownNodeError:
            stats.errors["unknown_node"] += 1
            return
        stats.batches += 1
        stats.last_batch_ts = outcome.ts
        stats.blocks["stored"] += outcome.stored_blocks
        stats.blocks["removed"] += outcome.removed_blocks
        stats.blocks["offloaded"] += outcome.offloaded_blocks
        stats.errors["skipped_event"] += outcome.skipped_events
        stats.errors["unknown_event"] += outcome.unknown_events
        stats.errors["overflow"] += outcome.overflowed

    def _clear_rank(self, stream: _Stream) -> None:
        with contextlib.suppress(UnknownNodeError):
            self._router.kv_cache_cleared(stream.source.node_id, rank=stream.rank)

    # -- replay ----------------------------------------------------------------------

    def _on_replay(self, stream: _Stream) -> None:
        assert stream.replay is not None
        stats = self.stats[stream.source.node_id]
        for _ in range(100_000):  # bounded by the engine's buffer
            try:
                frames = stream.replay.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) == 3 and frames[1] == END_SEQ:
                self._finish_replay(stream)
                return
            # [b"", seq, payload]: the live layout, with the empty envelope for a topic.
            message = self._parse(frames, stats)
            if message is None:
                continue
            seq, payload = message
            if stream.next_seq is None or seq == stream.next_seq:
                self._apply(stream, seq, payload)
            elif seq > stream.next_seq:
                stream.pending.append((seq, payload))

    def _finish_replay(self, stream: _Stream) -> None:
        stream.replay_deadline = None
        pending = sorted(stream.pending)
        stream.pending = []
        for seq, payload in pending:
            if stream.next_seq is not None and seq < stream.next_seq:
                continue
            if stream.next_seq is not None and seq > stream.next_seq:
                self.stats[stream.source.node_id].replays["incomplete"] += 1
                self._give_up_gap(stream, [(s, p) for s, p in pending if s >= seq])
                return
            self._apply(stream, seq, payload)
        self.stats[stream.source.node_id].replays["ok"] += 1
        self._set_state(stream.source.node_id, "live")

    def _give_up_gap(self, stream: _Stream, pending: list[tuple[int, bytes]] | None = None) -> None:
        """The missing batches are gone: what the node had confirmed turns into guesses
        and the stream goes on from what arrived."""
        pending = sorted(stream.pending if pending is None else pending)
        stream.pending = []
        stream.drop_replay_socket()
        self._set_state(stream.source.node_id, "unconfirmed")
        for seq, payload in pending:
            if stream.next_seq is None or seq >= stream.next_seq:
                self._apply(stream, seq, payload)
        self._set_state(stream.source.node_id, "live")

    # -- connection ------------------------------------------------------------------

    def _on_monitor(self, stream: _Stream) -> None:
        for _ in range(100):
            try:
                event = recv_monitor_message(stream.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == _CONNECTED:
                self._on_connected(stream)
            elif event["event"] == _DISCONNECTED:
                stream.connected = False
                stream.disconnected_at = time.monotonic()

    def _on_connected(self, stream: _Stream) -> None:
        stream.connected = True
        stream.disconnected_at = None
        start = 0 if stream.next_seq is None else stream.next_seq
        if stream.replay_deadline is None and stream.request_replay(start, self.replay_timeout_s):
            self.stats[stream.source.node_id].replays["requested"] += 1
        elif self._router_state(stream.source.node_id) == "unconfirmed":
            self._set_state(stream.source.node_id, "live")

    def _router_state(self, node_id: str) -> str | None:
        for status in self._router.nodes():
            if status.id == node_id:
                return status.kv_events_state
        return None

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for streams in self._streams.values():
            for stream in streams:
                if stream.replay_deadline is not None and now > stream.replay_deadline:
                    self.stats[stream.source.node_id].replays["timeout"] += 1
                    if stream.next_seq is None and not stream.pending:
                        stream.drop_replay_socket()  # nothing missed yet: just no history
                    else:
                        self._give_up_gap(stream)
                dead = stream.disconnected_at is not None
                if dead and now - (stream.disconnected_at or now) > self.dead_after_s:
                    stream.disconnected_at = None  # once per outage
                    self.stats[stream.source.node_id].errors["publisher_dead"] += 1
                    self._set_state(stream.source.node_id, "unconfirmed")
