"""KV-event ingestion over real ZMQ sockets on loopback: a publisher speaking vLLM's
layout (PUB + ROUTER replay) -> the ingestion thread -> the router's index, and the
same through the gRPC service (config and RegisterNode)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_harness import running_server
from llmlb_fast import Node, Router, RouterConfig
from llmlb_fast.kv_events import KvEventIngest, KvEventSource
from llmlb_fast.kv_events.publisher import KvEventPublisher
from llmlb_fast.kv_events.subscriber import rank_endpoint
from llmlb_fast.kv_events.wire import AllBlocksCleared, BlockRemoved, BlockStored
from prometheus_client import generate_latest

from grpc_server.llmlb.v1 import router_pb2 as pb

TOKENS = list(range(500, 564))  # four blocks of 16
TOPIC = "kv-events"


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def stored(hashes: list[bytes], parent: bytes | None, start: int) -> BlockStored:
    """Blocks ``start``.. of TOKENS (16 tokens each)."""
    tokens = TOKENS[16 * start : 16 * (start + len(hashes))]
    return BlockStored(list(hashes), parent, tokens, 16)


class Ingesting:
    def __init__(self, publisher: KvEventPublisher, **ingest: float) -> None:
        self.publisher = publisher
        self.router = Router(RouterConfig(), [Node("a", "a:8000")])
        self.ingest = KvEventIngest(self.router, **ingest)
        self.ingest.start()
        self.follow(publisher)

    def follow(self, publisher: KvEventPublisher) -> None:
        source = KvEventSource("a", publisher.endpoint, TOPIC, publisher.replay_endpoint)
        self.ingest.set_sources([source])

    def blocks(self) -> int:
        return self.router.prefix_credit(token_ids=TOKENS)["a"].blocks

    def state(self) -> str:
        return self.router.nodes()[0].kv_events_state

    @property
    def stats(self):  # type: ignore[no-untyped-def]
        return self.ingest.stats["a"]


@pytest.fixture
def publisher() -> Iterator[KvEventPublisher]:
    pub = KvEventPublisher(topic=TOPIC)
    yield pub
    pub.close()


@pytest.fixture
def ingesting(publisher: KvEventPublisher) -> Iterator[Ingesting]:
    running = Ingesting(publisher)
    yield running
    running.ingest.stop()


def test_stored_removed_and_cleared_reach_the_index(ingesting: Ingesting) -> None:
    pub = ingesting.publisher
    wait_until(lambda: ingesting.state() == "live")
    pub.publish([stored([b"e0", b"e1", b"e2"], None, 0)])
    wait_until(lambda: ingesting.blocks() == 3)
    pub.publish([stored([b"e3"], b"e2", 3), BlockRemoved([b"e1"])])
    wait_until(lambda: ingesting.stats.batches == 2)
    assert ingesting.blocks() == 1  # e1 evicted: e2 and e3 are unreachable below it
    pub.publish([AllBlocksCleared()])
    wait_until(lambda: ingesting.stats.batches == 3)
    assert ingesting.blocks() == 0
    assert ingesting.stats.blocks["stored"] == 4


def test_a_router_started_after_its_engine_learns_the_engine_history(
    publisher: KvEventPublisher,
) -> None:
    publisher.publish([stored([b"e0", b"e1"], None, 0)])
    time.sleep(0.05)  # published before anyone subscribed: only the replay has it
    running = Ingesting(publisher)
    try:
        wait_until(lambda: running.blocks() == 2)
        assert running.stats.replays["ok"] >= 1
    finally:
        running.ingest.stop()


def test_a_dropped_sequence_is_replayed() -> None:
    pub = KvEventPublisher(topic=TOPIC, drop_live=lambda seq: seq == 2)
    running = Ingesting(pub)
    try:
        wait_until(lambda: running.stats.replays["ok"] >= 1)  # the initial replay
        pub.publish([stored([b"e0"], None, 0)])
        pub.publish([stored([b"e1"], b"e0", 1)])
        pub.publish([stored([b"e2"], b"e1", 2)])  # seq 2: never sent live
        pub.publish([stored([b"e3"], b"e2", 3)])
        wait_until(lambda: running.blocks() == 4)
        assert running.stats.errors["gap"] == 1
        assert running.stats.replays["ok"] == 2
        assert running.state() == "live"
    finally:
        running.ingest.stop()
        pub.close()


def test_a_gap_that_cannot_be_replayed_turns_credit_into_guesses() -> None:
    pub = KvEventPublisher(topic=TOPIC, replay_endpoint=None, drop_live=lambda seq: seq == 1)
    running = Ingesting(pub)
    try:
        wait_until(lambda: running.stats.errors["gap"] == 0 and running.state() == "live")
        time.sleep(0.1)  # connected
        pub.publish([stored([b"e0", b"e1"], None, 0)])
        wait_until(lambda: running.blocks() == 2)
        pub.publish([BlockRemoved([b"e1"])])  # lost
        pub.publish([stored([b"x"], None, 0)])  # the same first block, another hash
        wait_until(lambda: running.stats.errors["gap"] == 1)
        credit = running.router.prefix_credit(token_ids=TOKENS)["a"]
        # What had been confirmed may be stale now: guesses that expire. What arrived
        # after the gap is confirmed again.
        assert (credit.blocks, credit.guessed_blocks) == (1, 2)
        assert running.state() == "live"
    finally:
        running.ingest.stop()
        pub.close()


def test_malformed_payloads_are_counted_and_the_stream_goes_on(ingesting: Ingesting) -> None:
    pub = ingesting.publisher
    wait_until(lambda: ingesting.stats.replays["ok"] >= 1)
    pub.publish_raw(b"\xc1 not msgpack")
    pub.publish([stored([b"e0"], None, 0)])
    wait_until(lambda: ingesting.blocks() == 1)
    assert ingesting.stats.errors["malformed"] == 1
    assert ingesting.stats.errors["gap"] == 0


def test_a_dead_publisher_marks_the_node_unconfirmed_and_a_restart_clears_it() -> None:
    pub = KvEventPublisher(topic=TOPIC)
    running = Ingesting(pub, dead_after_s=0.3)
    try:
        wait_until(lambda: running.stats.replays["ok"] >= 1)
        pub.publish([stored([b"e0", b"e1"], None, 0)] * 1)
        pub.publish([stored([b"e2"], b"e1", 2)])
        wait_until(lambda: running.blocks() == 3)
        pub.close()
        wait_until(lambda: running.state() == "unconfirmed")
        assert running.stats.errors["publisher_dead"] == 1
        # The engine restarts on the same ports: its sequence starts over, its cache
        # is empty.
        restarted = KvEventPublisher(pub.endpoint, pub.replay_endpoint, topic=TOPIC)
        try:
            wait_until(lambda: running.state() == "live")
            restarted.publish([stored([b"f0"], None, 0)])
            wait_until(lambda: running.stats.errors["publisher_restart"] == 1)
            credit = running.router.prefix_credit(token_ids=TOKENS)["a"]
            assert credit.blocks == 1
        finally:
            restarted.close()
    finally:
        running.ingest.stop()


def test_data_parallel_ranks_publish_on_consecutive_ports() -> None:
    assert rank_endpoint("tcp://10.0.0.5:5557", 2) == "tcp://10.0.0.5:5559"
    rank0 = KvEventPublisher(topic=TOPIC, replay_endpoint=None)
    port = int(rank0.endpoint.rsplit(":", 1)[1])
    try:
        rank1 = KvEventPublisher(f"tcp://127.0.0.1:{port + 1}", None, topic=TOPIC)
    except Exception:
        rank0.close()
        pytest.skip("the next port is taken")
    router = Router(RouterConfig(), [Node("a", "a:8000")])
    ingest = KvEventIngest(router)
    ingest.start()
    try:
        ingest.set_sources([KvEventSource("a", rank0.endpoint, TOPIC, data_parallel_size=2)])
        time.sleep(0.2)
        rank1.publish([stored([b"e0", b"e1"], None, 0)], data_parallel_rank=1)
        rank0.publish([stored([b"e0"], None, 0)], data_parallel_rank=0)
        wait_until(lambda: ingest.stats["a"].batches == 2)
        assert router.prefix_credit(token_ids=TOKENS)["a"].blocks == 2
        assert router.nodes()[0].kv_engine_blocks == 3
    finally:
        ingest.stop()
        rank0.close()
        rank1.close()


def test_removing_a_source_stops_following_it(ingesting: Ingesting) -> None:
    wait_until(lambda: ingesting.state() == "live")
    ingesting.ingest.set_sources([])
    wait_until(lambda: ingesting.state() == "off")


def test_the_service_follows_configured_and_registered_nodes(publisher: KvEventPublisher) -> None:
    asyncio.run(_service_follows(publisher))


async def _service_follows(publisher: KvEventPublisher) -> None:
    kv_events = {"endpoint": publisher.endpoint, "topic": TOPIC,
                 "replay_endpoint": publisher.replay_endpoint}  # fmt: skip
    nodes = [{"id": "a", "address": "10.0.0.1:8000", "models": ["m"], "kv_events": kv_events}]
    async with running_server({"nodes": nodes}) as running:
        publisher.publish([stored([b"e0", b"e1"], None, 0)])

        async def node_a() -> pb.NodeState:
            listed = await running.stub.ListNodes(pb.ListNodesRequest())
            return next(n for n in listed.nodes if n.node.id == "a")

        deadline = time.monotonic() + 5
        while (await node_a()).kv_engine_blocks != 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert (await node_a()).kv_events_state == "live"
        # The node's only model seeds the chain, as requests naming it are hashed.
        request = pb.RouteRequest(model="m", token_ids=pb.TokenIds(ids=TOKENS))
        decision = await running.stub.Route(request)
        assert (decision.node_id, decision.matched_blocks) == ("a", 2)
        # A node registered with a bad endpoint is refused with INVALID_ARGUMENT.
        bad = pb.RegisterNodeRequest(
            node=pb.NodeSpec(id="b", address="10.0.0.2:8000"),
            kv_events=pb.KvEventsSource(endpoint="tcp://*:5557"),
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await running.stub.RegisterNode(bad)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a ZMQ endpoint" in (refused.value.details() or "")
        good = pb.RegisterNodeRequest(
            node=pb.NodeSpec(id="c", address="10.0.0.3:8000"),
            kv_events=pb.KvEventsSource(endpoint="tcp://127.0.0.1:1", model="m"),
        )
        await running.stub.RegisterNode(good)
        service = running.server.service
        wait_until(lambda: "c" in service.kv_events.stats)
        metrics = generate_latest(service.telemetry.registry).decode()
        assert 'llmlb_kv_event_batches_total{node="a"} 1.0' in metrics
        assert 'llmlb_kv_events_state{node="a"} 1.0' in metrics
        assert 'llmlb_kv_engine_blocks{node="a"} 2.0' in metrics
        assert "llmlb_kv_event_ingest_errors_total 0.0" in metrics
