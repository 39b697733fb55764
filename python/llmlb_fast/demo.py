"""``llmlb demo``: the routing core on a built-in example cluster and chat workload.

Routes the same chat traffic (sessions sharing system prompts, with growing histories)
through every policy on the real Rust core, and prints how each one spreads load and
how much of the prompts the chosen nodes already had cached. Request durations are
virtual (a fixed number of routing steps), so this shows routing behaviour, not latency.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from dataclasses import dataclass

from tqdm import tqdm

from llmlb_fast import POLICIES, Node, Router, RouterConfig

HELP = "Route example chat traffic through every policy and compare them."

PRODUCTS = ["bookshop", "bank", "airline", "code review", "travel agency", "clinic"]
SYSTEM_PROMPTS = [
    f"You are the assistant of a {product}. Answer the customer's questions politely and "
    f"concisely, follow the {product}'s policies, and never invent facts. " * 4
    for product in PRODUCTS
]
USER_TURNS = [
    "Where is my order? It was supposed to arrive on Monday.",
    "Can you review this function that parses dates from log lines?",
    "How do I return a book that arrived damaged?",
    "Why does this loop leak file handles when an exception is raised?",
    "Do you ship to Canada, and how long does it take?",
    "Is it fine to catch bare exceptions in a retry helper?",
]


def example_nodes() -> list[Node]:
    """Two 4xH100 and two 4xA100 nodes serving a 70B model (dense FP16 peak TFLOPS)."""
    h100 = {"peak_tflops": 4 * 989.0, "kv_capacity_tokens": 400_000}
    a100 = {"peak_tflops": 4 * 312.0, "kv_capacity_tokens": 350_000}
    return [
        Node("h100-a", "http://10.0.0.1:8000", **h100),  # type: ignore[arg-type]
        Node("h100-b", "http://10.0.0.2:8000", **h100),  # type: ignore[arg-type]
        Node("a100-a", "http://10.0.0.3:8000", **a100),  # type: ignore[arg-type]
        Node("a100-b", "http://10.0.0.4:8000", **a100),  # type: ignore[arg-type]
    ]


@dataclass
class PolicyResult:
    policy: str
    share_by_node: dict[str, float]
    block_hit_rate: float
    max_over_mean: float
    route_us: float


def chat_workload(requests: int, sessions: int, seed: int) -> list[str]:
    """Prompts of interleaved chat sessions; each turn resends the whole history."""
    rng = random.Random(seed)
    histories = [SYSTEM_PROMPTS[s % len(SYSTEM_PROMPTS)] for s in range(sessions)]
    prompts: list[str] = []
    for _ in range(requests):
        s = rng.randrange(sessions)
        answer = f"(answer {len(prompts)}) " + "Here is what I found. " * rng.randint(2, 12)
        histories[s] += f"\nUser: {rng.choice(USER_TURNS)}\nAssistant: {answer}"
        prompts.append(histories[s])
    return prompts


def run_policy(policy: str, prompts: list[str], concurrency: int) -> PolicyResult:
    router = Router(RouterConfig(policy=policy), example_nodes(), manual_clock=True)
    in_flight: list[str] = []
    counts: Counter[str] = Counter()
    started = time.perf_counter()
    for step, prompt in enumerate(prompts):
        router.set_time(step * 0.05)
        decision = router.route(prompt, expected_output_tokens=200)
        counts[decision.node_id] += 1
        in_flight.append(decision.request_id)
        if len(in_flight) >= concurrency:
            router.complete(in_flight.pop(0), ttft_s=0.1, tokens_out=200)
    elapsed = time.perf_counter() - started
    index = router.stats()["prefix_index"]
    assert isinstance(index, dict)
    total = sum(counts.values())
    mean = total / len(router.nodes())
    return PolicyResult(
        policy=policy,
        share_by_node={n.id: counts[n.id] / total for n in router.nodes()},
        block_hit_rate=float(index["block_hit_rate"]),
        max_over_mean=max(counts.values()) / mean,
        route_us=elapsed / len(prompts) * 1e6,
    )


def explain_one(prompts: list[str]) -> str:
    router = Router(RouterConfig(), example_nodes(), manual_clock=True)
    for prompt in prompts[:40]:
        router.route(prompt)
    decision = router.route(prompts[40])
    lines = [
        f"request {decision.request_id}: -> {decision.node_id} "
        f"(policy {decision.policy}, reason {decision.reason}, "
        f"{decision.matched_tokens}/{decision.prompt_tokens} prompt tokens cached)"
    ]
    for c in decision.candidates:
        score = "skipped: " + c.skipped if c.skipped else f"score {c.score:.4f}"
        lines.append(
            f"  {c.node_id:8} {score:>16}  in flight {c.in_flight:3}  "
            f"cached blocks {c.matched_blocks}"
        )
    return "\n".join(lines)


def format_table(results: list[PolicyResult]) -> str:
    nodes = list(results[0].share_by_node)
    header = f"{'policy':15} {'KV hit':>7} {'max/mean':>9} {'route us':>9}  " + "  ".join(
        f"{n:>7}" for n in nodes
    )
    rows = [header, "-" * len(header)]
    for r in results:
        shares = "  ".join(f"{r.share_by_node[n]:7.1%}" for n in nodes)
        rows.append(
            f"{r.policy:15} {r.block_hit_rate:7.1%} {r.max_over_mean:9.2f} "
            f"{r.route_us:9.1f}  {shares}"
        )
    return "\n".join(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=2000, help="requests to route")
    parser.add_argument("--sessions", type=int, default=24, help="concurrent chat sessions")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--seed", type=int, default=7, help="workload seed")


def run(args: argparse.Namespace) -> int:
    prompts = chat_workload(args.requests, args.sessions, args.seed)
    results = [
        run_policy(policy, prompts, args.concurrency)
        for policy in tqdm(POLICIES, desc="policies", unit="policy")
    ]
    print(f"\n{args.requests} chat requests, {args.sessions} sessions, 4 example nodes\n")
    print(format_table(results))
    print("\nKV hit: share of prompt blocks the chosen node already held.")
    print("max/mean: requests on the busiest node over the mean (1.00 = even).")
    print("H100 nodes have 3.2x the FLOPS of A100 nodes, so an even split is not ideal.\n")
    print("Why one decision was made (llmlb policy):")
    print(explain_one(prompts))
    return 0
