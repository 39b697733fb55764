"""A KV-event publisher that behaves as vLLM's ``ZmqEventPublisher`` does on the wire.

PUB socket: ``(topic, seq, payload)`` per batch, seq counting from 0. ROUTER socket:
replays buffered batches from a requested sequence (see :mod:`.wire`). The simulated
vLLM nodes and the tests publish with it; one thread owns both sockets (ZMQ sockets are
not thread-safe), ``publish`` only queues.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

import zmq

from llmlb_fast.kv_events.wire import (
    END_SEQ,
    KvEvent,
    KVEventBatch,
    decode_seq,
    encode_batch,
    encode_seq,
)

_POLL_MS = 2
_STOP = object()


class KvEventPublisher:
    """Binds ``endpoint`` (PUB) and ``replay_endpoint`` (ROUTER, optional); a port of 0
    binds an ephemeral port, and ``.endpoint`` / ``.replay_endpoint`` say which.

    ``drop_live(seq)`` true skips sending that batch live (it stays replayable): fault
    injection for tests.
    """

    def __init__(
        self,
        endpoint: str = "tcp://127.0.0.1:0",
        replay_endpoint: str | None = "tcp://127.0.0.1:0",
        topic: str = "kv-events",
        *,
        buffer_steps: int = 10_000,
        drop_live: Callable[[int], bool] | None = None,
    ) -> None:
        self.topic = topic.encode()
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._pub = self._bind(zmq.PUB, endpoint)
        self.endpoint = self._bound(self._pub)
        self._replay: zmq.Socket[bytes] | None = None
        self.replay_endpoint: str | None = None
        if replay_endpoint is not None:
            self._replay = self._bind(zmq.ROUTER, replay_endpoint)
            self.replay_endpoint = self._bound(self._replay)
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._drop_live = drop_live
        self._next_seq = 0
        self.published = 0
        self._thread = threading.Thread(target=self._run, name="kv-event-publisher", daemon=True)
        self._thread.start()

    def _bind(self, kind: int, endpoint: str) -> zmq.Socket[bytes]:
        socket: zmq.Socket[bytes] = self._context.socket(kind)
        socket.setsockopt(zmq.LINGER, 0)
        if kind == zmq.PUB:
            socket.setsockopt(zmq.SNDHWM, 100_000)
        host, _, port = endpoint.rpartition(":")
        if port == "0":
            socket.bind_to_random_port(host)
        else:
            socket.bind(endpoint)
        return socket

    @staticmethod
    def _bound(socket: zmq.Socket[bytes]) -> str:
        endpoint = socket.getsockopt(zmq.LAST_ENDPOINT)
        assert isinstance(endpoint, bytes)
        return endpoint.decode()

    def publish(self, events: Sequence[KvEvent], *, data_parallel_rank: int | None = None) -> None:
        """Queues one batch (sent within a few ms, in order)."""
        batch = KVEventBatch(
            ts=time.time(), events=list(events), data_parallel_rank=data_parallel_rank
        )
        self._queue.put(encode_batch(batch))

    def publish_raw(self, payload: bytes) -> None:
        """Queues a payload as is (tests send malformed ones)."""
        self._queue.put(payload)

    def close(self, timeout: float = 2.0) -> None:
        """Sends what is queued, then closes both sockets."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        poller = zmq.Poller()
        if self._replay is not None:
            poller.register(self._replay, zmq.POLLIN)
        try:
            while self._send_queued():
                if self._replay is not None and poller.poll(_POLL_MS):
                    self._serve_replay(self._replay)
                elif self._replay is None:
                    time.sleep(_POLL_MS / 1000)
        finally:
            self._pub.close()
            if self._replay is not None:
                self._replay.close()

    def _send_queued(self) -> bool:
        """False once asked to stop."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return True
            if item is _STOP:
                return False
            assert isinstance(item, bytes)
            seq = self._next_seq
            self._next_seq += 1
            self._buffer.append((seq, item))
            if self._drop_live is None or not self._drop_live(seq):
                self._pub.send_multipart([self.topic, encode_seq(seq), item])
                self.published += 1

    def _serve_replay(self, replay: zmq.Socket[bytes]) -> None:
        frames = replay.recv_multipart()
        if len(frames) != 3 or frames[1] != b"":
            return
        identity, _, start = frames
        try:
            start_seq = decode_seq(start)
        except ValueError:
            return
        for seq, payload in self._buffer:
            if seq >= start_seq:
                replay.send_multipart([identity, b"", encode_seq(seq), payload])
        replay.send_multipart([identity, b"", END_SEQ, b""])
