"""The routing-core benchmark workload, shared by the pytest-benchmark suite and the
report script: a cluster of N nodes and a prefix index pre-filled to ~100k entries."""

from __future__ import annotations

import random
from dataclasses import dataclass

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
