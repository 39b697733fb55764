"""What a simulated node reports: an engine's state turned into the GPU metric figures
an NVML agent and the engine's ``/metrics`` would give (the core's ``METRIC_FIELDS``),
and into the samples the benchmark plots. One reading per interval; utilisation is the
engine's activity since the previous reading."""

from __future__ import annotations

from dataclasses import dataclass

from llmlb_fast.sim.engine import Engine, EngineSnapshot


@dataclass
class NodeSample:
    time_s: float
    node: int
    running: int
    waiting: int
    kv_usage: float
    gpu_memory_util: float
    sm_util: float
    bandwidth_util: float


@dataclass(frozen=True, slots=True)
class Reading:
    snapshot: EngineSnapshot
    sm_utilization: float
    mem_bandwidth_utilization: float


class EngineMonitor:
    def __init__(self, engine: Engine, interval_s: float) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self._busy_s = 0.0
        self._bytes_read = 0.0

    def read(self, now: float) -> Reading:
        """The engine now, with SM and HBM-bandwidth use since the last reading."""
        profile = self.engine.profile
        busy, read = self.engine.activity(now)
        sm = (busy - self._busy_s) / self.interval_s
        bandwidth = (read - self._bytes_read) / (self.interval_s * profile.bandwidth_bytes_per_s)
        self._busy_s, self._bytes_read = busy, read
        return Reading(self.engine.snapshot(now), min(1.0, max(0.0, sm)), min(1.0, bandwidth))

    def figures(self, reading: Reading) -> dict[str, float]:
        """The metric figures of a reading, by ``METRIC_FIELDS`` name (PCIe aside: only
        a node that moves bytes over HTTP knows those)."""
        profile = self.engine.profile
        snap = reading.snapshot
        counters = self.engine.counters
        total = profile.total_memory_bytes
        return {
            # vLLM pre-allocates its KV pool, so NVML sees a constant footprint.
            "gpu_memory_used_bytes": total * profile.gpu_memory_utilization,
            "gpu_memory_total_bytes": total,
            "kv_cache_memory_bytes": snap.kv_cache_memory_bytes,
            "compute_memory_bytes": profile.static_memory_bytes,
            "kv_cache_usage": snap.kv_usage,
            "sm_utilization": reading.sm_utilization,
            "mem_bandwidth_utilization": reading.mem_bandwidth_utilization,
            "num_requests_running": float(snap.running),
            "num_requests_waiting": float(snap.waiting),
            "kv_capacity_tokens": float(profile.kv_capacity_tokens),
            "prefix_cache_hits_total": float(counters.cached_tokens),
            "prefix_cache_queries_total": float(counters.prompt_tokens),
            "num_preemptions_total": float(counters.preemptions),
        }

    def sample(self, reading: Reading, time_s: float, node: int) -> NodeSample:
        """What the benchmark plots: the memory the engine really uses, not NVML's view."""
        snap = reading.snapshot
        return NodeSample(
            time_s=time_s,
            node=node,
            running=snap.running,
            waiting=snap.waiting,
            kv_usage=snap.kv_usage,
            gpu_memory_util=snap.gpu_memory_used_bytes / self.engine.profile.total_memory_bytes,
            sm_util=reading.sm_utilization,
            bandwidth_util=reading.mem_bandwidth_utilization,
        )
