"""The routing-core benchmark workload, shared by the pytest-benchmark suite and the
report scripts: a cluster of N nodes and a prefix index pre-filled to ~100k entries, and
the timing of route() calls."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmlb_fast import Node, Router, RouterConfig

BLOCK_BYTES = 64  # RouterConfig.char_block_size default
PREFILL_PROMPTS = 10_000
BLOCKS_PER_PROMPT = 12  # 2 shared + 10k prompts x 10 unique blocks = 100k entries
QUERY_PROMPTS = 2_000


def random_text(rng: random.Random, blocks: int) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(blocks * BLOCK_BYTES))


@dataclass
class CoreWorkload:
    router: Router
    queries: list[str]
    nodes: int


def build(nodes: int, policy: str = "llmlb", seed: int = 0) -> CoreWorkload:
    """A router with `nodes` nodes whose prefix index holds ~100k entries, and query
    prompts that extend pre-filled prompts by two new blocks (partial hits)."""
    rng = random.Random(seed)
    router = Router(
        RouterConfig(policy=policy, prefix_cache_size=200_000),
        [Node(f"node-{i}", f"http://127.0.0.1:{8000 + i}") for i in range(nodes)],
    )
    system = random_text(rng, 2)
    prefilled = [system + random_text(rng, BLOCKS_PER_PROMPT - 2) for _ in range(PREFILL_PROMPTS)]
    for prompt in prefilled:
        router.complete(router.route(prompt).request_id)
    queries = [rng.choice(prefilled) + random_text(rng, 2) for _ in range(QUERY_PROMPTS)]
    return CoreWorkload(router=router, queries=queries, nodes=nodes)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_routes(router: Router, route: Callable[[], Any], calls: int) -> dict[str, float]:
    """Times ``route()`` alone, ``calls`` times; each request is completed outside the
    timed region. Microseconds."""
    samples = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        started = clock()
        decision = route()
        samples.append((clock() - started) / 1000)
        router.complete(decision.request_id)
    return {
        "p50_us": percentile(samples, 0.50),
        "p99_us": percentile(samples, 0.99),
        "mean_us": statistics.fmean(samples),
    }
