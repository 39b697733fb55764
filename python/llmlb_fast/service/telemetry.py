"""Prometheus metrics of the routing service, served over HTTP at ``/metrics``.

Counters and histograms are updated as requests flow; node gauges (GPU utilisation,
in-flight, breaker state, hit rates) are read from the router when scraped, so they
never go stale and cost nothing on the hot path.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from llmlb_fast._core import Router
from llmlb_fast.kv_events import KvEventIngest
from llmlb_fast.replicas.redis_sync import RedisReplicaLink
from llmlb_fast.replicas.sync import ReplicaSync
from llmlb_fast.service.events import (
    BREAKER_CLOSED,
    BREAKER_HALF_OPENED,
    BREAKER_OPENED,
    CONFIG_REJECTED,
    CONFIG_RELOADED,
    Event,
)

BREAKER_STATE_VALUE = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
KV_EVENTS_STATE_VALUE = {"off": 0.0, "live": 1.0, "unconfirmed": 2.0}
_ROUTE_LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
)  # fmt: skip
_TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _RouterCollector(Collector):
    def __init__(self, router: Router, engine_hit_rates: dict[str, float]) -> None:
        self._router = router
        self._engine_hit_rates = engine_hit_rates

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gpu = GaugeMetricFamily(
            "gpu_utilization_percent",
            "SM utilisation reported by the node's agent",
            labels=["node"],
        )
        in_flight = GaugeMetricFamily(
            "llmlb_in_flight_requests", "Requests routed and not yet completed", labels=["node"]
        )
        breaker = GaugeMetricFamily(
            "llmlb_breaker_state", "Breaker state: 0 closed, 1 half_open, 2 open", labels=["node"]
        )
        hit_rate = GaugeMetricFamily(
            "kv_cache_hit_rate",
            "Prefix cache hit rate: source=prefix_index is the router's block hit rate, "
            "source=engine the node's own (hits/queries)",
            labels=["source", "node"],
        )
        for status in self._router.nodes():
            in_flight.add_metric([status.id], status.in_flight)
            breaker.add_metric([status.id], BREAKER_STATE_VALUE[status.breaker_state])
            metrics = status.metrics or {}
            if "sm_utilization" in metrics:
                gpu.add_metric([status.id], metrics["sm_utilization"] * 100.0)
        index = self._router.stats()["prefix_index"]
        assert isinstance(index, dict)
        hit_rate.add_metric(["prefix_index", ""], float(index["block_hit_rate"]))
        for node_id, rate in list(self._engine_hit_rates.items()):
            hit_rate.add_metric(["engine", node_id], rate)
        return [gpu, in_flight, breaker, hit_rate]


class _ReplicaSyncCollector(Collector):
    """Active-active sync: what this replica sent and applied, its peers, the link."""

    def __init__(self, sync: ReplicaSync, link: RedisReplicaLink) -> None:
        self._sync = sync
        self._link = link

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        sync, link = self._sync, self._link
        c, lc = sync.counters, link.counters
        yield GaugeMetricFamily(
            "llmlb_replica_sync_connected", "1 while Redis answers this replica",
            value=float(link.connected),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "llmlb_replica_sync_warm",
            "1 once the replica knows its peers' in-flight sets (it serves from then on)",
            value=float(link.warm.is_set()),
        )
        yield GaugeMetricFamily(
            "llmlb_replica_sync_peers", "Other replicas heard within the TTL",
            value=len(sync.peers),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "llmlb_replica_sync_remote_in_flight",
            "Other replicas' requests counted on this replica's nodes",
            value=sync.router.remote_in_flight_total,
        )
        yield GaugeMetricFamily(
            "llmlb_replica_sync_lag_seconds",
            "Send-to-apply delay of the last batch from a peer (clocks of two hosts)",
            value=c.last_lag_s,
        )
        for name, doc, value in (
            ("batches_sent", "Batches this replica sent", c.batches_sent),
            ("messages_sent", "Messages in the batches this replica sent", c.messages_sent),
            ("bytes_sent", "Bytes of the batches this replica sent", c.bytes_sent),
            ("batches_received", "Peers' batches applied", c.batches_received),
            ("bytes_received", "Bytes of the peers' batches applied", c.bytes_received),
            ("dropped_batches", "Batches lost while Redis was unreachable", lc.dropped_batches),
            ("gaps", "Peers' batches that never arrived (answered by a snapshot)", c.gaps),
            ("malformed_batches", "Batches that did not decode (skipped)", c.malformed),
            ("snapshots_applied", "Peers' whole in-flight sets applied", c.snapshots_applied),
            ("peers_expired", "Peers forgotten after the TTL", c.peers_expired),
            ("unknown_node", "Peers' decisions for nodes this replica does not know",
             c.unknown_node),
            ("reconnects", "Reconnections to Redis", lc.reconnects),
        ):  # fmt: skip
            yield CounterMetricFamily(f"llmlb_replica_sync_{name}", doc, value=value)


class _KvEventsCollector(Collector):
    """The KV-event streams' counters and each node's event state, read when scraped."""

    def __init__(self, router: Router, ingest: KvEventIngest) -> None:
        self._router = router
        self._ingest = ingest

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        state = GaugeMetricFamily(
            "llmlb_kv_events_state",
            "Where the node's prefix credit comes from: 0 routed prompts (no events), "
            "1 its engine's KV events, 2 events unconfirmed (stream broken)",
            labels=["node"],
        )
        engine_blocks = GaugeMetricFamily(
            "llmlb_kv_engine_blocks", "Engine blocks the node's KV events say it holds",
            labels=["node"],
        )  # fmt: skip
        for status in self._router.nodes():
            state.add_metric([status.id], KV_EVENTS_STATE_VALUE[status.kv_events_state])
            engine_blocks.add_metric([status.id], status.kv_engine_blocks)
        batches = CounterMetricFamily(
            "llmlb_kv_event_batches", "KV event batches applied", labels=["node"]
        )
        blocks = CounterMetricFamily(
            "llmlb_kv_event_blocks", "Blocks in applied KV events, by kind", labels=["node", "kind"]
        )
        errors = CounterMetricFamily(
            "llmlb_kv_event_errors",
            "KV event stream faults: malformed, gap, publisher_restart, publisher_dead, "
            "skipped_event, unknown_event, unknown_node, overflow",
            labels=["node", "kind"],
        )
        replays = CounterMetricFamily(
            "llmlb_kv_event_replays",
            "Replay requests and how they ended",
            labels=["node", "outcome"],
        )
        for node_id, stats in list(self._ingest.stats.items()):
            batches.add_metric([node_id], stats.batches)
            for family, counts in (
                (blocks, stats.blocks),
                (errors, stats.errors),
                (replays, stats.replays),
            ):
                for kind, value in list(counts.items()):
                    family.add_metric([node_id, kind], value)
        loop = CounterMetricFamily(
            "llmlb_kv_event_ingest_errors",
            "Unexpected errors of the KV event ingestion thread (it goes on; see the log)",
        )
        loop.add_metric([], self._ingest.loop_errors)
        return [state, engine_blocks, batches, blocks, errors, replays, loop]


class Telemetry:
    def __init__(self, router: Router, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.engine_hit_rates: dict[str, float] = {}
        r = self.registry
        self.route_decisions = Counter(
            "llmlb_route_decisions", "Routing decisions", ["policy", "reason"], registry=r
        )
        self.route_errors = Counter(
            "llmlb_route_errors",
            "Requests the router refused to route, by transport and why",
            ["transport", "error"],
            registry=r,
        )
        self.route_latency = Histogram(
            "llmlb_route_latency_seconds",
            "Time to decide a route (inside the service)",
            ["policy"],
            buckets=_ROUTE_LATENCY_BUCKETS,
            registry=r,
        )
        self.completions = Counter(
            "llmlb_completions", "Completed requests", ["policy", "outcome"], registry=r
        )
        self.ttft = Histogram(
            "llmlb_ttft_seconds", "Reported time to first token", ["policy"],
            buckets=_TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.request_timeouts = Counter(
            "request_timeout", "Requests completed as timeout or expired", ["node"], registry=r
        )
        self.breaker_transitions = Counter(
            "llmlb_breaker_transitions", "Breaker transitions", ["node", "to_state"], registry=r
        )
        self.config_reloads = Counter(
            "llmlb_config_reloads", "Config reload attempts", ["result"], registry=r
        )
        self.tokenizer_fallbacks = Counter(
            "llmlb_tokenizer_fallbacks",
            "Requests of a model with a tokenizer routed by text (its chat template refused)",
            ["model"],
            registry=r,
        )
        self.proxy_requests = Counter(
            "llmlb_proxy_requests",
            "Requests the HTTP proxy routed, by the name of the client's API key",
            ["api_key"],
            registry=r,
        )
        self.metric_samples = Counter(
            "llmlb_metric_samples", "Metric samples received from agents", ["node"], registry=r
        )
        self._router = router
        self.registry.register(_RouterCollector(router, self.engine_hit_rates))
        self._http: tuple[WSGIServer, threading.Thread] | None = None
        # Labelled children cached per label values: ``.labels()`` costs microseconds
        # per call on the hot path; a child is never removed, so the cache stays valid.
        self._route_children: dict[tuple[str, str], tuple[Histogram, Counter]] = {}
        self._completion_children: dict[tuple[str, str], Counter] = {}
        self._timeout_children: dict[str, Counter] = {}
        self._ttft_children: dict[str, Histogram] = {}

    def watch_kv_events(self, ingest: KvEventIngest) -> None:
        self.registry.register(_KvEventsCollector(self._router, ingest))

    def watch_replicas(self, sync: ReplicaSync, link: RedisReplicaLink) -> None:
        self.registry.register(_ReplicaSyncCollector(sync, link))

    def observe_route(self, policy: str, reason: str, seconds: float) -> None:
        children = self._route_children.get((policy, reason))
        if children is None:
            children = (
                self.route_latency.labels(policy),
                self.route_decisions.labels(policy, reason),
            )
            self._route_children[(policy, reason)] = children
        children[0].observe(seconds)
        children[1].inc()

    def count_route_error(self, transport: str, error: str) -> None:
        self.route_errors.labels(transport, error).inc()

    def observe_ttft(self, policy: str, seconds: float) -> None:
        child = self._ttft_children.get(policy)
        if child is None:
            child = self._ttft_children[policy] = self.ttft.labels(policy)
        child.observe(seconds)

    def observe_event(self, event: Event) -> None:
        if event.kind in (BREAKER_OPENED, BREAKER_HALF_OPENED, BREAKER_CLOSED):
            self.breaker_transitions.labels(event.node_id, event.to_state).inc()
        elif event.kind == CONFIG_RELOADED:
            self.config_reloads.labels("ok").inc()
        elif event.kind == CONFIG_REJECTED:
            self.config_reloads.labels("rejected").inc()

    def observe_completion(self, node_id: str, policy: str, outcome: str) -> None:
        child = self._completion_children.get((policy, outcome))
        if child is None:
            child = self.completions.labels(policy, outcome)
            self._completion_children[(policy, outcome)] = child
        child.inc()
        if outcome in ("timeout", "expired"):
            timeouts = self._timeout_children.get(node_id)
            if timeouts is None:
                timeouts = self._timeout_children[node_id] = self.request_timeouts.labels(node_id)
            timeouts.inc()

    def serve_http(self, host: str, port: int) -> int:
        """Starts ``/metrics`` on a daemon thread; returns the bound port."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = (server, thread)
        return int(server.server_port)

    def stop_http(self) -> None:
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._http = None
