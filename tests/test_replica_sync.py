"""Replica sync without a network: two or more core routers handed each other's batches
(the messages the Redis transport carries), and the DES's K-replica mode."""

from __future__ import annotations

import msgspec
import pytest
from llmlb_fast import Node, Router, RouterConfig
from llmlb_fast.replicas import ReplicaSync, decode, encode
from llmlb_fast.replicas.messages import Batch, Hello, Routed

PROMPT = "You are the assistant of a hardware store. Be brief and exact. " * 8


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pair(
    clock: Clock, nodes: tuple[str, ...] = ("a", "b", "c")
) -> tuple[Router, ReplicaSync, Router, ReplicaSync]:
    specs = [Node(n, f"{n}:8000", prefill_tokens_per_s=1000.0) for n in nodes]
    first = Router(RouterConfig(), specs, manual_clock=True)
    second = Router(RouterConfig(), specs, manual_clock=True)
    return (
        first,
        ReplicaSync(first, "r1", ttl_s=3.0, clock=clock),
        second,
        ReplicaSync(second, "r2", ttl_s=3.0, clock=clock),
    )


def deliver(source: ReplicaSync, *targets: ReplicaSync) -> None:
    payload = source.take_batch()
    assert payload is not None
    for target in targets:
        assert target.apply(payload)


def in_flight(router: Router) -> dict[str, int]:
    return {s.id: s.in_flight for s in router.nodes()}


def test_a_peers_decisions_count_as_load_and_prefix_credit_until_they_end() -> None:
    clock = Clock()
    first, sync1, second, sync2 = pair(clock)
    decision = first.route(PROMPT, request_id="q1")
    sync1.routed(decision)
    deliver(sync1, sync2)
    assert in_flight(second) == in_flight(first)
    assert second.remote_in_flight_total == 1
    pending = {s.id: s.pending_prefill_tokens for s in second.nodes()}
    assert pending[decision.node_id] == decision.prefill_tokens > 0
    credit = {node: c.blocks for node, c in second.prefix_credit(PROMPT).items()}
    assert credit[decision.node_id] == len(decision.block_hashes) > 0
    # The second replica sends the same conversation where the first did.
    own = second.route(PROMPT + " Where is my order?")
    assert own.node_id == decision.node_id

    first.first_token("q1")
    sync1.first_token("q1")
    deliver(sync1, sync2)
    pending = {s.id: s.pending_prefill_tokens for s in second.nodes()}
    assert pending[decision.node_id] == own.prefill_tokens  # only its own request's

    first.complete("q1", "ok")
    sync1.ended("q1")
    deliver(sync1, sync2)
    assert second.remote_in_flight_total == 0
    assert in_flight(second)[decision.node_id] == 1  # only its own request is left


def test_a_lost_batch_is_noticed_and_answered_with_a_snapshot() -> None:
    clock = Clock()
    first, sync1, second, sync2 = pair(clock)
    for i in range(4):
        sync1.routed(first.route(f"{PROMPT} {i}", request_id=f"q{i}"))
    deliver(sync1, sync2)
    for i in range(2):
        first.complete(f"q{i}", "ok")
        sync1.ended(f"q{i}")
    assert sync1.take_batch() is not None  # lost on the way
    sync1.routed(first.route(PROMPT, request_id="q9"))
    deliver(sync1, sync2)  # seq 3 after 1: a gap
    assert sync2.counters.gaps == 1
    assert second.remote_in_flight_total == 5  # the lost completions still count
    deliver(sync2, sync1)  # its Hello asks the first for a snapshot
    deliver(sync1, sync2)
    assert sync2.counters.snapshots_applied == 1
    assert second.remote_in_flight_total == first.in_flight_total == 3
    assert in_flight(second) == in_flight(first)


def test_a_restarted_peer_and_a_silent_one_stop_counting() -> None:
    clock = Clock()
    first, sync1, second, sync2 = pair(clock)
    sync1.routed(first.route(PROMPT, request_id="q1"))
    deliver(sync1, sync2)
    assert second.remote_in_flight_total == 1
    # Same name, new process: what the old one had in flight died with it.
    restarted = ReplicaSync(first, "r1", clock=clock)
    assert restarted.epoch != sync1.epoch
    heartbeat = restarted.take_batch(heartbeat=True)
    assert heartbeat is not None and sync2.apply(heartbeat)
    assert second.remote_in_flight_total == 0

    restarted.routed(first.route(PROMPT, request_id="q2"))
    deliver(restarted, sync2)
    clock.now += 2.0
    assert sync2.expire_peers() == []
    clock.now += 1.5  # past the 3 s TTL since it was last heard
    assert sync2.expire_peers() == ["r1"]
    assert second.remote_in_flight_total == 0
    assert sync2.peers == {}


def test_a_joining_replica_gets_every_peers_in_flight_set() -> None:
    clock = Clock()
    first, sync1, second, sync2 = pair(clock)
    for i in range(3):
        sync1.routed(first.route(f"{PROMPT} {i}", request_id=f"q{i}"))
    first.first_token("q0")
    sync1.first_token("q0")
    assert sync1.take_batch() is not None  # before the second replica was there
    sync2.request_snapshots()
    deliver(sync2, sync1)
    deliver(sync1, sync2)
    assert sync2.peers["r1"].synced
    assert second.remote_in_flight_total == 3
    pending = sum(s.pending_prefill_tokens for s in second.nodes())
    assert pending == sum(s.pending_prefill_tokens for s in first.nodes())


def test_bad_batches_are_counted_and_skipped() -> None:
    clock = Clock()
    _, _, second, sync2 = pair(clock)
    assert not sync2.apply(b"\x93not a batch")
    assert not sync2.apply(encode(Batch("r1", "e", 1, clock.now, [Hello()]))[:-3])
    assert sync2.counters.malformed == 2
    # A node this replica does not know: counted, the rest of the batch applies.
    unknown = Routed("q1", "zz", [], False, 10, 10, 0)
    known = Routed("q2", "a", [], False, 10, 10, 0)
    assert sync2.apply(encode(Batch("r1", "e", 1, clock.now, [unknown, known])))
    assert sync2.counters.unknown_node == 1
    assert second.remote_in_flight_total == 1
    # Its own batches (a shared stream echoes them) are not applied.
    sync2.routed(second.route(PROMPT, request_id="own"))
    payload = sync2.take_batch()
    assert payload is not None and not sync2.apply(payload)


def test_a_batch_round_trips_through_msgpack() -> None:
    batch = Batch("r1", "e1", 7, 1.5, [Routed("q", "a", [2**64 - 1, 3], True, 40, 30, 8, 0.25)])
    assert decode(encode(batch)) == batch
    with pytest.raises(msgspec.ValidationError):
        decode(msgspec.msgpack.encode(["r1", "e1", "seven", 1.5, []]))


def _chat(**options: object) -> dict[str, float]:
    from llmlb_fast.sim.des import Simulation, summarize
    from llmlb_fast.sim.profiles import PROFILES
    from llmlb_fast.sim.workloads import ChatSessions

    workload = ChatSessions(
        sessions=12, streams=10, system_tokens=1000, input_tokens=200, output_tokens=300,
        turns=4, think_s=2.0, rate_per_s=None, ramp_s=20.0, duration_s=240.0, seed=3,
    )  # fmt: skip
    sim = Simulation(
        workload, [PROFILES["h100x4"]] * 4, duration_s=240.0, warmup_s=30.0, seed=3,
        kv_events=False, **options,  # type: ignore[arg-type]
    )  # fmt: skip
    result = sim.run()
    assert result.replicas == options.get("replicas", 1)
    return summarize(result)


def test_des_replicas_in_sync_keep_the_affinity_that_unsynced_ones_lose() -> None:
    single = _chat()
    synced = _chat(replicas=4, sync_delay_s=0.005)
    blind = _chat(replicas=4, sync_delay_s=None)
    assert _chat(replicas=4, sync_delay_s=0.005) == synced  # deterministic
    assert single == _chat(replicas=1, sync_delay_s=0.005)  # one replica syncs with no one
    assert synced["sync_bytes_per_request"] > 0 == blind["sync_bytes_per_request"]
    assert synced["kv_hit_rate"] >= 0.95 * single["kv_hit_rate"]
    assert blind["kv_hit_rate"] < synced["kv_hit_rate"] - 0.05
