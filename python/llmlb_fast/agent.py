"""``llmlb-agent``: the monitoring agent of one GPU node (R5).

Every ``--interval`` (default 100 ms) it samples NVML (GPU memory used/total, SM and
memory-bandwidth utilisation, PCIe TX/RX, summed or averaged over the node's GPUs),
merges the latest scrape of the inference engine's Prometheus endpoint (queue depth,
KV-cache usage and capacity, prefix-cache hit rate; vLLM and SGLang names), and
streams the samples to the router's ``ReportMetrics``. A broken stream is reopened
with capped exponential backoff. NVML cannot tell KV-cache memory from other memory
(engines pre-allocate), so KV use comes from the engine's metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("llmlb.agent")

BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0


class NvmlUnavailableError(RuntimeError):
    """NVML could not be initialised (no driver, no GPU)."""


def import_pynvml() -> ModuleType:
    """The NVML binding (package ``nvidia-ml-py``); tests replace it in sys.modules."""
    return importlib.import_module("pynvml")


class NvmlSampler:
    """Reads the node's GPUs through a pynvml-compatible module."""

    def __init__(self, nvml: ModuleType, gpu_indices: Sequence[int] | None = None) -> None:
        self._nvml = nvml
        try:
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
            indices = list(gpu_indices) if gpu_indices is not None else list(range(count))
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
        except nvml.NVMLError as error:
            raise NvmlUnavailableError(f"NVML unavailable: {error}") from None
        if not self._handles:
            raise NvmlUnavailableError("NVML found no GPU on this machine")

    @property
    def gpu_count(self) -> int:
        return len(self._handles)

    def sample(self) -> dict[str, float]:
        nvml = self._nvml
        used = total = sm = bandwidth = tx = rx = 0.0
        for handle in self._handles:
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            used += memory.used
            total += memory.total
            rates = nvml.nvmlDeviceGetUtilizationRates(handle)
            sm += rates.gpu / 100.0
            bandwidth += rates.memory / 100.0
            # NVML reports PCIe throughput in KB/s.
            tx += nvml.nvmlDeviceGetPcieThroughput(handle, nvml.NVML_PCIE_UTIL_TX_BYTES) * 1024.0
            rx += nvml.nvmlDeviceGetPcieThroughput(handle, nvml.NVML_PCIE_UTIL_RX_BYTES) * 1024.0
        n = len(self._handles)
        return {
            "gpu_memory_used_bytes": used,
            "gpu_memory_total_bytes": total,
            "sm_utilization": min(sm / n, 1.0),
            "mem_bandwidth_utilization": min(bandwidth / n, 1.0),
            "pcie_tx_bytes_per_s": tx,
            "pcie_rx_bytes_per_s": rx,
        }

    def shutdown(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()


# Engine metric name -> NodeMetrics field. Values of one name are summed over labels.
ENGINE_GAUGES = {
    "vllm:num_requests_running": "num_requests_running",
    "vllm:num_requests_waiting": "num_requests_waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:gpu_cache_usage_perc": "kv_cache_usage",  # vLLM before v0.10
    "sglang:num_running_reqs": "num_requests_running",
    "sglang:num_queue_reqs": "num_requests_waiting",
    "sglang:token_usage": "kv_cache_usage",
    "sglang:max_total_num_tokens": "kv_capacity_tokens",
    "vllm:num_preemptions_total": "num_preemptions_total",
}
_PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
_PREFIX_HITS = "vllm:prefix_cache_hits_total"
_SGLANG_HIT_RATE = "sglang:cache_hit_rate"


@dataclass
class EngineScrape:
    """What one scrape of the engine's /metrics said."""

    metrics: dict[str, float] = field(default_factory=dict)
    prefix_queries: float | None = None
    prefix_hits: float | None = None
    hit_rate: float | None = None


def parse_engine_metrics(text: str) -> EngineScrape:
    scrape = EngineScrape()
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, value = sample.name, float(sample.value)
            if name in ENGINE_GAUGES:
                target = ENGINE_GAUGES[name]
                sums[target] = sums.get(target, 0.0) + value
            elif name == _PREFIX_QUERIES:
                scrape.prefix_queries = (scrape.prefix_queries or 0.0) + value
            elif name == _PREFIX_HITS:
                scrape.prefix_hits = (scrape.prefix_hits or 0.0) + value
            elif name == _SGLANG_HIT_RATE:
                scrape.hit_rate = value
            elif name == "vllm:cache_config_info":
                blocks = sample.labels.get("num_gpu_blocks")
                block_size = sample.labels.get("block_size")
                if blocks and block_size and blocks.isdigit() and block_size.isdigit():
                    sums["kv_capacity_tokens"] = float(int(blocks) * int(block_size))
    if "kv_cache_usage" in sums:
        sums["kv_cache_usage"] = min(max(sums["kv_cache_usage"], 0.0), 1.0)
    if scrape.prefix_hits is not None and scrape.prefix_queries is not None:
        sums["prefix_cache_hits_total"] = scrape.prefix_hits
        sums["prefix_cache_queries_total"] = scrape.prefix_queries
    scrape.metrics = sums
    return scrape


class EngineScraper:
    """Scrapes the engine; the prefix hit rate is computed between two scrapes."""

    def __init__(self, url: str, timeout_s: float = 1.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._previous: EngineScrape | None = None

    def _fetch(self) -> str:
        with urllib.request.urlopen(self.url, timeout=self.timeout_s) as response:
            body: bytes = response.read()
        return body.decode("utf-8", errors="replace")

    async def scrape(self) -> EngineScrape:
        scrape = parse_engine_metrics(await asyncio.to_thread(self._fetch))
        previous, self._previous = self._previous, scrape
        if scrape.hit_rate is None and previous is not None:
            scrape.hit_rate = _interval_hit_rate(previous, scrape)
        return scrape


def _interval_hit_rate(before: EngineScrape, after: EngineScrape) -> float | None:
    if None in (before.prefix_queries, before.prefix_hits, after.prefix_queries, after.prefix_hits):
        return None
    assert before.prefix_queries is not None and after.prefix_queries is not None
    assert before.prefix_hits is not None and after.prefix_hits is not None
    queries = after.prefix_queries - before.prefix_queries
    hits = after.prefix_hits - before.prefix_hits
    if queries <= 0 or hits < 0:
        return None
    return min(hits / queries, 1.0)


class MetricsReporter:
    """Streams ``sample()`` every ``interval_s`` to the ``ReportMetrics`` of every router
    in ``routers`` (active-active replicas each need every node's metrics), one stream
    per router, each reopened with capped exponential backoff on its own. Subclasses
    say what to sample (the NVML agent below; simulated nodes in
    :mod:`llmlb_fast.sim.cluster`)."""

    def __init__(
        self,
        node_id: str,
        routers: str | Sequence[str],
        *,
        interval_s: float = 0.1,
        token: str | None = None,
        root_certificates: bytes | None = None,
    ) -> None:
        self.node_id = node_id
        self.routers = [routers] if isinstance(routers, str) else list(dict.fromkeys(routers))
        if not self.routers:
            raise ValueError("the reporter needs at least one router")
        self.interval_s = interval_s
        self.token = token
        self.root_certificates = root_certificates
        self.sent_to = dict.fromkeys(self.routers, 0)
        self.connects_to = dict.fromkeys(self.routers, 0)
        # Per router, only the newest sample waits while its stream is down.
        self._latest: dict[str, asyncio.Queue[Any]] = {
            router: asyncio.Queue(maxsize=1) for router in self.routers
        }

    @property
    def router(self) -> str:
        return self.routers[0]

    @property
    def sent(self) -> int:
        return sum(self.sent_to.values())

    @property
    def connects(self) -> int:
        return sum(self.connects_to.values())

    async def sample(self) -> dict[str, Any]:
        """One NodeMetrics sample as field -> value."""
        raise NotImplementedError

    async def _sample_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            fields = await self.sample()
            for latest in self._latest.values():
                if latest.full():
                    latest.get_nowait()
                latest.put_nowait(fields)
            await asyncio.sleep(max(0.0, self.interval_s - (loop.time() - started)))

    async def _samples(self, pb: Any, router: str) -> AsyncIterator[Any]:
        latest = self._latest[router]
        while True:
            fields = await latest.get()
            self.sent_to[router] += 1
            yield pb.NodeMetrics(**fields)

    async def _stream_once(self, router: str) -> None:
        import grpc

        from grpc_server.llmlb.v1 import router_pb2 as pb
        from grpc_server.llmlb.v1 import router_pb2_grpc as pb_grpc

        metadata = (("authorization", f"Bearer {self.token}"),) if self.token else ()
        if self.root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(self.root_certificates)
            channel = grpc.aio.secure_channel(router, credentials)
        else:
            channel = grpc.aio.insecure_channel(router)
        async with channel:
            self.connects_to[router] += 1
            stub = pb_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
            await stub.ReportMetrics(self._samples(pb, router), metadata=metadata)

    async def run(self, max_connects: int | None = None) -> None:
        """Streams until cancelled (or, for tests, until each router's stream was
        opened ``max_connects`` times)."""
        sampler = asyncio.create_task(self._sample_forever())
        try:
            await asyncio.gather(*(self._stream_to(r, max_connects) for r in self.routers))
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler

    async def _stream_to(self, router: str, max_connects: int | None) -> None:
        import grpc

        backoff = BACKOFF_INITIAL_S
        broken = False  # logged once per outage, not once per retry
        while max_connects is None or self.connects_to[router] < max_connects:
            sent_before = self.sent_to[router]
            try:
                await self._stream_once(router)
            except grpc.aio.AioRpcError as error:
                if error.code() in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.INVALID_ARGUMENT,
                ):
                    log.error("router %s refused the metrics: %s", router, error.details())
                elif not broken or self.sent_to[router] > sent_before + 1:
                    log.warning("metrics stream to %s broke: %s; retrying", router, error.code())
                broken = True
            if self.sent_to[router] > sent_before + 1:
                backoff = BACKOFF_INITIAL_S
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)


class Agent(MetricsReporter):
    def __init__(
        self,
        node_id: str,
        routers: str | Sequence[str],
        *,
        interval_s: float = 0.1,
        nvml: NvmlSampler | None = None,
        scraper: EngineScraper | None = None,
        token: str | None = None,
        root_certificates: bytes | None = None,
    ) -> None:
        if nvml is None and scraper is None:
            raise ValueError("the agent needs NVML or an engine metrics URL to sample")
        super().__init__(
            node_id,
            routers,
            interval_s=interval_s,
            token=token,
            root_certificates=root_certificates,
        )
        self.nvml = nvml
        self.scraper = scraper

    async def sample(self) -> dict[str, Any]:
        """One NodeMetrics sample as field -> value."""
        fields: dict[str, Any] = {"node_id": self.node_id}
        if self.nvml is not None:
            fields.update(self.nvml.sample())
        if self.scraper is not None:
            try:
                scrape = await self.scraper.scrape()
            except (OSError, ValueError) as error:
                log.warning("engine scrape %s failed: %s", self.scraper.url, error)
            else:
                fields.update(scrape.metrics)
                if scrape.hit_rate is not None:
                    fields["prefix_cache_hit_rate"] = scrape.hit_rate
        return fields


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmlb-agent",
        description="Stream this GPU node's NVML and engine metrics to an llmlb router.",
    )
    parser.add_argument(
        "--router",
        required=True,
        action="append",
        metavar="HOST:PORT",
        help="a router to report to; repeat it for every replica of an active-active router",
    )
    parser.add_argument("--node-id", required=True, help="the node's id in the router")
    parser.add_argument(
        "--interval", type=float, default=0.1, help="seconds between samples (default 0.1)"
    )
    parser.add_argument(
        "--scrape", metavar="URL", help="engine Prometheus endpoint (vLLM or SGLang /metrics)"
    )
    parser.add_argument("--no-nvml", action="store_true", help="sample only the --scrape source")
    parser.add_argument("--gpus", metavar="0,1,...", help="GPU indices of this node (default: all)")
    parser.add_argument(
        "--token-env", default="LLMLB_TOKEN", help="env var holding the bearer token"
    )
    parser.add_argument("--tls-ca", metavar="FILE", help="CA certificate: connect with TLS")
    parser.add_argument("--log-level", default="INFO")
    return parser


def _nvml_sampler(gpus: str | None) -> NvmlSampler:
    indices = [int(i) for i in gpus.split(",")] if gpus else None
    try:
        nvml = import_pynvml()
    except ImportError as error:
        raise NvmlUnavailableError(
            f"cannot import pynvml (install nvidia-ml-py): {error}"
        ) from None
    return NvmlSampler(nvml, indices)


def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    if args.no_nvml and not args.scrape:
        print("llmlb-agent: --no-nvml needs --scrape URL (nothing to sample)", file=sys.stderr)
        return 2
    nvml = None
    if not args.no_nvml:
        try:
            nvml = _nvml_sampler(args.gpus)
        except NvmlUnavailableError as error:
            print(
                f"llmlb-agent: {error}. Run it on a GPU node with the NVIDIA driver, or "
                "pass --no-nvml --scrape URL to report only the engine's metrics.",
                file=sys.stderr,
            )
            return 2
    scraper = EngineScraper(args.scrape) if args.scrape else None
    ca = None
    if args.tls_ca:
        with open(args.tls_ca, "rb") as f:
            ca = f.read()
    agent = Agent(
        args.node_id,
        args.router,
        interval_s=args.interval,
        nvml=nvml,
        scraper=scraper,
        token=os.environ.get(args.token_env),
        root_certificates=ca,
    )
    try:
        asyncio.run(agent.run())
    except KeyboardInterrupt:
        pass
    finally:
        if nvml is not None:
            nvml.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
