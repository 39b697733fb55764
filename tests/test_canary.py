"""Canary split (R8): share within tolerance, sticky sessions, labelled metrics."""

from __future__ import annotations

import asyncio
import random

import pytest
from grpc_harness import running_server
from llmlb_fast.service.canary import CanarySplit, bucket_of

from grpc_server.llmlb.v1 import router_pb2 as pb


def test_split_share_is_within_tolerance() -> None:
    split = CanarySplit("round_robin", 5.0)
    chosen = sum(split.choose(session_id=f"session-{i}") is not None for i in range(20_000))
    assert 0.045 < chosen / 20_000 < 0.055


def test_sessions_are_sticky_and_stable() -> None:
    split = CanarySplit("round_robin", 30.0)
    for i in range(200):
        first = split.choose(session_id=f"s{i}", request_id=f"r{i}")
        assert all(split.choose(session_id=f"s{i}", request_id=f"x{j}") == first for j in range(5))
    # A documented, process-independent hash (not Python's salted hash()).
    assert bucket_of("session-42") == bucket_of("session-42") < 10_000


def test_edges_and_random_fallback() -> None:
    assert CanarySplit("random", 0.0).choose(session_id="s") is None
    assert CanarySplit("random", 100.0).choose(session_id="s") == "random"
    split = CanarySplit("random", 50.0, rng=random.Random(1))
    share = sum(split.choose() is not None for _ in range(4000)) / 4000
    assert 0.45 < share < 0.55
    with pytest.raises(ValueError, match="percent"):
        CanarySplit("random", 101.0)


def test_canary_over_grpc_uses_the_canary_policy() -> None:
    async def scenario() -> None:
        overrides = {"policy": "llmlb", "canary": {"policy": "round_robin", "percent": 20}}
        async with running_server(overrides) as s:
            counts = {"round_robin": 0, "llmlb": 0}
            for i in range(600):
                routed = await s.stub.Route(
                    pb.RouteRequest(session_id=f"user-{i}", text=f"hello {i}")
                )
                assert routed.canary == (routed.policy == "round_robin")
                counts[routed.policy] += 1
                done = await s.stub.Complete(
                    pb.CompleteRequest(request_id=routed.request_id, outcome=pb.OUTCOME_OK)
                )
                assert done.policy == routed.policy
            assert 0.14 < counts["round_robin"] / 600 < 0.26
            again = {
                (await s.stub.Route(pb.RouteRequest(session_id="user-7", text=str(j)))).policy
                for j in range(5)
            }
            assert len(again) == 1
            completions = s.server.service.telemetry.completions
            assert completions.labels("round_robin", "ok")._value.get() == counts["round_robin"]
            assert completions.labels("llmlb", "ok")._value.get() == counts["llmlb"]

    asyncio.run(scenario())
