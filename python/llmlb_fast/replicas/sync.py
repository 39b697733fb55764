"""One router replica's side of active-active routing, whatever carries the batches.

:class:`ReplicaSync` turns this replica's decisions, first tokens and completions into
:mod:`~llmlb_fast.replicas.messages` batches (``take_batch``) and applies the batches of
the others to its core router (``apply`` / ``apply_batch``): their requests count as
in-flight load, prefill backlog and provisional prefix credit here until they end.
The Redis transport (:mod:`~llmlb_fast.replicas.redis_sync`) and the discrete-event
simulator (``llmlb bench --replicas K``) carry the same batches.

Thread use: ``routed`` / ``first_token`` / ``ended`` / node and breaker messages may be
called from one thread (the service's event loop) while ``take_batch`` and the receiving
side run on another (the transport's); the receiving side is single-threaded.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from llmlb_fast._core import RouteDecision, Router
from llmlb_fast.errors import UnknownNodeError
from llmlb_fast.replicas.messages import (
    Batch,
    BreakerChanged,
    Ended,
    FirstToken,
    Hello,
    Message,
    NodeRemoved,
    NodeUpserted,
    Routed,
    Snapshot,
    decode,
    encode,
)

log = logging.getLogger(__name__)

# Node registrations and breaker transitions go to the service (they touch more than
# the core): called on the receiving thread with the sending replica's name.
NodeMessage = NodeUpserted | NodeRemoved | BreakerChanged
NodeMessageHandler = Callable[[str, NodeMessage], None]


@dataclass
class Peer:
    """Another replica as this one last heard of it."""

    epoch: str
    seq: int
    last_heard: float
    # Its in-flight set is known whole: a snapshot arrived, or it was heard from its
    # first batch on.
    synced: bool = False
    # A snapshot was asked of it since it was last known whole.
    asked: bool = False


@dataclass
class SyncCounters:
    batches_sent: int = 0
    messages_sent: int = 0
    bytes_sent: int = 0
    batches_received: int = 0
    messages_applied: int = 0
    bytes_received: int = 0
    # Batches of a peer that never arrived (a seq gap): answered by asking it for a
    # snapshot. ``malformed``: batches that did not decode.
    gaps: int = 0
    malformed: int = 0
    unknown_node: int = 0
    snapshots_applied: int = 0
    peers_expired: int = 0
    lag_s_sum: float = 0.0
    last_lag_s: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)


@dataclass
class _Local:
    message: Routed
    routed_at: float
    first_token: bool = False


class ReplicaSync:
    """``name`` must be unique among the replicas sharing a bus; ``ttl_s`` is how long
    a silent peer's requests keep counting here. ``clock`` times both the ages carried
    in messages and the peers' silence (the simulator passes its virtual clock)."""

    def __init__(
        self,
        router: Router,
        name: str,
        *,
        ttl_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        on_node_message: NodeMessageHandler | None = None,
    ) -> None:
        if not name:
            raise ValueError("a replica needs a name")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self.router = router
        self.name = name
        self.epoch = uuid.uuid4().hex[:16]
        self.ttl_s = ttl_s
        self.clock = clock
        self.on_node_message = on_node_message
        # Called after a message is queued (a transport wakes its writer).
        self.on_queued: Callable[[], None] | None = None
        self.peers: dict[str, Peer] = {}
        self.counters = SyncCounters()
        self._seq = 0
        self._lock = threading.Lock()
        self._pending: list[Message] = []
        self._snapshot_queued = False
        self._local: dict[str, _Local] = {}
        # Set while a transport replays history: no snapshot is asked per peer.
        self.replaying = False

    # --- this replica's side ------------------------------------------------------

    def routed(self, decision: RouteDecision) -> None:
        message = Routed(
            decision.request_id,
            decision.node_id,
            decision.block_hashes,
            decision.text_blocks,
            decision.prompt_tokens,
            decision.prefill_tokens,
            decision.matched_tokens,
        )
        now = self.clock()
        with self._lock:
            self._local[decision.request_id] = _Local(message, now)
            self._pending.append(message)
        if self.on_queued is not None:
            self.on_queued()

    def first_token(self, request_id: str) -> None:
        with self._lock:
            local = self._local.get(request_id)
            if local is None or local.first_token:
                return
            local.first_token = True
            self._pending.append(FirstToken(request_id))
        if self.on_queued is not None:
            self.on_queued()

    def ended(self, request_id: str) -> None:
        with self._lock:
            if self._local.pop(request_id, None) is None:
                return
            self._pending.append(Ended(request_id))
        if self.on_queued is not None:
            self.on_queued()

    def publish(self, message: NodeMessage | Hello) -> None:
        """A node or breaker change made here (not one applied from a peer), or a Hello."""
        with self._lock:
            self._pending.append(message)
        if self.on_queued is not None:
            self.on_queued()

    def queue_snapshot(self) -> None:
        """Sends this replica's whole in-flight set with the next batch (after a
        reconnect, or when a peer asks); several requests before it is sent make one."""
        with self._lock:
            if self._snapshot_queued:
                return
            self._snapshot_queued = True
            self._pending.append(Snapshot([]))  # filled in take_batch, under the lock
        if self.on_queued is not None:
            self.on_queued()

    def request_snapshots(self) -> None:
        """Asks every peer for its in-flight set (after joining or reconnecting)."""
        self.publish(Hello())
        for peer in self.peers.values():
            peer.asked = True

    @property
    def local_in_flight(self) -> int:
        return len(self._local)

    def take_batch(self, *, heartbeat: bool = False) -> bytes | None:
        """What happened since the last call, encoded; None when nothing did, unless
        ``heartbeat`` (an empty batch tells the peers this replica is alive)."""
        now = self.clock()
        with self._lock:
            if not self._pending and not heartbeat:
                return None
            messages, self._pending = self._pending, []
            if self._snapshot_queued:
                self._snapshot_queued = False
                messages = [self._snapshot(now) if type(m) is Snapshot else m for m in messages]
            self._seq += 1
            seq = self._seq
            routed_at = {
                m.request_id: self._local[m.request_id].routed_at
                for m in messages
                if type(m) is Routed and m.request_id in self._local
            }
        for message in messages:
            if type(message) is Routed:
                message.age_s = max(0.0, now - routed_at.get(message.request_id, now))
        payload = encode(Batch(self.name, self.epoch, seq, now, messages))
        counters = self.counters
        counters.batches_sent += 1
        counters.messages_sent += len(messages)
        counters.bytes_sent += len(payload)
        return payload

    def _snapshot(self, now: float) -> Snapshot:
        entries = []
        for local in self._local.values():
            message = local.message
            entries.append(
                msgspec.structs.replace(
                    message,
                    prefill_tokens=0 if local.first_token else message.prefill_tokens,
                    matched_tokens=None,
                    age_s=max(0.0, now - local.routed_at),
                )
            )
        return Snapshot(entries)

    # --- the others' side -----------------------------------------------------------

    def apply(self, payload: bytes) -> bool:
        """Applies one encoded batch; False when it was malformed (counted, skipped) or
        this replica's own."""
        try:
            batch = decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            self.counters.malformed += 1
            log.debug("malformed replica batch skipped: %s", error)
            return False
        self.counters.bytes_received += len(payload)
        return self.apply_batch(batch)

    def apply_batch(self, batch: Batch) -> bool:
        if batch.replica == self.name:
            return False
        now = self.clock()
        counters = self.counters
        counters.batches_received += 1
        lag = max(0.0, now - batch.sent_at)
        counters.last_lag_s = lag
        counters.lag_s_sum += lag
        peer = self._peer_of(batch, now)
        # Ages are counted back from when the batch was sent.
        sent_at = self.router.now() - lag
        for message in batch.messages:
            self._apply_message(batch.replica, peer, message, sent_at)
        counters.messages_applied += len(batch.messages)
        return True

    def _peer_of(self, batch: Batch, now: float) -> Peer:
        peer = self.peers.get(batch.replica)
        if peer is None or peer.epoch != batch.epoch:
            if peer is not None:  # restarted: what it had in flight died with it
                self.router.forget_replica(batch.replica)
            # Heard from its first batch on, its in-flight set is whole.
            peer = Peer(batch.epoch, batch.seq - 1, batch.sent_at, synced=batch.seq == 1)
            self.peers[batch.replica] = peer
        elif batch.seq != peer.seq + 1 and batch.seq > peer.seq:
            self.counters.gaps += 1
            peer.synced = peer.asked = False
        if not peer.synced and not peer.asked and not self.replaying:
            peer.asked = True
            self.publish(Hello(target=batch.replica))
        peer.seq = max(peer.seq, batch.seq)
        # When it sent this (an old batch replayed from history is no sign of life).
        peer.last_heard = max(peer.last_heard, min(now, batch.sent_at))
        return peer

    def _apply_message(self, replica: str, peer: Peer, message: Message, sent_at: float) -> None:
        kind = type(message)
        if kind is Routed:
            self._apply_routed(replica, message, sent_at)  # type: ignore[arg-type]
        elif kind is FirstToken:
            self.router.apply_remote_first_token(replica, message.request_id)  # type: ignore[union-attr]
        elif kind is Ended:
            self.router.apply_remote_completion(replica, message.request_id)  # type: ignore[union-attr]
        elif kind is Snapshot:
            self.router.forget_replica(replica)
            for routed in message.in_flight:  # type: ignore[union-attr]
                self._apply_routed(replica, routed, sent_at)
            peer.synced, peer.asked = True, False
            self.counters.snapshots_applied += 1
        elif kind is Hello:
            if message.target in ("", self.name):  # type: ignore[union-attr]
                self.queue_snapshot()
        elif self.on_node_message is not None:
            self.on_node_message(replica, message)  # type: ignore[arg-type]
        by_kind = self.counters.by_kind
        name = kind.__name__
        by_kind[name] = by_kind.get(name, 0) + 1

    def _apply_routed(self, replica: str, message: Routed, sent_at: float) -> None:
        try:
            self.router.apply_remote_route(
                replica,
                message.request_id,
                message.node_id,
                message.block_hashes,
                prompt_tokens=message.prompt_tokens,
                prefill_tokens=message.prefill_tokens,
                text_blocks=message.text_blocks,
                matched_tokens=message.matched_tokens,
                routed_at=sent_at - message.age_s,
            )
        except UnknownNodeError:
            self.counters.unknown_node += 1

    def expire_peers(self) -> list[str]:
        """Forgets the peers silent for ``ttl_s``: their requests stop counting here."""
        now = self.clock()
        gone = [name for name, peer in self.peers.items() if now - peer.last_heard > self.ttl_s]
        for name in gone:
            released = self.router.forget_replica(name)
            del self.peers[name]
            self.counters.peers_expired += 1
            log.warning(
                "replica %s silent for %.1fs: its %d requests stop counting",
                name,
                self.ttl_s,
                released,
            )
        return gone

    def forget_peers(self) -> None:
        """Every peer's requests stop counting (the bus is gone for longer than the TTL
        and will be resynchronised from snapshots)."""
        for name in list(self.peers):
            self.router.forget_replica(name)
        self.peers.clear()
