"""``llmlb demo``: the README's first command.

Runs the article's benchmark in miniature, live: for each policy, a fresh ``llmlb
serve`` (gRPC service and HTTP proxy) in front of a simulated cluster of two 4xH100 and
two 4xA100 nodes (real HTTP servers speaking vLLM's API on 127.0.0.1, reporting their
simulated GPU metrics over ReportMetrics, time sped up 10x), with chat sessions
sharing system prompts streamed through the proxy. Prints the article's table against
round robin, then shows why the core made one decision.
"""

from __future__ import annotations

import argparse
import random

from llmlb_fast import Node, Router, RouterConfig, bench

HELP = "Compare every routing policy on a small simulated GPU cluster (under two minutes)."

# 150 simulated seconds of chat per policy at 10x: about 17 s of wall time per policy
# with the service's start and stop, so all six fit in two minutes on two cores.
BENCH_SETTINGS = {
    "--workload": "chat",
    "--cluster": "h100x4:2,a100x4:2",
    "--sessions": "8",
    "--streams": "10",
    "--duration": "150",
    "--warmup": "30",
    "--dilation": "10",
}
BENCH_ARGS = ["--live", *(part for setting in BENCH_SETTINGS.items() for part in setting)]

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bars (for logs and CI)"
    )


def run(args: argparse.Namespace) -> int:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    bench_args = parser.parse_args(BENCH_ARGS + (["--no-progress"] if args.no_progress else []))
    print(
        "Live: for each policy, llmlb serve (gRPC + HTTP proxy) in front of 4 simulated vLLM\n"
        "nodes (2x 4xH100, 2x 4xA100, 70B FP16) on 127.0.0.1, time sped up 10x; 80 chat\n"
        "streams in 8 sessions stream through the proxy. TTFT = client wall time x 10.\n"
    )
    code = bench.run(bench_args)
    if code != 0:
        return code
    print("\nThe full-size runs and how to reproduce them: docs/benchmark.md.\n")
    print("Why the core made one decision (llmlb policy, example chat prompts):")
    print(explain_one(chat_workload(requests=60, sessions=8, seed=7)))
    return 0
