"""Hardware profiles of simulated GPU nodes: a model shape on a set of GPUs.

Every time and capacity the engine model uses is derived here from first principles,
with the efficiency factors stated, so a reader can check them by hand:

- Prefill is compute bound: ``2 * params`` FLOPs per token for the weights plus
  ``4 * layers * hidden * context`` FLOPs per token for attention over the context,
  at ``prefill_mfu`` of the node's peak dense FP16 FLOPS.
- A decode step is memory-bandwidth bound: it reads all weights once plus the KV
  cache of every running sequence, at ``decode_mbu`` of the node's HBM bandwidth;
  each sequence in the batch adds its ``2 * params`` FLOPs at ``decode_mfu``; a fixed
  ``step_overhead_s`` covers tensor-parallel all-reduces, sampling and scheduling.
- KV capacity: ``gpu_memory_utilization`` of the GPUs' memory, less the weights and an
  activation reserve, divided by the KV bytes per token
  (``2 * layers * kv_heads * head_dim * bytes_per_value``).

Peak figures are the vendors' datasheets: NVIDIA H100 SXM5 80GB, 989 TFLOPS dense
FP16/BF16 (tensor core, without sparsity) and 3.35 TB/s HBM3; NVIDIA A100 SXM4 80GB,
312 TFLOPS dense FP16/BF16 and 2.039 TB/s HBM2e. Llama-3-70B's shape is its published
config.json (80 layers, hidden 8192, 64 query heads, 8 KV heads, head dim 128,
70.6e9 parameters). The efficiency factors of the built-in profiles are set against
published measurements of this model at TP4 (SGLang's and vLLM's on 4xH100,
TensorRT-LLM's on 4xA100): :mod:`llmlb_fast.sim.fidelity` holds those figures with
their sources and compares the model with each (``python -m llmlb_fast.sim.fidelity``).
Other profiles can be declared in a JSON or YAML file (:func:`load_profiles`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any

BLOCK_TOKENS = 16
"""Tokens per KV-cache block, as vLLM."""

ENGINE_MODES = ("chunked", "whole")
"""How an engine schedules prefill (:mod:`llmlb_fast.sim.engine`): ``chunked`` mixes
prompt chunks into decode steps (vLLM v1), ``whole`` runs whole prompts in steps of
their own that stall decoding (vLLM v0 without chunked prefill)."""


@dataclass(frozen=True)
class ModelShape:
    name: str
    params: float
    layers: int
    hidden: int
    kv_heads: int
    head_dim: int
    bytes_per_value: int = 2

    @property
    def weight_bytes(self) -> float:
        return self.params * self.bytes_per_value

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.bytes_per_value


LLAMA3_70B_FP16 = ModelShape(
    name="llama-3-70b-fp16", params=70.6e9, layers=80, hidden=8192, kv_heads=8, head_dim=128
)


@dataclass(frozen=True)
class HardwareProfile:
    """One serving node: ``gpus`` GPUs running one model with tensor parallelism."""

    name: str
    model: ModelShape
    gpus: int
    gpu_tflops: float
    gpu_bandwidth_bytes_per_s: float
    gpu_memory_bytes: float
    prefill_mfu: float = 0.45
    decode_mfu: float = 0.5
    decode_mbu: float = 0.75
    step_overhead_s: float = 0.004
    gpu_memory_utilization: float = 0.9
    activation_reserve_bytes_per_gpu: float = 4e9
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    engine_mode: str = "chunked"

    def __post_init__(self) -> None:
        if self.engine_mode not in ENGINE_MODES:
            raise ValueError(
                f"profile {self.name!r}: engine_mode must be one of {', '.join(ENGINE_MODES)}, "
                f"got {self.engine_mode!r}"
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not (math.isfinite(value) and value > 0):
                raise ValueError(f"profile {self.name!r}: {f.name} must be > 0, got {value}")
        if self.kv_capacity_blocks < 1:
            raise ValueError(
                f"profile {self.name!r}: the weights do not fit in GPU memory (no KV cache left)"
            )

    # Node-level capacities -------------------------------------------------------
    @cached_property
    def peak_flops(self) -> float:
        return self.gpus * self.gpu_tflops * 1e12

    @cached_property
    def bandwidth_bytes_per_s(self) -> float:
        return self.gpus * self.gpu_bandwidth_bytes_per_s

    @cached_property
    def total_memory_bytes(self) -> float:
        return self.gpus * self.gpu_memory_bytes

    @cached_property
    def static_memory_bytes(self) -> float:
        """Weights plus the activation reserve: GPU memory that never holds KV cache."""
        return self.model.weight_bytes + self.gpus * self.activation_reserve_bytes_per_gpu

    @cached_property
    def kv_capacity_blocks(self) -> int:
        usable = self.total_memory_bytes * self.gpu_memory_utilization - self.static_memory_bytes
        return int(usable // (self.model.kv_bytes_per_token * BLOCK_TOKENS))

    @cached_property
    def kv_capacity_tokens(self) -> int:
        return self.kv_capacity_blocks * BLOCK_TOKENS

    @cached_property
    def prefill_tokens_per_s(self) -> float:
        """Prefill rate of short prompts (weights' FLOPs only), as declared to the router."""
        return self.peak_flops * self.prefill_mfu / (2 * self.model.params)

    # Times -----------------------------------------------------------------------
    def prefill_time_s(self, tokens: int, context_before: int) -> float:
        """Compute time of ``tokens`` new prompt tokens after ``context_before`` cached ones."""
        m = self.model
        linear = 2 * m.params * tokens
        attention = 4 * m.layers * m.hidden * (tokens * context_before + tokens * tokens / 2)
        return (linear + attention) / (self.peak_flops * self.prefill_mfu)

    @cached_property
    def decode_fixed_s(self) -> float:
        """Decode step time with an empty batch: overhead plus one read of the weights."""
        weights = self.model.weight_bytes / (self.bandwidth_bytes_per_s * self.decode_mbu)
        return self.step_overhead_s + weights

    @cached_property
    def decode_per_seq_s(self) -> float:
        return 2 * self.model.params / (self.peak_flops * self.decode_mfu)

    @cached_property
    def decode_per_context_token_s(self) -> float:
        return self.model.kv_bytes_per_token / (self.bandwidth_bytes_per_s * self.decode_mbu)

    def decode_step_s(self, batch: int, context_tokens: int) -> float:
        return (
            self.decode_fixed_s
            + batch * self.decode_per_seq_s
            + context_tokens * self.decode_per_context_token_s
        )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model.name,
            "gpus": self.gpus,
            "kv_capacity_tokens": self.kv_capacity_tokens,
            "prefill_tokens_per_s": round(self.prefill_tokens_per_s, 1),
            "decode_step_ms_batch1": round(self.decode_step_s(1, 1000) * 1e3, 2),
            "decode_step_ms_batch64_ctx2k": round(self.decode_step_s(64, 64 * 2000) * 1e3, 2),
            "engine_mode": self.engine_mode,
        }


# The efficiency factors of each profile are set against published measurements, listed
# with their sources and compared with the model in llmlb_fast.sim.fidelity
# (`python -m llmlb_fast.sim.fidelity`); what each one rests on:
PROFILES: dict[str, HardwareProfile] = {
    "h100x4": HardwareProfile(
        name="h100x4",
        model=LLAMA3_70B_FP16,
        gpus=4,
        gpu_tflops=989.0,
        gpu_bandwidth_bytes_per_s=3.35e12,
        gpu_memory_bytes=80e9,
        # No published FP16 prefill figure at TP4 was found: 0.45 keeps the H100 at 2.2x
        # the A100's prefill rate, near NVIDIA's "2x increase over the A100 using the
        # same data types" (github.com/NVIDIA/TensorRT-LLM, docs/source/blogs/H100vsA100.md).
        prefill_mfu=0.45,
        decode_mbu=0.75,
        # Against SGLang's median ITL at 4 and 8 requests/s, vLLM's median TPOT at the same
        # rates and vLLM's offline throughput (256 sequences): of a grid in steps of
        # 0.5 ms and 0.05, the pair with the smallest largest gap. Decoding stays below
        # the H100's ridge (295 FLOP/byte: ~300 sequences), so the per-sequence cost is
        # attention, sampling and GEMMs short of peak, not peak FLOPs.
        step_overhead_s=0.005,
        decode_mfu=0.3,
    ),
    "a100x4": HardwareProfile(
        name="a100x4",
        model=LLAMA3_70B_FP16,
        gpus=4,
        gpu_tflops=312.0,
        gpu_bandwidth_bytes_per_s=2.039e12,
        gpu_memory_bytes=80e9,
        # TensorRT-LLM's first token for 2,048 tokens at batch 1 (377 ms) and its output
        # throughput at batch 1,280 (128 in / 128 out) and 120 (2,048 in / 128 out). At
        # 1,280 sequences decoding is past the A100's ridge (153 FLOP/byte), compute bound
        # like prefill: one MFU for both.
        prefill_mfu=0.65,
        decode_mfu=0.65,
        decode_mbu=0.75,
        step_overhead_s=0.005,  # as the H100 node: the same TP4 step
    ),
}


def load_profiles(path: str | Path) -> dict[str, HardwareProfile]:
    """Reads extra profiles from JSON or YAML: ``{name: {field: value, ...}}``.

    A profile may start from a known one with ``"base": "h100x4"`` and override fields;
    ``"model"`` may be a mapping of :class:`ModelShape` fields.
    """
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        raw = yaml.safe_load(text)
    else:
        raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of profile name -> fields")
    known = dict(PROFILES)
    for name, spec in raw.items():
        known[name] = _profile_from_mapping(str(name), spec, known, path)
    return {name: known[name] for name in raw}


def _profile_from_mapping(
    name: str, spec: Any, known: dict[str, HardwareProfile], path: str | Path
) -> HardwareProfile:
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: profile {name!r} must be a mapping")
    spec = dict(spec)
    base_name = spec.pop("base", None)
    model = spec.pop("model", None)
    allowed = {f.name for f in fields(HardwareProfile)} - {"name", "model"}
    unknown = set(spec) - allowed
    if unknown:
        raise ValueError(f"{path}: profile {name!r} has unknown fields {sorted(unknown)}")
    if base_name is not None:
        if base_name not in known:
            raise ValueError(f"{path}: profile {name!r}: unknown base {base_name!r}")
        base = known[base_name]
    else:
        missing = {"gpus", "gpu_tflops", "gpu_bandwidth_bytes_per_s", "gpu_memory_bytes"} - set(
            spec
        )
        if missing:
            raise ValueError(f"{path}: profile {name!r} needs {sorted(missing)} or a base")
        base = replace(PROFILES["h100x4"], **spec)
    shape = base.model
    if model is not None:
        if not isinstance(model, dict):
            raise ValueError(f"{path}: profile {name!r}: model must be a mapping")
        shape = ModelShape(**{**asdict(shape), **model})
    return replace(base, name=name, model=shape, **spec)


def parse_cluster(spec: str, profiles: dict[str, HardwareProfile] | None = None) -> list[str]:
    """``"h100x4:6,a100x4:2"`` -> the profile name of each node, in order."""
    profiles = profiles if profiles is not None else PROFILES
    names: list[str] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, count_text = part.partition(":")
        if name not in profiles:
            raise ValueError(
                f"unknown profile {name!r} in cluster {spec!r}; known: {', '.join(profiles)}"
            )
        try:
            count = int(count_text) if count_text else 1
        except ValueError:
            raise ValueError(f"bad node count {count_text!r} in cluster {spec!r}") from None
        if count < 1:
            raise ValueError(f"node count must be >= 1 in cluster {spec!r}")
        names.extend([name] * count)
    if not names:
        raise ValueError(f"cluster {spec!r} names no nodes")
    return names
