"""Discrete-event mode: a workload against simulated nodes in virtual time, routed by the
real Rust core (``Router(..., manual_clock=True)``) in process.

Each routing decision is made by ``Router.route`` at the request's arrival time; each
request is released with ``Router.complete`` when it finishes or times out; every
``monitor_interval_s`` each node reports what a vLLM engine and an NVML agent would
(KV usage and capacity, running and waiting requests, SM and memory-bandwidth use)
through ``Router.update_metrics``. With ``kv_events`` (the default) each engine's prefix
cache reports what it stores and evicts, as vLLM's KV events do, and the router gets
them ``kv_event_delay_s`` later (``Router.kv_blocks_stored`` / ``kv_blocks_removed``,
the block keys being the router's chain hashes).

With ``replicas`` K > 1, K routers route as active-active replicas behind a random
splitter: each arrival goes to a random replica, every replica gets the engines'
metrics and KV events, and each replica's decisions, first tokens and completions reach
the others ``sync_delay_s`` later as :class:`~llmlb_fast.replicas.ReplicaSync` batches,
the messages the Redis transport carries (``sync_delay_s=None``: replicas that share
nothing). Runs are deterministic for a given seed.
"""

from __future__ import annotations

import gc
import heapq
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from llmlb_fast import Node, Router, RouterConfig
from llmlb_fast.replicas.messages import Batch, decode
from llmlb_fast.replicas.sync import ReplicaSync
from llmlb_fast.sim.engine import Engine, EventKind, SimRequest
from llmlb_fast.sim.monitor import EngineMonitor, NodeSample
from llmlb_fast.sim.profiles import BLOCK_TOKENS, HardwareProfile
from llmlb_fast.sim.workloads import WorkItem, Workload

_ARRIVAL, _NODE, _DEADLINE, _MONITOR, _KV_EVENTS, _SYNC = 0, 1, 2, 3, 4, 5
# vLLM hands each scheduler step's events to its publisher thread, which sends them at
# once; over a LAN and the router's ingestion that is a few milliseconds.
KV_EVENT_DELAY_S = 0.005
# A few milliseconds of batching, then one round trip through Redis on a LAN.
SYNC_DELAY_S = 0.005


@dataclass
class RequestRecord:
    arrival_s: float
    node: int
    prompt_tokens: int
    cached_tokens: int = 0
    # What the router expected the chosen node to have cached (None: not known, live runs).
    predicted_cached_tokens: int | None = None
    replica: int = 0
    output_tokens: int = 0
    ttft_s: float | None = None
    finish_s: float | None = None
    outcome: str = "pending"  # ok | timeout | rejected | pending (still running at the end)
    preemptions: int = 0


@dataclass
class RunResult:
    policy: str
    node_ids: list[str]
    profiles: list[str]
    duration_s: float
    warmup_s: float
    requests: list[RequestRecord] = field(default_factory=list)
    samples: list[NodeSample] = field(default_factory=list)
    preemptions: int = 0
    wall_s: float = 0.0
    replicas: int = 1
    # Replica sync traffic (K > 1 with sync): encoded batches and their bytes.
    sync_batches: int = 0
    sync_bytes: int = 0


def router_node(node_id: str, profile: HardwareProfile) -> Node:
    """What an operator would declare about a node of this profile."""
    return Node(
        node_id,
        f"sim://{node_id}",
        peak_tflops=profile.gpus * profile.gpu_tflops,
        gpu_memory_bytes=int(profile.total_memory_bytes),
        prefill_tokens_per_s=profile.prefill_tokens_per_s,
        kv_capacity_tokens=profile.kv_capacity_tokens,
        labels={"profile": profile.name},
    )


class Simulation:
    """One run: one policy, one cluster, one workload."""

    def __init__(
        self,
        workload: Workload,
        cluster: Sequence[HardwareProfile],
        *,
        policy: str = "llmlb",
        config: RouterConfig | None = None,
        duration_s: float = 7200.0,
        warmup_s: float = 0.0,
        timeout_s: float = 10.0,
        monitor_interval_s: float = 1.0,
        sample_interval_s: float = 5.0,
        seed: int = 0,
        kv_events: bool = True,
        kv_event_delay_s: float = KV_EVENT_DELAY_S,
        replicas: int = 1,
        sync_delay_s: float | None = SYNC_DELAY_S,
    ) -> None:
        if not cluster:
            raise ValueError("the cluster needs at least one node")
        if duration_s <= 0 or monitor_interval_s <= 0 or timeout_s <= 0:
            raise ValueError("duration_s, monitor_interval_s and timeout_s must be > 0")
        self.workload = workload
        if kv_event_delay_s < 0:
            raise ValueError("kv_event_delay_s must be >= 0")
        if replicas < 1:
            raise ValueError("replicas must be >= 1")
        if sync_delay_s is not None and sync_delay_s < 0:
            raise ValueError("sync_delay_s must be >= 0 (None: no sync)")
        self.node_ids = [f"node-{i}" for i in range(len(cluster))]
        base = config.to_dict() if config is not None else {}
        base.update(policy=policy, seed=seed)
        self.routers = [
            Router(
                RouterConfig(**base),  # type: ignore[arg-type]
                [router_node(nid, p) for nid, p in zip(self.node_ids, cluster, strict=True)],
                manual_clock=True,
            )
            for _ in range(replicas)
        ]
        self.router = self.routers[0]
        self._now = 0.0
        self.sync_delay_s = sync_delay_s
        # Replica i is "replica-i"; no peer ever falls silent here, so the TTL never ends.
        self.syncs = (
            [
                ReplicaSync(r, f"replica-{i}", ttl_s=duration_s + 1, clock=self._clock)
                for i, r in enumerate(self.routers)
            ]
            if replicas > 1 and sync_delay_s is not None
            else None
        )
        self._splitter = random.Random(seed ^ 0x5EED)
        self.node_index = {nid: i for i, nid in enumerate(self.node_ids)}
        # The engine's block keys are the router's block hashes when the block sizes agree;
        # so are its events' (other sizes would need the blocks' tokens: events stay off).
        self._route_by_keys = self.router.config.token_block_size == BLOCK_TOKENS
        self.kv_events = kv_events and self._route_by_keys
        self.kv_event_delay_s = kv_event_delay_s
        self.engines = [
            Engine(p, node_id=nid, record_kv_events=self.kv_events)
            for p, nid in zip(cluster, self.node_ids, strict=True)
        ]
        if self.kv_events:
            for router in self.routers:
                for nid in self.node_ids:
                    router.set_kv_events_state(nid, "live")
        self.duration_s = duration_s
        self.warmup_s = warmup_s
        self.timeout_s = timeout_s
        self.monitor_interval_s = monitor_interval_s
        self.sample_every = max(1, round(sample_interval_s / monitor_interval_s))
        self.result = RunResult(
            policy=policy,
            node_ids=self.node_ids,
            profiles=[p.name for p in cluster],
            duration_s=duration_s,
            warmup_s=warmup_s,
        )
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = 0
        self._scheduled: list[float | None] = [None] * len(self.engines)
        self._versions = [0] * len(self.engines)
        self._records: dict[str, RequestRecord] = {}
        self.sync_bytes = 0
        self.sync_batches = 0
        self._items: dict[str, WorkItem] = {}
        self.monitors = [EngineMonitor(e, self.monitor_interval_s) for e in self.engines]
        self._monitor_ticks = 0
        self._pending_arrivals = 0

    def _push(self, time_s: float, kind: int, payload: object) -> None:
        self._seq += 1
        if kind == _ARRIVAL:
            self._pending_arrivals += 1
        heapq.heappush(self._heap, (time_s, self._seq, kind, payload))

    def run(self, progress: Callable[[float], None] | None = None) -> RunResult:
        """Runs until the workload is drained or ``duration_s`` has passed."""
        # The run allocates millions of small acyclic objects: the cycle collector would
        # rescan them all again and again for nothing.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._run(progress)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _run(self, progress: Callable[[float], None] | None) -> RunResult:
        for item in self.workload.start():
            self._push(item.arrival_s, _ARRIVAL, item)
        self._push(0.0, _MONITOR, None)
        end = self.duration_s
        last_progress = 0.0
        heap = self._heap
        while heap:
            time_s, _, kind, payload = heapq.heappop(heap)
            if time_s > end:
                break
            if kind == _NODE:
                node, version = cast(tuple[int, int], payload)
                if version == self._versions[node]:
                    self._scheduled[node] = None
                    self._on_node(node, time_s)
            elif kind == _ARRIVAL:
                self._pending_arrivals -= 1
                self._on_arrival(cast(WorkItem, payload), time_s)
            elif kind == _DEADLINE:
                self._on_deadline(cast(tuple[int, SimRequest], payload), time_s)
            elif kind == _KV_EVENTS:
                self._on_kv_events(
                    cast(tuple[int, list[tuple[str, list[int], int | None]]], payload), time_s
                )
            elif kind == _SYNC:
                self._on_sync(cast(tuple[int, bytes], payload), time_s)
            else:
                self._on_monitor(time_s)
                if self._idle():
                    break
                self._push(time_s + self.monitor_interval_s, _MONITOR, None)
            if progress is not None and time_s - last_progress >= 10.0:
                progress(time_s - last_progress)
                last_progress = time_s
        if progress is not None:
            progress(max(0.0, min(end, self.duration_s) - last_progress))
        self.result.requests = list(self._records.values())
        self.result.preemptions = sum(e.counters.preemptions for e in self.engines)
        self.result.replicas = len(self.routers)
        self.result.sync_batches, self.result.sync_bytes = self.sync_batches, self.sync_bytes
        return self.result

    def _idle(self) -> bool:
        return self._pending_arrivals == 0 and all(s is None for s in self._scheduled)

    def _reschedule(self, node: int) -> None:
        nxt = self.engines[node].next_time()
        if nxt != self._scheduled[node]:
            self._scheduled[node] = nxt
            self._versions[node] += 1
            if nxt is not None:
                self._push(nxt, _NODE, (node, self._versions[node]))

    def _clock(self) -> float:
        return self._now

    def _replica_router(self, request_id: str, now: float) -> tuple[int, Router]:
        replica = self._records[request_id].replica
        router = self.routers[replica]
        router.set_time(now)
        return replica, router

    def _sync(self, replica: int, now: float) -> None:
        """Sends what the replica did just now to the others, ``sync_delay_s`` later."""
        if self.syncs is None:
            return
        payload = self.syncs[replica].take_batch()
        if payload is not None:
            self.sync_batches += 1
            self.sync_bytes += len(payload)
            self._push(now + cast(float, self.sync_delay_s), _SYNC, (replica, payload))

    def _on_sync(self, payload: tuple[int, bytes], now: float) -> None:
        sender, encoded = payload
        assert self.syncs is not None
        self._now = now
        batch: Batch = decode(encoded)
        for i, sync in enumerate(self.syncs):
            if i != sender:
                self.routers[i].set_time(now)
                sync.apply_batch(batch)
                self._sync(i, now)  # a Hello's snapshot answer, if any

    def _on_arrival(self, item: WorkItem, now: float) -> None:
        replica = self._splitter.randrange(len(self.routers)) if len(self.routers) > 1 else 0
        router = self.routers[replica]
        router.set_time(now)
        self._now = now
        prompt_tokens = item.prompt_tokens
        if self._route_by_keys:
            block_keys = self.workload.block_keys(item)
            decision = router.route(
                block_hashes=block_keys[: prompt_tokens // BLOCK_TOKENS],
                prompt_tokens=prompt_tokens,
                request_id=item.request_id,
                expected_output_tokens=item.output_tokens,
            )
        else:
            tokens, block_keys = self.workload.materialize(item)
            decision = router.route(
                token_ids=tokens,
                request_id=item.request_id,
                expected_output_tokens=item.output_tokens,
            )
        node = self.node_index[decision.node_id]
        item.tokens = item.block_keys = None  # routed: the engine holds what it needs
        request = SimRequest(
            request_id=item.request_id,
            prompt_tokens=prompt_tokens,
            output_tokens=item.output_tokens,
            block_keys=block_keys,
            arrival_s=now,
            deadline_s=now + self.timeout_s,
        )
        record = RequestRecord(
            arrival_s=now,
            node=node,
            prompt_tokens=prompt_tokens,
            predicted_cached_tokens=decision.matched_tokens,
            replica=replica,
        )
        self._records[item.request_id] = record
        self._items[item.request_id] = item
        if self.syncs is not None:
            self.syncs[replica].routed(decision)
        try:
            self.engines[node].submit(request, now)
        except ValueError:
            record.outcome = "rejected"
            router.complete(item.request_id, "error")
            if self.syncs is not None:
                self.syncs[replica].ended(item.request_id)
            self._sync(replica, now)
            self._follow_up(item, now, ok=False)
            return
        self._sync(replica, now)
        self._reschedule(node)
        self._send_kv_events(node, now)
        self._push(request.deadline_s, _DEADLINE, (node, request))

    def _on_node(self, node: int, now: float) -> None:
        events = self.engines[node].advance(now)
        self._reschedule(node)
        self._send_kv_events(node, now)
        for event in events:
            if event.kind is EventKind.FINISHED:
                self._finish(event.request, now, "ok")
            elif event.kind is EventKind.FIRST_TOKEN:
                request_id = event.request.request_id
                replica, router = self._replica_router(request_id, now)
                router.first_token(request_id)
                if self.syncs is not None:
                    self._now = now
                    self.syncs[replica].first_token(request_id)
                    self._sync(replica, now)

    def _on_deadline(self, payload: tuple[int, SimRequest], now: float) -> None:
        node, request = payload
        if self.engines[node].cancel(request, now):
            self._reschedule(node)
            self._send_kv_events(node, now)
            self._finish(request, now, "timeout")

    def _send_kv_events(self, node: int, now: float) -> None:
        if self.kv_events:
            events = self.engines[node].take_kv_events()
            if events:
                self._push(now + self.kv_event_delay_s, _KV_EVENTS, (node, events))

    def _on_kv_events(
        self, payload: tuple[int, list[tuple[str, list[int], int | None]]], now: float
    ) -> None:
        node, events = payload
        node_id = self.node_ids[node]
        for router in self.routers:  # every replica follows every engine's stream
            router.set_time(now)
            for kind, keys, parent in events:
                if kind == "stored":
                    router.kv_blocks_stored(node_id, keys, parent)
                else:
                    router.kv_blocks_removed(node_id, keys)

    def _finish(self, request: SimRequest, now: float, outcome: str) -> None:
        record = self._records[request.request_id]
        record.outcome = outcome
        record.finish_s = now
        record.ttft_s = request.ttft_s
        record.cached_tokens = request.cached_tokens
        record.preemptions = request.preemptions
        ok = outcome == "ok"
        record.output_tokens = request.output_tokens if ok else 0
        replica, router = self._replica_router(request.request_id, now)
        router.complete(
            request.request_id,
            outcome,
            ttft_s=request.ttft_s,
            tokens_in=request.prompt_tokens,
            tokens_out=record.output_tokens,
        )
        if self.syncs is not None:
            self._now = now
            self.syncs[replica].ended(request.request_id)
            self._sync(replica, now)
        item = self._items.pop(request.request_id)
        self._follow_up(item, now, ok=ok)

    def _follow_up(self, item: WorkItem, now: float, *, ok: bool) -> None:
        for nxt in self.workload.on_done(item, now, ok):
            self._push(max(nxt.arrival_s, now), _ARRIVAL, nxt)

    def _on_monitor(self, now: float) -> None:
        for router in self.routers:
            router.set_time(now)
        self._monitor_ticks += 1
        sample = self._monitor_ticks % self.sample_every == 0
        for i, monitor in enumerate(self.monitors):
            reading = monitor.read(now)
            figures = monitor.figures(reading)
            for router in self.routers:  # the agent reports to every replica
                router.update_metrics(self.node_ids[i], **figures)
            if sample:
                self.result.samples.append(monitor.sample(reading, now, i))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(result: RunResult) -> dict[str, float]:
    """The article's table row for one run (requests arriving after warm-up)."""
    window_start = result.warmup_s
    window = max(result.duration_s - window_start, 1e-9)
    measured = [r for r in result.requests if r.arrival_s >= window_start]
    done = [r for r in measured if r.outcome == "ok" and r.finish_s is not None]
    done_in_window = [r for r in done if r.finish_s is not None and r.finish_s <= result.duration_s]
    timeouts = sum(1 for r in measured if r.outcome == "timeout")
    failed = sum(1 for r in measured if r.outcome == "rejected")
    settled = len(done) + timeouts + failed
    ttfts = [r.ttft_s for r in done if r.ttft_s is not None]
    prompt = sum(r.prompt_tokens for r in measured if r.outcome != "rejected")
    served = [r for r in measured if r.outcome != "rejected"]
    cached = sum(r.cached_tokens for r in served)
    # Only requests the engine admitted looked their prefix up.
    predicted = [r for r in done if r.predicted_cached_tokens is not None]
    expected = sum(_reusable(r) for r in predicted)
    missed = sum(max(0, _reusable(r) - r.cached_tokens) for r in predicted)
    samples = [s for s in result.samples if s.time_s >= window_start]
    per_node = [0] * len(result.node_ids)
    for r in measured:
        per_node[r.node] += 1
    mean_node = sum(per_node) / len(per_node) if per_node else 0.0
    return {
        "requests": float(len(measured)),
        "ttft_p50_ms": percentile(ttfts, 50) * 1e3,
        "ttft_p95_ms": percentile(ttfts, 95) * 1e3,
        "ttft_p99_ms": percentile(ttfts, 99) * 1e3,
        "qps": len(done_in_window) / window,
        "output_tokens_per_s": sum(r.output_tokens for r in done_in_window) / window,
        "gpu_memory_util": _mean([s.gpu_memory_util for s in samples]),
        "kv_usage": _mean([s.kv_usage for s in samples]),
        "timeout_rate": timeouts / settled if settled else math.nan,
        "kv_hit_rate": cached / prompt if prompt else math.nan,
        # How far the router's prefix index can be trusted: the share of the tokens it
        # expected cached on the chosen node that the engine no longer had.
        "predicted_kv_hit_rate": expected / sum(r.prompt_tokens for r in predicted)
        if predicted
        else math.nan,
        "predicted_cache_missed": missed / expected if expected else math.nan,
        "preemptions": float(result.preemptions),
        "max_over_mean_node_requests": max(per_node) / mean_node if mean_node else math.nan,
        "replicas": float(result.replicas),
        "sync_bytes_per_request": result.sync_bytes / len(result.requests)
        if result.requests
        else 0.0,
    }


def _reusable(record: RequestRecord) -> int:
    """The predicted cached tokens an engine could reuse: it always computes the prompt's
    last token, so a prompt ending on a block boundary recomputes its last block."""
    reusable = (record.prompt_tokens - 1) // BLOCK_TOKENS * BLOCK_TOKENS
    return min(record.predicted_cached_tokens or 0, reusable)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan
