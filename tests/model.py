"""A small pure-Python model of the routing rules of ``rust/llmlb-core``: the test oracle.

It mirrors, rule for rule and in the same order of float operations, ``hashing.rs``,
``scoring.rs``, ``policy/*.rs`` and the parts of ``router.rs`` that decide (candidate
skipping, the all-saturated fallback, half-open probes, request expiry on the manual
clock) and of ``node_table.rs`` that feed them (the prefill backlog and its release,
what a report says against the one before). The prefix index is modelled without
eviction: a set of block hashes per node, matched contiguously from the root. Test
code only: nothing here routes real traffic.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import xxhash

HASH_SEED = 0x006C_6C6D_6C62  # the ASCII bytes of "llmlb"
DECODE_TOKENS_PER_RUNNING = 64.0
PCIE_FULL_BYTES_PER_S = 64e9
MEMORY_KNEE = 0.8
PREFILL_TOKENS_PER_TFLOPS = 3.0
EXPIRY_SWEEP_INTERVAL_S = 1.0
U32_MAX = 2**32 - 1
U64_MASK = 2**64 - 1
FAILURES = ("error", "timeout", "expired")
MIN_TRUST_QUERY_TOKENS = 1024.0
TRUST_SMOOTHING = 0.5


def chain_seed(model: str | None, adapter: str | None) -> int:
    if model is None and adapter is None:
        return HASH_SEED
    seed = xxhash.xxh3_64_intdigest((model or "").encode(), seed=HASH_SEED)
    return seed if adapter is None else xxhash.xxh3_64_intdigest(adapter.encode(), seed=seed)


def chain_hash_bytes(data: bytes, block_size: int, seed: int = HASH_SEED) -> list[int]:
    hashes = []
    for start in range(0, len(data) - block_size + 1, block_size):
        seed = xxhash.xxh3_64_intdigest(data[start : start + block_size], seed=seed)
        hashes.append(seed)
    return hashes


def chain_hash_tokens(tokens: Sequence[int], block_size: int, seed: int = HASH_SEED) -> list[int]:
    packed = b"".join(struct.pack("<I", t) for t in tokens)
    return chain_hash_bytes(packed, 4 * block_size, seed)


def round_half_away(x: float) -> int:
    """Rust's ``f64::round`` for x >= 0 (Python's round() goes to even)."""
    return math.floor(x + 0.5)


def secs_to_ns(seconds: float) -> int:
    return max(int(seconds * 1e9), 0)


# Every policy's parameters and their defaults, as rust/llmlb-core/src/policy/*.rs
# declare them (the choosing functions are in POLICIES, below).
POLICY_DEFAULTS: dict[str, dict[str, float]] = {
    "round_robin": {},
    "random": {},
    "least_request": {},
    "prefix_aware": {"balance_abs_threshold": 8.0, "balance_rel_threshold": 1.5},
    "gpu_aware": {"pressure_scale": 2.0},
    "llmlb": {"load": 0.25, "prefix": 1.0, "gpu": 0.5, "memory": 1.0},
}


@dataclass
class Config:
    policy: str = "llmlb"
    token_block_size: int = 16
    char_block_size: int = 64
    chars_per_token: float = 4.0
    metrics_ttl_s: float = 5.0
    request_ttl_s: float = 600.0
    memory_saturation_threshold: float = 0.95
    default_output_tokens: int = 256
    max_output_tokens: int = 4096
    # Only the parameters that differ from POLICY_DEFAULTS.
    policies: dict[str, dict[str, float]] = field(default_factory=dict)
    seed: int = 0

    def params(self, policy: str) -> dict[str, float]:
        return {**POLICY_DEFAULTS[policy], **self.policies.get(policy, {})}


@dataclass
class NodeModel:
    id: str
    peak_tflops: float = 989.0
    gpu_memory_bytes: int | None = None
    max_concurrency: int | None = None
    prefill_tokens_per_s: float | None = None
    kv_capacity_tokens: int | None = None
    models: list[str] | None = None
    in_flight: int = 0
    breaker: str = "closed"
    probe_taken: bool = False
    consecutive_failures: int = 0
    metrics: dict[str, float] | None = None
    metrics_ns: int = 0
    metrics_in_flight: int = 0
    cannot_admit: bool = False
    backlog_tokens: int = 0
    backlog_ms: int = 0
    pending_prefill: int = 0
    reported_kv_tokens: int = 0
    prompt_tokens_total: int = 0
    predicted_cached_total: int = 0
    totals_at_report: tuple[int, int] = (0, 0)
    cache_trust: float = 1.0
    blocks: set[int] = field(default_factory=set)

    @property
    def prefill_rate(self) -> float:
        if self.prefill_tokens_per_s is not None:
            return self.prefill_tokens_per_s
        return self.peak_tflops * PREFILL_TOKENS_PER_TFLOPS

    def backlog(self, now_ns: int, rate: float | None = None) -> float:
        since_ms = (now_ns // 1_000_000 - self.backlog_ms) & U32_MAX
        elapsed_s = 0.0 if since_ms > U32_MAX // 2 else since_ms / 1000.0
        rate = self.prefill_rate if rate is None else rate
        return max(self.backlog_tokens - rate * elapsed_s, 0.0)

    def set_backlog(self, tokens: float, now_ns: int) -> None:
        self.backlog_tokens = int(min(max(tokens, 0.0), float(U32_MAX)))
        self.backlog_ms = (now_ns // 1_000_000) & U32_MAX

    def acquire(self, prefill_tokens: int, now_ns: int) -> None:
        self.in_flight += 1
        self.pending_prefill += prefill_tokens
        self.set_backlog(self.backlog(now_ns) + prefill_tokens, now_ns)

    def release_prefill(self, prefill_tokens: int, now_ns: int) -> None:
        self.pending_prefill = max(self.pending_prefill - prefill_tokens, 0)
        self.set_backlog(min(self.backlog(now_ns), float(self.pending_prefill)), now_ns)

    @property
    def kv_capacity(self) -> float | None:
        if self.reported_kv_tokens:
            return float(self.reported_kv_tokens)
        return None if self.kv_capacity_tokens is None else float(self.kv_capacity_tokens)

    def serves(self, model: str) -> bool:
        return not self.models or model in self.models

    def matched_blocks(self, hashes: Sequence[int]) -> int:
        depth = 0
        while depth < len(hashes) and hashes[depth] in self.blocks:
            depth += 1
        return depth


@dataclass
class Facts:
    prompt_tokens: float
    tokens_per_block: float
    output_tokens: float
    decode_share: float


@dataclass
class Cand:
    node: NodeModel
    in_flight: int
    load: float
    capability: float
    backlog: float
    matched: int
    memory_pressure: float | None = None
    reported_memory_pressure: float | None = None
    reported_kv: float | None = None
    kv_usage: float | None = None
    kv_capacity: float | None = None
    cache_trust: float = 1.0
    cannot_admit: bool = False
    sm: float | None = None
    bw: float | None = None
    pcie: float | None = None
    skip: str | None = None
    score: float | None = None

    @property
    def eligible(self) -> bool:
        return self.skip is None


def memory_pressure(m: dict[str, float], declared_total: int | None) -> float | None:
    if "kv_cache_usage" in m:
        return m["kv_cache_usage"]
    total = m.get("gpu_memory_total_bytes")
    if total is None and declared_total is not None:
        total = float(declared_total)
    used = m.get("gpu_memory_used_bytes")
    if total is None or used is None or not total > 0.0:
        return None
    return min(max(used / total, 0.0), 1.0)


def drifted(figure: float | None, drift: float) -> float | None:
    """A load-driven figure moved forward by the load routed since the report."""
    return None if figure is None else min(max(figure * drift, 0.0), 1.0)


def build_candidates(
    nodes: Sequence[NodeModel],
    hashes: Sequence[int],
    facts: Facts,
    config: Config,
    now_ns: int,
) -> list[Cand]:
    ttl_ns = secs_to_ns(config.metrics_ttl_s)
    mean_tflops = sum(n.peak_tflops for n in nodes) / max(len(nodes), 1)
    cands = []
    for node in nodes:
        c = Cand(
            node=node,
            in_flight=node.in_flight,
            load=float(node.in_flight),
            capability=node.peak_tflops / mean_tflops,
            backlog=node.backlog(now_ns),
            matched=node.matched_blocks(hashes),
            kv_capacity=node.kv_capacity,
            cache_trust=node.cache_trust,
        )
        m = node.metrics
        if m is not None and now_ns - node.metrics_ns <= ttl_ns:
            engine = m.get("num_requests_running", 0.0) + m.get("num_requests_waiting", 0.0)
            routed_since = float(node.in_flight) - float(node.metrics_in_flight)
            c.load = max(c.load, engine + routed_since)
            then = engine if engine > 0 else float(node.metrics_in_flight)
            drift = min(max((c.load + 1.0) / (then + 1.0), 0.5), 2.0)
            now = partial(drifted, drift=drift)
            c.reported_memory_pressure = memory_pressure(m, node.gpu_memory_bytes)
            c.reported_kv = m.get("kv_cache_usage")
            c.cannot_admit = node.cannot_admit
            c.kv_usage = now(c.reported_kv)
            c.memory_pressure = c.kv_usage if c.kv_usage is not None else c.reported_memory_pressure
            c.sm = now(m.get("sm_utilization"))
            c.bw = now(m.get("mem_bandwidth_utilization"))
            tx, rx = m.get("pcie_tx_bytes_per_s"), m.get("pcie_rx_bytes_per_s")
            if tx is not None or rx is not None:
                c.pcie = min(max(tx or 0.0, rx or 0.0) / PCIE_FULL_BYTES_PER_S, 1.0)
        c.skip = skip_reason(c, facts, config)
        cands.append(c)
    return cands


def skip_reason(c: Cand, facts: Facts, config: Config) -> str | None:
    if c.node.breaker == "open":
        return "breaker_open"
    if c.node.breaker == "half_open" and c.node.probe_taken:
        return "half_open_probe_in_use"
    if c.node.max_concurrency is not None and c.in_flight >= c.node.max_concurrency:
        return "at_max_concurrency"
    if c.kv_capacity is not None and facts.prompt_tokens > c.kv_capacity:
        return "prompt_exceeds_kv_capacity"
    if c.reported_kv is not None:
        full = c.cannot_admit
    else:
        reported = c.reported_memory_pressure
        full = reported is not None and reported >= config.memory_saturation_threshold
    return "gpu_memory_saturated" if full else None


def cannot_admit(previous: dict[str, float] | None, now: dict[str, float], full_at: float) -> bool:
    if previous is None or "kv_cache_usage" not in now:
        return False

    def grew(name: str) -> bool:
        return name in previous and name in now and now[name] > previous[name]

    waiting = now.get("num_requests_waiting", 0.0) > 0.0
    return (
        now["kv_cache_usage"] >= full_at
        and waiting
        and (grew("num_requests_waiting") or grew("num_preemptions_total"))
    )


def cached_tokens(c: Cand, facts: Facts, credit: float) -> float:
    return min(
        credit * c.cache_trust * float(c.matched) * facts.tokens_per_block, facts.prompt_tokens
    )


def kv_shortfall_tokens(c: Cand, facts: Facts, cached: float) -> float | None:
    if c.kv_capacity is None or c.kv_usage is None:
        return None
    needed = facts.prompt_tokens - cached + facts.output_tokens
    return max(needed - c.kv_capacity * (1.0 - c.kv_usage), 0.0)


def mean_memory_pressure(cands: Sequence[Cand]) -> float:
    known = [c.memory_pressure for c in cands if c.memory_pressure is not None]
    return sum(known) / len(known) if known else 0.0


def least_request_cost(c: Cand, mean_pressure: float) -> float:
    pressure = c.memory_pressure if c.memory_pressure is not None else mean_pressure
    headroom = min(max((1.0 - pressure) / (1.0 - MEMORY_KNEE), 0.05), 1.0)
    return (c.load + 1.0) / (c.capability * headroom)


def gpu_pressure(c: Cand, decode_share: float) -> float:
    bw, sm, pcie = c.bw or 0.0, c.sm or 0.0, c.pcie or 0.0
    return decode_share * bw * bw + (1.0 - decode_share) * sm * sm + 0.25 * pcie * pcie


def llmlb_score(c: Cand, facts: Facts, w: dict[str, float]) -> float:
    cached = cached_tokens(c, facts, w["prefix"])
    shortfall = kv_shortfall_tokens(c, facts, cached)
    if shortfall is not None:
        wait_tokens, memory = w["memory"] * shortfall, 0.0
    else:
        wait_tokens, memory = 0.0, (c.memory_pressure or 0.0) ** 2
    pressure = gpu_pressure(c, facts.decode_share) + memory
    own = facts.prompt_tokens - cached
    queue = w["load"] * (c.backlog + DECODE_TOKENS_PER_RUNNING * c.load)
    ttft = (queue + own + wait_tokens) / c.node.prefill_rate
    return ttft * (1.0 + w["gpu"] * pressure)


def rank(score: float) -> tuple[bool, float]:
    """Sort key of a score: NaN after every number."""
    return (math.isnan(score), 0.0 if math.isnan(score) else score)


def argmin_score(cands: Sequence[Cand]) -> int | None:
    best: tuple[int, float, int] | None = None
    for i, c in enumerate(cands):
        if c.score is None or not c.eligible:
            continue
        if (
            best is None
            or rank(c.score) < rank(best[1])
            or (c.score == best[1] and c.matched > best[2])
        ):
            best = (i, c.score, c.matched)
    return None if best is None else best[0]


def longest_eligible_match(cands: Sequence[Cand]) -> int:
    return max((c.matched for c in cands if c.eligible), default=0)


def scored(c: Cand) -> float:
    assert c.score is not None
    return c.score


Choice = tuple[int, str] | None


def score_least_request(cands: Sequence[Cand]) -> None:
    mean = mean_memory_pressure(cands)
    for c in cands:
        if c.eligible:
            c.score = least_request_cost(c, mean)


def choose_least_request(cands: Sequence[Cand], facts: Facts, params: dict[str, float]) -> Choice:
    score_least_request(cands)
    index = argmin_score(cands)
    return None if index is None else (index, "least_request")


def choose_prefix_aware(cands: Sequence[Cand], facts: Facts, params: dict[str, float]) -> Choice:
    score_least_request(cands)
    overall = argmin_score(cands)
    if overall is None:
        return None
    longest = longest_eligible_match(cands)
    if longest == 0:
        return overall, "fallback_least_request"
    holders = [i for i, c in enumerate(cands) if c.eligible and c.matched == longest]
    holder = min(holders, key=lambda i: rank(scored(cands[i])))  # the first of equal minima
    holder_load = cands[holder].load / cands[holder].capability
    idlest_load = cands[overall].load / cands[overall].capability
    imbalanced = (
        holder_load - idlest_load > params["balance_abs_threshold"]
        and holder_load > params["balance_rel_threshold"] * idlest_load
    )
    return (overall, "fallback_imbalance") if imbalanced else (holder, "prefix_hit")


def choose_gpu_aware(cands: Sequence[Cand], facts: Facts, params: dict[str, float]) -> Choice:
    mean = mean_memory_pressure(cands)
    for c in cands:
        if c.eligible:
            penalty = 1.0 + params["pressure_scale"] * gpu_pressure(c, facts.decode_share)
            c.score = least_request_cost(c, mean) * penalty
    index = argmin_score(cands)
    return None if index is None else (index, "gpu_aware")


def choose_llmlb(cands: Sequence[Cand], facts: Facts, w: dict[str, float]) -> Choice:
    for c in cands:
        if c.eligible:
            c.score = llmlb_score(c, facts, w)
    index = argmin_score(cands)
    if index is None:
        return None
    chosen = cands[index].matched
    hit = chosen > 0 and chosen == longest_eligible_match(cands)
    return index, "prefix_hit" if hit else "least_cost"


# The stateless policies; round_robin and random keep state in RouterModel.
POLICIES = {
    "least_request": choose_least_request,
    "prefix_aware": choose_prefix_aware,
    "gpu_aware": choose_gpu_aware,
    "llmlb": choose_llmlb,
}


def splitmix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58_476D_1CE4_E5B9) & U64_MASK
    z = ((z ^ (z >> 27)) * 0x94D0_49BB_1331_11EB) & U64_MASK
    return z ^ (z >> 31)


@dataclass
class Request:
    node: NodeModel
    started_ns: int
    probe: bool
    prefill_tokens: int = 0


@dataclass
class Decision:
    index: int
    reason: str
    candidates: list[Cand]
    hashes: list[int]
    facts: Facts

    @property
    def node_id(self) -> str:
        return self.candidates[self.index].node.id


class NoNode(Exception):
    """The model finds no node that can take the request."""


class Duplicate(Exception):
    """The request id is already in flight."""


class UnknownModel(Exception):
    """No node serves the requested model."""


class PromptTooLarge(Exception):
    """The prompt is longer than the KV cache of every node that could serve it."""


class RouterModel:
    """The router's decisions and counters, step by step, on a manual clock."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.nodes: list[NodeModel] = []
        self.requests: dict[str, Request] = {}
        self.now_ns = 0
        self.next_sweep_ns = 0
        self.rr_next = 0
        self.random_state = config.seed
        self.swept: list[str] = []  # expired by route's sweep, not yet collected

    def node(self, node_id: str) -> NodeModel:
        return next(n for n in self.nodes if n.id == node_id)

    def upsert(self, spec: NodeModel) -> None:
        """Adds a node, or replaces an existing node's spec keeping its live state."""
        for old in self.nodes:
            if old.id == spec.id:
                for name in SPEC_FIELDS:
                    setattr(old, name, getattr(spec, name))
                return
        self.nodes.append(spec)

    def remove(self, node_id: str) -> list[str]:
        self.nodes.remove(self.node(node_id))
        return sorted(r for r, req in self.requests.items() if req.node.id == node_id)

    def set_breaker(self, node_id: str, state: str) -> None:
        node = self.node(node_id)
        node.breaker, node.probe_taken = state, False

    def update_metrics(self, node_id: str, metrics: dict[str, float]) -> None:
        node = self.node(node_id)
        if "kv_capacity_tokens" in metrics:
            node.reported_kv_tokens = int(max(metrics["kv_capacity_tokens"], 1.0))
        routed = (node.prompt_tokens_total, node.predicted_cached_total)
        if node.metrics is not None:
            self.update_cache_trust(node, node.metrics, metrics, routed)
        if (
            metrics.get("num_requests_running") == 0.0
            and metrics.get("num_requests_waiting") == 0.0
        ):
            node.set_backlog(0.0, self.now_ns)
        node.cannot_admit = cannot_admit(
            node.metrics, metrics, self.config.memory_saturation_threshold
        )
        node.metrics, node.metrics_ns = dict(metrics), self.now_ns
        node.metrics_in_flight = node.in_flight
        node.totals_at_report = routed

    @staticmethod
    def update_cache_trust(
        node: NodeModel, then: dict[str, float], now: dict[str, float], routed: tuple[int, int]
    ) -> None:
        names = ("prefix_cache_hits_total", "prefix_cache_queries_total")
        if not all(n in then and n in now for n in names):
            return
        hits = now[names[0]] - then[names[0]]
        queries = now[names[1]] - then[names[1]]
        prompts = float(max(routed[0] - node.totals_at_report[0], 0))
        predicted = float(max(routed[1] - node.totals_at_report[1], 0))
        if hits < 0.0 or queries < MIN_TRUST_QUERY_TOKENS or prompts <= 0.0 or predicted <= 0.0:
            return
        confirmed = min(max((hits / queries) / (predicted / prompts), 0.0), 1.0)
        node.cache_trust = (1.0 - TRUST_SMOOTHING) * node.cache_trust + TRUST_SMOOTHING * confirmed

    def set_time(self, seconds: float) -> None:
        self.now_ns = max(self.now_ns, secs_to_ns(seconds))

    def facts(self, text: str | None, tokens: Sequence[int] | None, requested: int | None) -> Facts:
        cfg = self.config
        if text is not None:
            prompt_tokens = len(text.encode()) / cfg.chars_per_token
            per_block = cfg.char_block_size / cfg.chars_per_token
        elif tokens is not None:
            prompt_tokens, per_block = float(len(tokens)), float(cfg.token_block_size)
        else:
            prompt_tokens, per_block = 0.0, float(cfg.token_block_size)
        given = cfg.default_output_tokens if requested is None else requested
        out = float(min(given, cfg.max_output_tokens))
        share = 0.5
        if requested is not None and prompt_tokens + out > 0.0:
            share = out / (prompt_tokens + out)
        return Facts(prompt_tokens, per_block, out, share)

    def hashes(
        self,
        text: str | None,
        tokens: Sequence[int] | None,
        model: str | None = None,
        adapter: str | None = None,
    ) -> list[int]:
        seed = chain_seed(model, adapter)
        if text is not None:
            return chain_hash_bytes(text.encode(), self.config.char_block_size, seed)
        if tokens is not None:
            return chain_hash_tokens(tokens, self.config.token_block_size, seed)
        return []

    def decide(
        self,
        request_id: str | None,
        text: str | None = None,
        tokens: Sequence[int] | None = None,
        expected_output_tokens: int | None = None,
        policy: str | None = None,
        model: str | None = None,
        adapter: str | None = None,
    ) -> Decision:
        """What `route` decides, before it changes any count (see `commit`)."""
        self.maybe_expire()
        if request_id is not None and request_id in self.requests:
            raise Duplicate(request_id)
        if not self.nodes:
            raise NoNode("no nodes are registered")
        hashes = self.hashes(text, tokens, model, adapter)
        facts = self.facts(text, tokens, expected_output_tokens)
        cands = build_candidates(self.nodes, hashes, facts, self.config, self.now_ns)
        if model is not None:
            for c in cands:
                if not c.node.serves(model):
                    c.skip = "model_not_served"
            if all(c.skip == "model_not_served" for c in cands):
                raise UnknownModel(model)
        index, reason = self.choose(policy or self.config.policy, cands, facts)
        return Decision(index, reason, cands, hashes, facts)

    def commit(self, decision: Decision, request_id: str, index: int) -> None:
        """Counts the request on candidate `index` (the model's choice or a tied one)."""
        chosen = decision.candidates[index]
        node = chosen.node
        probe = node.breaker == "half_open"
        if probe:
            node.probe_taken = True
        facts = decision.facts
        prefill = round_half_away(facts.prompt_tokens - cached_tokens(chosen, facts, 1.0))
        self.requests[request_id] = Request(node, self.now_ns, probe, prefill)
        node.acquire(prefill, self.now_ns)
        matched_tokens = min(chosen.matched * facts.tokens_per_block, facts.prompt_tokens)
        node.prompt_tokens_total += int(facts.prompt_tokens)
        node.predicted_cached_total += int(matched_tokens)
        if chosen.matched < len(decision.hashes):
            node.blocks.update(decision.hashes)

    def first_token(self, request_id: str) -> bool:
        request = self.requests.get(request_id)
        if request is None:
            return False
        tokens, request.prefill_tokens = request.prefill_tokens, 0
        request.node.release_prefill(tokens, self.now_ns)
        return True

    def choose(self, policy: str, cands: list[Cand], facts: Facts) -> tuple[int, str]:
        all_saturated = False
        if not any(c.eligible for c in cands):
            considered = [c for c in cands if c.skip not in ("model_not_served", "excluded")]
            if considered and all(c.skip == "prompt_exceeds_kv_capacity" for c in considered):
                raise PromptTooLarge()
            if not any(c.skip == "gpu_memory_saturated" for c in cands):
                raise NoNode("every node is skipped")
            for c in cands:
                if c.skip == "gpu_memory_saturated":
                    c.skip = None
            all_saturated = True
        choice = self.run_policy(policy, cands, facts)
        if choice is None:
            raise NoNode("policy found no node")
        return (choice[0], "all_saturated") if all_saturated else choice

    def run_policy(self, policy: str, cands: list[Cand], facts: Facts) -> Choice:
        if policy == "round_robin":
            return self.choose_round_robin(cands)
        if policy == "random":
            return self.choose_random(cands)
        return POLICIES[policy](cands, facts, self.config.params(policy))

    def choose_round_robin(self, cands: Sequence[Cand]) -> Choice:
        n = len(cands)
        start = self.rr_next % n
        self.rr_next += 1
        reason = "breaker_open_skipped" if cands[start].skip == "breaker_open" else "round_robin"
        for step in range(n):
            if cands[(start + step) % n].eligible:
                return (start + step) % n, reason
        return None

    def choose_random(self, cands: Sequence[Cand]) -> Choice:
        eligible = [i for i, c in enumerate(cands) if c.eligible]
        if not eligible:
            return None
        draw = splitmix64(self.random_state)
        self.random_state = (self.random_state + 0x9E37_79B9_7F4A_7C15) & U64_MASK
        return eligible[draw % len(eligible)], "random"

    def complete(self, request_id: str, outcome: str) -> str | None:
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        node = request.node
        node.in_flight = max(node.in_flight - 1, 0)
        node.release_prefill(request.prefill_tokens, self.now_ns)
        node.consecutive_failures = node.consecutive_failures + 1 if outcome in FAILURES else 0
        return node.id

    def maybe_expire(self) -> None:
        if self.now_ns < self.next_sweep_ns:
            return
        interval = min(EXPIRY_SWEEP_INTERVAL_S, self.config.request_ttl_s)
        self.next_sweep_ns = self.now_ns + secs_to_ns(interval)
        self.swept.extend(self.release_expired())

    def expire_stale(self) -> list[str]:
        """Requests expired now, and those route's sweeps expired since the last call."""
        expired, self.swept = self.swept, []
        return expired + self.release_expired()

    def release_expired(self) -> list[str]:
        deadline = max(self.now_ns - secs_to_ns(self.config.request_ttl_s), 0)
        stale = [r for r, req in self.requests.items() if req.started_ns < deadline]
        for request_id in stale:
            self.complete(request_id, "expired")
        return stale


SPEC_FIELDS = (
    "peak_tflops",
    "gpu_memory_bytes",
    "max_concurrency",
    "prefill_tokens_per_s",
    "kv_capacity_tokens",
    "models",
)
