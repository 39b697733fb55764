"""How close the built-in hardware profiles come to published measurements.

Each :class:`Anchor` is one published figure, with its source and the conditions it was
measured under; its :class:`Scenario` replays those conditions on the engine model
(:mod:`llmlb_fast.sim.engine`) and returns the same metric. ``python -m
llmlb_fast.sim.fidelity`` prints the profiles' derived figures and every anchor against
the model as Markdown (the tables in docs/benchmark.md are this output).

An anchor is ``checked`` when its conditions match the profile (model, precision,
tensor parallelism); the model must then be within :data:`TOLERANCE` of it
(tests/test_sim_fidelity.py). Anchors whose conditions differ are shown with the reason.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, Protocol

from llmlb_fast.sim.engine import Engine, SimRequest
from llmlb_fast.sim.profiles import BLOCK_TOKENS, PROFILES, HardwareProfile

TOLERANCE = 0.15
"""Largest relative gap allowed between the model and a checked anchor."""

SGLANG_V030 = (
    "https://github.com/sgl-project/sglang/blob/120affb9613cc3f5bcd055ec09c7621d3ced0ebc/"
    "benchmark/benchmark_vllm_060/README.md"
)
"""SGLang v0.3.0 against vLLM v0.6.0, Llama 3.1 70B Instruct (BF16) on 4 x H100 80GB, TP4,
ShareGPT prompts, radix cache off; online at 4 and 8 requests/s (1,200 and 2,400
prompts), offline with 5,000 prompts sent at once."""

VLLM_V060_BLOG = "https://blog.vllm.ai/2024/09/05/perf-update.html"
"""vLLM's ShareGPT sample: 202 input and 179 output tokens on average."""

TRTLLM_PERF = (
    "https://github.com/NVIDIA/TensorRT-LLM/blob/138f96d45f90b9667426f7c47297d8c06bafac73/"
    "docs/source/performance.md"
)
"""TensorRT-LLM's performance page (v0.6.1 throughput, v0.5 first-token latency): LLaMA
70B (Llama 2 70B: Llama 3 70B's shape with a smaller vocabulary) at TP4; A100 80GB SXM in
FP16, H100 in FP8. Throughput is output tokens/s per GPU at a fixed batch size."""

VLLM_V060_WHOLE = (
    "whole mode: vLLM 0.6.0 with a 4,096-token context ran without chunked prefill "
    "(on by default only past 32k; multi-step scheduling did not support it)"
)

# ShareGPT lengths: vLLM's blog gives 202 input tokens on average; the output length is
# SGLang's table's own: 3,700.64 output tokens/s / 19.04 requests/s = 194 tokens.
SHAREGPT_INPUT, SHAREGPT_OUTPUT = 202, 194


class Scenario(Protocol):
    @property
    def unit(self) -> str: ...

    def describe(self) -> str: ...

    def measure(self, profile: HardwareProfile) -> float: ...


@dataclass(frozen=True)
class PromptLatency:
    """Time to first token of one prompt on an idle node."""

    prompt_tokens: int
    unit: ClassVar[str] = "ms"

    def describe(self) -> str:
        return f"TTFT, one {self.prompt_tokens:,}-token prompt, batch 1"

    def measure(self, profile: HardwareProfile) -> float:
        engine = Engine(profile)
        request = SimRequest("prompt", self.prompt_tokens, 1, list(_keys(self.prompt_tokens, 0)))
        engine.submit(request, 0.0)
        _drain(engine)
        assert request.ttft_s is not None
        return request.ttft_s * 1e3


@dataclass(frozen=True)
class DecodeStep:
    """One decode step of ``batch`` sequences holding ``context`` tokens each."""

    batch: int
    context: int
    unit: ClassVar[str] = "ms"

    def describe(self) -> str:
        return f"decode step, batch {self.batch}, {self.context:,} tokens of context each"

    def measure(self, profile: HardwareProfile) -> float:
        return profile.decode_step_s(self.batch, self.batch * self.context) * 1e3


@dataclass(frozen=True)
class Offline:
    """``requests`` equal requests sent at once, at most ``max_num_seqs`` running."""

    requests: int
    input_tokens: int
    output_tokens: int
    max_num_seqs: int
    unit: ClassVar[str] = "output tok/s"

    def describe(self) -> str:
        return (
            f"offline, {self.requests:,} requests of {self.input_tokens:,} in / "
            f"{self.output_tokens:,} out, at most {self.max_num_seqs} running"
        )

    def measure(self, profile: HardwareProfile) -> float:
        engine = Engine(replace(profile, max_num_seqs=self.max_num_seqs))
        for i in range(self.requests):
            engine.submit(self._request(i), 0.0)
        end = _drain(engine)
        return engine.counters.generated_tokens / end

    def _request(self, i: int) -> SimRequest:
        blocks = (self.input_tokens + self.output_tokens) // BLOCK_TOKENS
        return SimRequest(f"r{i}", self.input_tokens, self.output_tokens, list(_keys(blocks, i)))


@dataclass(frozen=True)
class OnlineTPOT:
    """Median time per output token (after the first) of Poisson arrivals at ``rate``."""

    rate_per_s: float
    requests: int
    input_tokens: int
    output_tokens: int
    engine_mode: str
    seed: int = 0
    unit: ClassVar[str] = "ms"

    def describe(self) -> str:
        return (
            f"median TPOT, {self.rate_per_s:g} requests/s (Poisson), {self.input_tokens} in / "
            f"{self.output_tokens} out, engine mode {self.engine_mode}"
        )

    def measure(self, profile: HardwareProfile) -> float:
        engine = Engine(replace(profile, engine_mode=self.engine_mode))
        rng = random.Random(self.seed)
        blocks = (self.input_tokens + self.output_tokens) // BLOCK_TOKENS
        requests, now = [], 0.0
        for i in range(self.requests):
            now += rng.expovariate(self.rate_per_s)
            _drain(engine, until=now)
            request = SimRequest(
                f"r{i}",
                self.input_tokens,
                self.output_tokens,
                list(_keys(blocks, i)),
                arrival_s=now,
            )
            engine.submit(request, now)
            requests.append(request)
        _drain(engine)
        return statistics.median(
            (r.finish_s - r.first_token_s) / (r.output_tokens - 1) * 1e3  # type: ignore[operator]
            for r in requests
        )


def _keys(blocks: int, request: int) -> Iterator[int]:
    """Block keys no other request shares (nothing is cached between requests)."""
    return (request << 32 | b for b in range(blocks))


def _drain(engine: Engine, until: float = float("inf")) -> float:
    """Advances the engine through every step that ends by ``until``; returns the last end."""
    end = 0.0
    while (step_end := engine.next_time()) is not None and step_end <= until:
        engine.advance(step_end)
        end = step_end
    return end


@dataclass(frozen=True)
class Anchor:
    profile: str
    scenario: Scenario
    published: float
    source: str
    url: str
    checked: bool = True
    note: str = ""


ANCHORS: tuple[Anchor, ...] = (
    # 4 x H100, BF16, TP4 ------------------------------------------------------------
    Anchor(
        "h100x4",
        # Batch by Little's law: 4 requests/s x 3.0 s median end-to-end latency.
        DecodeStep(batch=12, context=300),
        21.67,
        "SGLang v0.3.0, median ITL at 4 requests/s",
        SGLANG_V030,
        note="batch = rate x median E2E latency; ShareGPT context ~300 tokens",
    ),
    Anchor(
        "h100x4",
        DecodeStep(batch=32, context=300),  # 8 requests/s x 4.06 s
        24.45,
        "SGLang v0.3.0, median ITL at 8 requests/s",
        SGLANG_V030,
        note="batch = rate x median E2E latency",
    ),
    Anchor(
        "h100x4",
        OnlineTPOT(4.0, 1200, SHAREGPT_INPUT, SHAREGPT_OUTPUT, "whole"),
        23.58,
        "vLLM v0.6.0, median TPOT at 4 requests/s (SGLang: 25.03)",
        SGLANG_V030,
        note=VLLM_V060_WHOLE,
    ),
    Anchor(
        "h100x4",
        OnlineTPOT(8.0, 2400, SHAREGPT_INPUT, SHAREGPT_OUTPUT, "whole"),
        29.15,
        "vLLM v0.6.0, median TPOT at 8 requests/s (SGLang: 33.07)",
        SGLANG_V030,
        note=VLLM_V060_WHOLE,
    ),
    Anchor(
        "h100x4",
        Offline(5000, SHAREGPT_INPUT, SHAREGPT_OUTPUT, max_num_seqs=256),
        3700.64,
        "vLLM v0.6.0, offline output throughput (SGLang: 3,856)",
        SGLANG_V030,
        note="vLLM's default of 256 running sequences",
    ),
    Anchor(
        "h100x4",
        PromptLatency(2048),
        109.0,
        "TensorRT-LLM v0.5, first-token latency, H100 FP8",
        TRTLLM_PERF,
        checked=False,
        note="FP8 (twice FP16's peak): a lower bound for FP16, not a target",
    ),
    # 4 x A100, FP16, TP4 ------------------------------------------------------------
    Anchor(
        "a100x4",
        PromptLatency(2048),
        377.0,
        "TensorRT-LLM v0.5, first-token latency",
        TRTLLM_PERF,
    ),
    Anchor(
        "a100x4",
        Offline(1280, 128, 128, max_num_seqs=1280),
        4 * 670.0,
        "TensorRT-LLM v0.6.1, 670 output tok/s per GPU at batch 1,280",
        TRTLLM_PERF,
        note="per GPU x 4; read per node it would be far below the memory-bandwidth bound",
    ),
    Anchor(
        "a100x4",
        Offline(120, 2048, 128, max_num_seqs=120),
        4 * 79.0,
        "TensorRT-LLM v0.6.1, 79 output tok/s per GPU at batch 120",
        TRTLLM_PERF,
        note="prefill-bound: 246k prompt tokens for 15k output tokens",
    ),
    Anchor(
        "a100x4",
        PromptLatency(128),
        47.0,
        "TensorRT-LLM v0.5, first-token latency",
        TRTLLM_PERF,
        checked=False,
        note="a lone short prompt: the model has no weight-read floor for a prefill-only "
        "step (141 GB at 8.2 TB/s is 17 ms) and no per-request fixed cost",
    ),
)


@dataclass(frozen=True)
class Comparison:
    anchor: Anchor
    model: float

    @property
    def gap(self) -> float:
        """Relative gap of the model against the published figure."""
        return self.model / self.anchor.published - 1

    @property
    def within_tolerance(self) -> bool:
        return abs(self.gap) <= TOLERANCE


def compare(
    anchors: Sequence[Anchor] = ANCHORS, profiles: dict[str, HardwareProfile] = PROFILES
) -> list[Comparison]:
    return [Comparison(a, a.scenario.measure(profiles[a.profile])) for a in anchors]


def profile_table(profiles: dict[str, HardwareProfile] = PROFILES) -> str:
    """The profiles' derived figures (decode steps with 1,000 tokens of context each)."""
    lines = [
        "| profile | KV capacity (tokens) | prefill, short prompts (tok/s) "
        "| TTFT, 2,048 tokens (ms) | decode step, batch 1 / 16 / 64 (ms) |",
        "|---|---|---|---|---|",
    ]
    for name, p in profiles.items():
        steps = " / ".join(f"{DecodeStep(b, 1000).measure(p):.1f}" for b in (1, 16, 64))
        lines.append(
            f"| `{name}` | {p.kv_capacity_tokens:,} | {p.prefill_tokens_per_s:,.0f} "
            f"| {PromptLatency(2048).measure(p):.0f} | {steps} |"
        )
    return "\n".join(lines)


def anchor_table(comparisons: Sequence[Comparison]) -> str:
    lines = [
        "| profile | scenario | published | model | gap | source | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        a = c.anchor
        unit = a.scenario.unit
        gap = f"{c.gap:+.1%}" + ("" if a.checked else " (not checked)")
        lines.append(
            f"| `{a.profile}` | {a.scenario.describe()} | {a.published:,.2f} {unit} "
            f"| {c.model:,.2f} {unit} | {gap} | [{a.source}]({a.url}) | {a.note} |"
        )
    return "\n".join(lines)


def render() -> str:
    """Both tables, as docs/benchmark.md holds them."""
    return f"{profile_table()}\n\n{anchor_table(compare())}\n"


def main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()
