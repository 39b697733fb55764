"""Engine KV-cache events: vLLM's wire format (:mod:`.wire`), a publisher that speaks it
(:mod:`.publisher`, for simulated nodes and tests) and the router's ingestion
(:mod:`.subscriber`)."""

from llmlb_fast.kv_events.subscriber import KvEventIngest, KvEventSource

__all__ = ["KvEventIngest", "KvEventSource"]
