"""Property tests: the real Router against the pure-Python model in ``tests/model.py``.

Random sequences of operations (nodes joining, leaving and changing; prompts sharing
prefixes; completions; GPU reports; breaker changes; time passing) run on both; after
each step the prefix matches, scores, choices, reasons and counts must agree.
"""

from __future__ import annotations

import math
from typing import Any

import model
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llmlb_fast import (
    POLICIES,
    DuplicateRequestError,
    InvalidInputError,
    NoAvailableNodeError,
    Node,
    RouteDecision,
    Router,
    RouterConfig,
    UnknownModelError,
)

NODE_IDS = ["n0", "n1", "n2", "n3", "n4"]
TEXT_SEGMENTS = ["You are a helpful assistant. ", "Translate: ", "abcdefgh", "ünïcødé ", "12"]
TOKEN_SEGMENTS = [[1, 2, 3, 4], [5, 6, 7], [2**32 - 1, 0, 7], [9, 9, 9, 9, 9], [42]]
FRACTIONS = [0.0, 0.2, 0.5, 0.9, 0.94, 0.95, 0.99, 1.0]
REL_TOL = 1e-9

configs = st.fixed_dictionaries(
    {
        "policy": st.sampled_from(POLICIES),
        "token_block_size": st.sampled_from([1, 2, 4]),
        "char_block_size": st.sampled_from([4, 8, 16]),
        "chars_per_token": st.sampled_from([1.0, 4.0]),
        "metrics_ttl_s": st.sampled_from([1.0, 5.0]),
        "request_ttl_s": st.sampled_from([3.0, 600.0]),
        "memory_saturation_threshold": st.sampled_from([0.9, 0.95, 1.0]),
        "policies": st.fixed_dictionaries(
            {
                "prefix_aware": st.fixed_dictionaries(
                    {
                        "balance_abs_threshold": st.sampled_from([0.0, 1.0, 3.0]),
                        "balance_rel_threshold": st.sampled_from([1.0, 1.5, 3.0]),
                    }
                ),
                "gpu_aware": st.fixed_dictionaries(
                    {"pressure_scale": st.sampled_from([0.0, 2.0, 5.0])}
                ),
                "llmlb": st.fixed_dictionaries(
                    {
                        "load": st.sampled_from([0.0, 1.0, 2.0]),
                        "prefix": st.sampled_from([0.0, 0.5, 1.0]),
                        "gpu": st.sampled_from([0.0, 0.5, 3.0]),
                    }
                ),
            }
        ),
        "seed": st.integers(0, 2**64 - 1),
    }
)

node_specs = st.fixed_dictionaries(
    {
        "id": st.sampled_from(NODE_IDS),
        "peak_tflops": st.sampled_from([100.0, 500.0, 989.0, 2000.0]),
        "gpu_memory_bytes": st.sampled_from([None, 80 * 2**30]),
        "max_concurrency": st.sampled_from([None, 1, 3]),
        "prefill_tokens_per_s": st.sampled_from([None, 500.0, 20000.0]),
        # Large enough never to bound the index (the model does not evict).
        "kv_capacity_tokens": st.sampled_from([None, 10**6]),
        "models": st.sampled_from([None, ["m1"], ["m1", "m2"]]),
    }
)


@st.composite
def gpu_reports(draw: st.DrawFn) -> dict[str, float]:
    report: dict[str, float] = {}
    for name in ["kv_cache_usage", "sm_utilization", "mem_bandwidth_utilization"]:
        if draw(st.booleans()):
            report[name] = draw(st.sampled_from(FRACTIONS))
    for name in ["pcie_tx_bytes_per_s", "pcie_rx_bytes_per_s"]:
        if draw(st.booleans()):
            report[name] = draw(st.sampled_from([0.0, 1e9, 32e9, 1e11]))
    for name in ["num_requests_running", "num_requests_waiting", "num_preemptions_total"]:
        if draw(st.booleans()):
            report[name] = float(draw(st.integers(0, 12)))
    if draw(st.booleans()):
        queries = float(draw(st.sampled_from([0, 500, 2000, 10**6])))
        report["prefix_cache_queries_total"] = queries
        report["prefix_cache_hits_total"] = queries * draw(st.sampled_from([0.0, 0.3, 1.0]))
    if draw(st.booleans()):
        report["gpu_memory_used_bytes"] = draw(st.sampled_from(FRACTIONS)) * 80 * 2**30
        if draw(st.booleans()):
            report["gpu_memory_total_bytes"] = 80.0 * 2**30
    return report


@st.composite
def prompts(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["text", "text", "tokens", "tokens", "none"]))
    request: dict[str, Any] = {
        "expected_output_tokens": draw(st.sampled_from([None, 0, 1, 100, 2000, 100_000])),
        "policy": draw(st.one_of(st.none(), st.sampled_from(POLICIES))),
        "model": draw(st.sampled_from([None, None, "m1", "m2"])),
    }
    if kind == "text":
        texts = draw(st.lists(st.sampled_from(TEXT_SEGMENTS), max_size=6))
        shared = draw(st.sampled_from(["", TEXT_SEGMENTS[0], TEXT_SEGMENTS[0]]))
        request["prompt"] = shared + "".join(texts)
    elif kind == "tokens":
        segments = draw(st.lists(st.sampled_from(TOKEN_SEGMENTS), max_size=6))
        system = draw(st.sampled_from([[], TOKEN_SEGMENTS[0], TOKEN_SEGMENTS[0]]))
        request["token_ids"] = system + [t for s in segments for t in s]
    return request


class Pair:
    """The real router and the model, driven in lockstep."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.real = Router(RouterConfig(prefix_cache_size=10**6, **config), manual_clock=True)
        model_config = {k: v for k, v in config.items()}
        self.model = model.RouterModel(model.Config(**model_config))
        self.time_s = 0.0
        self.next_id = 0

    def upsert(self, spec: dict[str, Any]) -> None:
        self.real.upsert_node(Node(spec["id"], f"{spec['id']}:1", **without_id(spec)))
        self.model.upsert(model.NodeModel(**spec))

    def remove(self, node_id: str) -> None:
        if not any(n.id == node_id for n in self.model.nodes):
            return
        assert self.real.remove_node(node_id) == self.model.remove(node_id)

    def update_metrics(self, node_id: str, report: dict[str, float]) -> None:
        if any(n.id == node_id for n in self.model.nodes):
            self.real.update_metrics(node_id, **report)
            self.model.update_metrics(node_id, report)

    def set_breaker(self, node_id: str, state: str) -> None:
        if any(n.id == node_id for n in self.model.nodes):
            previous = self.model.node(node_id).breaker
            assert self.real.set_breaker_state(node_id, state) == previous
            self.model.set_breaker(node_id, state)

    def clear_cache(self, node_id: str) -> None:
        if any(n.id == node_id for n in self.model.nodes):
            self.real.clear_node_cache(node_id)
            self.model.node(node_id).blocks.clear()

    def advance(self, seconds: float) -> None:
        self.time_s += seconds
        self.real.set_time(self.time_s)
        self.model.set_time(self.time_s)

    def complete(self, request_id: str, outcome: str) -> None:
        node_id = self.model.complete(request_id, outcome)
        completion = self.real.complete(request_id, outcome)
        assert (completion and completion.node_id) == node_id

    def first_token(self, request_id: str) -> None:
        assert self.real.first_token(request_id) == self.model.first_token(request_id)

    def expire(self) -> None:
        expired = [c.request_id for c in self.real.expire_stale()]
        assert sorted(expired) == sorted(self.model.expire_stale())

    def route(self, request: dict[str, Any], request_id: str | None) -> None:
        try:
            expected = self.model.decide(
                request_id,
                text=request.get("prompt"),
                tokens=request.get("token_ids"),
                expected_output_tokens=request["expected_output_tokens"],
                policy=request["policy"],
                model=request["model"],
            )
        except model.Duplicate:
            with pytest.raises(DuplicateRequestError):
                self.real.route(request_id=request_id, **request)
            return
        except model.UnknownModel:
            with pytest.raises(UnknownModelError):
                self.real.route(request_id=request_id, **request)
            return
        except model.NoNode:
            with pytest.raises(NoAvailableNodeError):
                self.real.route(request_id=request_id, **request)
            return
        except model.PromptTooLarge:
            with pytest.raises(InvalidInputError, match="longer than the KV cache"):
                self.real.route(request_id=request_id, **request)
            return
        decision = self.real.route(request_id=request_id, **request)
        index = check_decision(decision, expected)
        self.model.commit(expected, decision.request_id, index)

    def check_counts(self) -> None:
        statuses = {s.id: s for s in self.real.nodes()}
        assert list(statuses) == [n.id for n in self.model.nodes]
        for node in self.model.nodes:
            status = statuses[node.id]
            assert status.in_flight == node.in_flight >= 0, (node.id, status.in_flight)
            assert status.breaker_state == node.breaker
            assert status.consecutive_failures == node.consecutive_failures
            assert status.prefix_blocks == len(node.blocks)
            assert status.pending_prefill_tokens == node.pending_prefill
            assert close(status.backlog_tokens, node.backlog(self.model.now_ns))
            assert close(status.cache_trust, node.cache_trust)
            on_node = sorted(r for r, req in self.model.requests.items() if req.node.id == node.id)
            assert self.real.in_flight_request_ids(node.id) == on_node
        assert self.real.in_flight_total == len(self.model.requests)


def without_id(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k != "id"}


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-12)


def check_decision(decision: RouteDecision, expected: model.Decision) -> int:
    """Checks a real decision against the model's; returns the index of the chosen node."""
    cands = expected.candidates
    assert [c.node_id for c in decision.candidates] == [c.node.id for c in cands]
    for real, want in zip(decision.candidates, cands, strict=True):
        assert real.matched_blocks == want.matched, real.node_id
        assert real.skipped == want.skip, real.node_id
        assert real.in_flight == want.in_flight
        assert close(real.load, want.load)
        assert close(real.score, want.score), (real.node_id, real.score, want.score)
    index = [c.node_id for c in decision.candidates].index(decision.node_id)
    assert decision.matched_blocks == cands[index].matched
    if index == expected.index:
        assert decision.reason == expected.reason
        return index
    # Only a near-tie of scores may make the two choices differ.
    best = min(c.score for c in cands if c.score is not None and c.eligible)
    for i in (index, expected.index):
        score = cands[i].score
        assert score is not None and score <= best * (1 + REL_TOL), (decision.reason, i)
    return index


OPERATIONS = (
    ["route"] * 8
    + ["complete"] * 4
    + ["first_token"] * 2
    + ["upsert", "metrics", "metrics", "time"]
    + [
        "breaker",
        "remove",
        "clear",
        "expire",
        "duplicate",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, data=st.data())
def test_router_agrees_with_model(config: dict[str, Any], data: st.DataObject) -> None:
    pair = Pair(config)
    for spec in data.draw(st.lists(node_specs, min_size=1, max_size=4), label="nodes"):
        pair.upsert(spec)
    for _ in range(data.draw(st.integers(10, 80), label="steps")):
        run_step(pair, data)
        pair.check_counts()


def run_step(pair: Pair, data: st.DataObject) -> None:
    op = data.draw(st.sampled_from(OPERATIONS))
    node_id = data.draw(st.sampled_from(NODE_IDS))
    if op == "route":
        pair.next_id += 1
        request_id = data.draw(st.sampled_from([f"r{pair.next_id}", None]))
        pair.route(data.draw(prompts()), request_id)
    elif op == "duplicate" and pair.model.requests:
        pair.route(data.draw(prompts()), data.draw(st.sampled_from(sorted(pair.model.requests))))
    elif op == "complete":
        known = sorted(pair.model.requests) or ["unknown"]
        request_id = data.draw(st.sampled_from([*known, "r1", "never-routed"]))
        pair.complete(request_id, data.draw(st.sampled_from(["ok", "error", "timeout"])))
    elif op == "first_token":
        known = sorted(pair.model.requests) or ["unknown"]
        pair.first_token(data.draw(st.sampled_from([*known, "never-routed"])))
    elif op == "upsert":
        pair.upsert(data.draw(node_specs))
    elif op == "metrics":
        pair.update_metrics(node_id, data.draw(gpu_reports()))
    elif op == "time":
        pair.advance(data.draw(st.sampled_from([0.0, 0.001, 0.25, 1.0, 2.5, 7.0])))
    elif op == "breaker":
        pair.set_breaker(node_id, data.draw(st.sampled_from(["closed", "open", "half_open"])))
    elif op == "remove":
        pair.remove(node_id)
    elif op == "clear":
        pair.clear_cache(node_id)
    elif op == "expire":
        pair.expire()
