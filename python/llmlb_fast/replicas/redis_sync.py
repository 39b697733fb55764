"""Carries :class:`~llmlb_fast.replicas.sync.ReplicaSync` batches through Redis (or
Valkey) so that several ``llmlb serve`` replicas route as one.

Redis structures (all keys hash-tagged ``{llmlb:<cluster>}`` so they share a Cluster
slot):

- ``{llmlb:<cluster>}:batches``, a **stream**: one entry per batch (field ``b``, the
  msgpack batch), appended with ``XADD ... MAXLEN ~ stream_max_len``. Every replica
  follows it with a blocking ``XREAD``. A stream rather than Pub/Sub: entries survive
  a replica's disconnect (it reads on from its last id), a joining replica warms up by
  reading the recent history (``XREVRANGE``), and one ordered log per cluster keeps
  each replica's batches in order for everyone.
- ``{llmlb:<cluster>}:members``, a **sorted set**: replica name -> last heartbeat
  (Unix ms). A joining replica waits for a snapshot from every member heard within the
  TTL before it reports healthy. Liveness itself is judged from the stream (an empty
  batch every ``heartbeat_interval``): a peer silent for ``ttl`` is forgotten.

Two threads, each with its own connection: the writer sends what ``ReplicaSync``
queued, at most one batch per ``batch_interval`` (a message after a quiet spell goes at
once), or a heartbeat; the reader applies the others' batches and expires silent peers. Routing
never waits on either. Redis down: batches are dropped (counted), both threads retry
with capped backoff, and on their return the replica asks every peer for a snapshot
and sends its own, so counts taken while apart are replaced whole.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from llmlb_fast.replicas.messages import Hello
from llmlb_fast.replicas.sync import ReplicaSync

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.05
BACKOFF_CAP_S = 2.0


@dataclass(frozen=True)
class RedisSyncSettings:
    url: str = "redis://127.0.0.1:6379/0"
    cluster: str = "default"
    # At most one batch per interval: a message after a quiet spell goes at once, a busy
    # replica's messages share batches (per-batch cost is what the sync's CPU grows with).
    batch_interval_s: float = 0.005
    heartbeat_interval_s: float = 0.5
    warmup_timeout_s: float = 5.0
    # Recent batches a joining replica replays for prefix credit (0: none).
    history_batches: int = 20_000
    stream_max_len: int = 100_000
    connect_timeout_s: float = 1.0


@dataclass
class LinkCounters:
    reconnects: int = 0
    dropped_batches: int = 0
    publish_errors: int = 0
    read_errors: int = 0
    history_batches: int = 0


class RedisReplicaLink:
    """``sync``'s batches over Redis (its ``ttl_s`` is the membership TTL); after
    ``start()``, ``warm`` is set once the replica knows its peers' in-flight sets (or
    ``warmup_timeout`` passed)."""

    def __init__(
        self,
        sync: ReplicaSync,
        settings: RedisSyncSettings,
        *,
        client_factory: Callable[[], redis.Redis] | None = None,
    ) -> None:
        self.sync = sync
        self.settings = settings
        tag = f"{{llmlb:{settings.cluster}}}"
        self.stream_key = f"{tag}:batches"
        self.members_key = f"{tag}:members"
        self._client_factory = client_factory or self._default_client
        self.counters = LinkCounters()
        self.warm = threading.Event()
        self.connected = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_id = "$"
        self._down_logged = False
        self._ever_connected = False
        self._warm_deadline = time.monotonic() + settings.warmup_timeout_s
        sync.on_queued = self.notify

    def _default_client(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.settings.url,
            socket_connect_timeout=self.settings.connect_timeout_s,
            socket_timeout=max(2.0, self.sync.ttl_s),
            health_check_interval=0,
        )

    # --- life -----------------------------------------------------------------------

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._write_loop, name="llmlb-replica-writer", daemon=True),
            threading.Thread(target=self._read_loop, name="llmlb-replica-reader", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout_s: float = 3.0) -> None:
        """Sends what is queued (best effort), leaves the member set, stops both threads."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout_s)
        try:
            client = self._client_factory()
            client.zrem(self.members_key, self.sync.name)
            client.close()
        except redis.RedisError:
            pass

    def notify(self) -> None:
        """Something was queued: the writer sends it after ``batch_interval``."""
        self._wake.set()

    # --- writer ---------------------------------------------------------------------

    def _write_loop(self) -> None:
        client = self._client_factory()
        backoff = BACKOFF_START_S
        failed = False
        next_heartbeat = 0.0
        last_sent = 0.0
        while True:
            stopping = self._stop.is_set()
            timeout = max(0.0, next_heartbeat - time.monotonic())
            if not stopping and self._wake.wait(timeout):
                self._wake.clear()
                since = time.monotonic() - last_sent
                if since < self.settings.batch_interval_s:
                    time.sleep(self.settings.batch_interval_s - since)
            heartbeat = time.monotonic() >= next_heartbeat
            payload = self.sync.take_batch(heartbeat=heartbeat)
            if payload is not None:
                last_sent = time.monotonic()
                try:
                    self._send(client, payload, heartbeat)
                except redis.RedisError as error:
                    self.counters.dropped_batches += 1
                    self.counters.publish_errors += 1
                    self._went_down(error)
                    failed = True
                    # What was dropped is resent whole once Redis is back.
                    self.sync.queue_snapshot()
                    if not stopping:
                        self._stop.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_CAP_S)
                    continue
                if failed:  # back: peers may have missed this replica's batches and it theirs
                    failed = False
                    self.sync.publish(Hello())
                    self.sync.queue_snapshot()
                    self._wake.set()
                backoff = BACKOFF_START_S
            if heartbeat:
                next_heartbeat = time.monotonic() + self.settings.heartbeat_interval_s
            if stopping:
                break
        client.close()

    def _send(self, client: redis.Redis, payload: bytes, heartbeat: bool) -> None:
        pipe = client.pipeline(transaction=False)
        pipe.xadd(
            self.stream_key, {"b": payload}, maxlen=self.settings.stream_max_len, approximate=True
        )
        if heartbeat:
            now_ms = int(time.time() * 1e3)
            pipe.zadd(self.members_key, {self.sync.name: now_ms})
            stale = now_ms - int(10 * self.sync.ttl_s * 1e3)
            pipe.zremrangebyscore(self.members_key, "-inf", stale)
        pipe.execute()

    # --- reader ---------------------------------------------------------------------

    def _read_loop(self) -> None:
        backoff = BACKOFF_START_S
        client: redis.Redis | None = None
        block_ms = max(1, int(min(0.5, self.sync.ttl_s / 4) * 1e3))
        while not self._stop.is_set():
            try:
                if client is None:
                    client = self._client_factory()
                    self._joined(client)
                entries: Any = client.xread(
                    {self.stream_key: self._last_id}, count=1000, block=block_ms
                )
                self._apply_entries(entries)
                backoff = BACKOFF_START_S
            except redis.RedisError as error:
                self.counters.read_errors += 1
                self._went_down(error)
                if client is not None:
                    client.close()
                client = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_CAP_S)
            self.sync.expire_peers()
            if not self.warm.is_set():
                self._check_warm(client)
        if client is not None:
            client.close()

    def _joined(self, client: redis.Redis) -> None:
        """(Re)connected: reads the recent history (first time) or on from the last id,
        then asks every peer for its in-flight set."""
        client.ping()
        if self._down_logged:
            log.warning("replica sync: Redis at %s is back; resynchronising", self._url())
            self._down_logged = False
        if self._ever_connected:
            self.counters.reconnects += 1
        self._ever_connected = self.connected = True
        newest: Any = client.xrevrange(self.stream_key, count=1)
        newest_id = newest[0][0].decode() if newest else "0-0"
        if self._last_id == "$":
            self._replay_history(client, newest_id)
        elif _id_key(self._last_id) > _id_key(newest_id):
            self._last_id = "0-0"  # the stream was recreated (a Redis without persistence)
        self.sync.request_snapshots()
        self.sync.queue_snapshot()
        self.notify()
        if not self.warm.is_set():
            self._warm_deadline = time.monotonic() + self.settings.warmup_timeout_s

    def _replay_history(self, client: redis.Redis, newest_id: str) -> None:
        self._last_id = newest_id
        if self.settings.history_batches <= 0 or newest_id == "0-0":
            return
        recent: Any = client.xrevrange(
            self.stream_key, max=newest_id, count=self.settings.history_batches
        )
        recent.reverse()
        self.sync.replaying = True  # one Hello for all after the replay, not one per peer
        try:
            self._apply_entries([(self.stream_key, recent)], history=True)
        finally:
            self.sync.replaying = False
        self.counters.history_batches += len(recent)
        self.sync.expire_peers()  # replicas that died before this one joined

    def _apply_entries(self, entries: Any, *, history: bool = False) -> None:
        for _stream, items in entries or ():
            for entry_id, fields in items:
                payload = fields.get(b"b")
                if payload is not None:
                    self.sync.apply(payload)
                if not history:
                    self._last_id = entry_id.decode()

    def _check_warm(self, client: redis.Redis | None) -> None:
        if client is None:  # Redis down: after the timeout, serve on local knowledge
            if time.monotonic() >= self._warm_deadline:
                self.warm.set()
                log.warning("replica sync: Redis unreachable; serving without peers")
            return
        waiting = self._members_not_synced(client)
        if not waiting:
            self.warm.set()
            log.info("replica sync: %s warm (%d peers)", self.sync.name, len(self.sync.peers))
        elif time.monotonic() >= self._warm_deadline:
            self.warm.set()
            log.warning(
                "replica sync: no snapshot from %s within %.1fs; serving on what is known",
                ", ".join(sorted(waiting)),
                self.settings.warmup_timeout_s,
            )

    def _members_not_synced(self, client: redis.Redis) -> set[str]:
        now_ms = int(time.time() * 1e3)
        live: Any = client.zrangebyscore(
            self.members_key, now_ms - int(self.sync.ttl_s * 1e3), "+inf"
        )
        names = {name.decode() for name in live} - {self.sync.name}
        return {n for n in names if not (n in self.sync.peers and self.sync.peers[n].synced)}

    def _went_down(self, error: Exception) -> None:
        self.connected = False
        if not self._down_logged:
            self._down_logged = True
            log.warning(
                "replica sync: Redis at %s unreachable (%s); routing on this replica's own "
                "knowledge until it returns",
                self._url(),
                error,
            )

    def _url(self) -> str:
        # Never log a password given in the URL.
        url = self.settings.url
        scheme, sep, rest = url.partition("://")
        if sep and "@" in rest:
            return f"{scheme}://***@{rest.split('@', 1)[1]}"
        return url


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
