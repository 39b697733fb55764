"""The monitoring agent: NVML through a fake pynvml module, engine scraping from a real
HTTP server on loopback, and streaming into a real router."""

from __future__ import annotations

import asyncio
import http.server
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

import pytest
from grpc_harness import running_server
from llmlb_fast import agent as agent_module
from llmlb_fast._core import METRIC_FIELDS
from llmlb_fast.agent import (
    Agent,
    EngineScraper,
    NvmlSampler,
    build_parser,
    parse_engine_metrics,
)

from grpc_server.llmlb.v1 import router_pb2 as pb

GIB = 1024**3


class FakeNvmlError(Exception):
    pass


def fake_pynvml(gpus: int = 2, fail_init: bool = False) -> types.ModuleType:
    """A stand-in with pynvml's names, for machines without a GPU."""
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = FakeNvmlError  # type: ignore[attr-defined]
    nvml.NVML_PCIE_UTIL_TX_BYTES = 0  # type: ignore[attr-defined]
    nvml.NVML_PCIE_UTIL_RX_BYTES = 1  # type: ignore[attr-defined]
    nvml.calls = []  # type: ignore[attr-defined]

    def init() -> None:
        if fail_init:
            raise FakeNvmlError("NVML Shared Library Not Found")
        nvml.calls.append("init")  # type: ignore[attr-defined]

    nvml.nvmlInit = init  # type: ignore[attr-defined]
    nvml.nvmlShutdown = lambda: nvml.calls.append("shutdown")  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCount = lambda: gpus  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = lambda i: f"gpu{i}"  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(  # type: ignore[attr-defined]
        used=(60 if h == "gpu0" else 20) * GIB, total=80 * GIB
    )
    nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(  # type: ignore[attr-defined]
        gpu=90 if h == "gpu0" else 50, memory=70 if h == "gpu0" else 30
    )
    nvml.nvmlDeviceGetPcieThroughput = lambda h, c: 1000 if c == 0 else 2000  # type: ignore[attr-defined]
    return nvml


def test_nvml_sampler_aggregates_the_node_gpus() -> None:
    nvml = fake_pynvml()
    sampler = NvmlSampler(nvml)
    assert sampler.gpu_count == 2
    sample = sampler.sample()
    assert sample["gpu_memory_used_bytes"] == 80 * GIB
    assert sample["gpu_memory_total_bytes"] == 160 * GIB
    assert sample["sm_utilization"] == pytest.approx(0.7)
    assert sample["mem_bandwidth_utilization"] == pytest.approx(0.5)
    assert sample["pcie_tx_bytes_per_s"] == 2 * 1000 * 1024
    assert sample["pcie_rx_bytes_per_s"] == 2 * 2000 * 1024
    assert NvmlSampler(nvml, gpu_indices=[1]).sample()["gpu_memory_used_bytes"] == 20 * GIB
    sampler.shutdown()
    assert nvml.calls[-1] == "shutdown"  # type: ignore[attr-defined]


def test_every_field_the_agent_sends_is_in_the_cores_metric_schema() -> None:
    sent = set(NvmlSampler(fake_pynvml()).sample()) | set(agent_module.ENGINE_GAUGES.values())
    assert sent <= set(METRIC_FIELDS)
    assert "kv_cache_usage" in sent and "gpu_memory_used_bytes" in sent


def test_without_nvml_the_agent_exits_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(fail_init=True))
    assert agent_module.main(["--router", "127.0.0.1:1", "--node-id", "a"]) == 2
    err = capsys.readouterr().err
    assert "NVML unavailable" in err and "--no-nvml --scrape" in err
    assert agent_module.main(["--router", "127.0.0.1:1", "--node-id", "a", "--no-nvml"]) == 2
    assert "needs --scrape" in capsys.readouterr().err


VLLM_METRICS = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 7.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="m"} 0.42
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{model_name="m"} %(queries)s
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{model_name="m"} %(hits)s
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{model_name="m"} 2.0
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",num_gpu_blocks="25000"} 1.0
"""

SGLANG_METRICS = """\
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="m"} 4.0
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="m"} 1.0
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="m"} 0.25
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{model_name="m"} 0.6
# TYPE sglang:max_total_num_tokens gauge
sglang:max_total_num_tokens{model_name="m"} 300000.0
"""


def test_parse_engine_metrics() -> None:
    vllm = parse_engine_metrics(VLLM_METRICS % {"queries": 100, "hits": 40})
    assert vllm.metrics == {
        "num_requests_running": 3.0,
        "num_requests_waiting": 7.0,
        "kv_cache_usage": 0.42,
        "kv_capacity_tokens": 400_000.0,
        "prefix_cache_hits_total": 40.0,
        "prefix_cache_queries_total": 100.0,
        "num_preemptions_total": 2.0,
    }
    assert (vllm.prefix_queries, vllm.prefix_hits) == (100.0, 40.0)
    sglang = parse_engine_metrics(SGLANG_METRICS)
    assert sglang.metrics["num_requests_running"] == 4.0
    assert sglang.metrics["kv_cache_usage"] == 0.25
    assert sglang.metrics["kv_capacity_tokens"] == 300_000.0
    assert sglang.hit_rate == 0.6


@pytest.fixture
def engine() -> Iterator[dict[str, Any]]:
    """A real HTTP server on loopback serving vLLM-style /metrics."""
    state: dict[str, Any] = {"queries": 100, "hits": 40}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = (VLLM_METRICS % state).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_port}/metrics"
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


def test_scraper_computes_the_interval_hit_rate(engine: dict[str, Any]) -> None:
    async def scenario() -> None:
        scraper = EngineScraper(engine["url"])
        first = await scraper.scrape()
        assert first.hit_rate is None  # one scrape: no interval yet
        engine.update(queries=300, hits=190)
        second = await scraper.scrape()
        assert second.hit_rate == pytest.approx(150 / 200)

    asyncio.run(scenario())


# ListNodes is an admin call: with a token set, it needs it too.
ADMIN = (("authorization", "Bearer tok"),)


def test_agent_streams_nvml_and_engine_metrics_to_the_router(engine: dict[str, Any]) -> None:
    async def scenario() -> None:
        async with running_server({"server": {"auth_token": "tok"}}) as s:
            agent = Agent(
                "a",
                s.target,
                interval_s=0.02,
                nvml=NvmlSampler(fake_pynvml()),
                scraper=EngineScraper(engine["url"]),
                token="tok",
            )
            task = asyncio.create_task(agent.run())
            try:
                for _ in range(200):
                    nodes = {
                        n.node.id: n
                        for n in (
                            await s.stub.ListNodes(pb.ListNodesRequest(), metadata=ADMIN)
                        ).nodes
                    }
                    if nodes["a"].metrics.get("num_requests_waiting") == 7.0:
                        break
                    await asyncio.sleep(0.02)
                metrics = nodes["a"].metrics
                assert metrics["sm_utilization"] == pytest.approx(0.7)
                assert metrics["gpu_memory_total_bytes"] == 160 * GIB
                assert metrics["kv_cache_usage"] == pytest.approx(0.42)
                assert nodes["a"].metrics_fresh
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

    asyncio.run(scenario())


def test_agent_reconnects_with_backoff_after_refusal() -> None:
    async def scenario() -> None:
        async with running_server({"server": {"auth_token": "tok"}}) as s:
            agent = Agent("a", s.target, interval_s=0.01, nvml=NvmlSampler(fake_pynvml()),
                          token="wrong")  # fmt: skip
            await asyncio.wait_for(agent.run(max_connects=3), timeout=10)
            assert agent.connects == 3
            listed = await s.stub.ListNodes(pb.ListNodesRequest(), metadata=ADMIN)
            nodes = {n.node.id: n for n in listed.nodes}
            assert not nodes["a"].metrics  # every stream was refused

    asyncio.run(scenario())


def test_agent_reports_to_every_replica_and_one_down_does_not_stop_the_others() -> None:
    async def scenario() -> None:
        async with running_server() as first, running_server() as second:
            dead = "127.0.0.1:1"  # nothing listens there
            agent = Agent(
                "a", [first.target, dead, second.target], interval_s=0.02,
                nvml=NvmlSampler(fake_pynvml()),
            )  # fmt: skip
            task = asyncio.create_task(agent.run())
            try:
                for _ in range(200):
                    fresh = [
                        {n.id: n.metrics_fresh for n in s.server.service.nodes()}["a"]
                        for s in (first, second)
                    ]
                    if all(fresh):
                        break
                    await asyncio.sleep(0.02)
                assert all(fresh)
                assert agent.sent_to[first.target] > 0 and agent.sent_to[second.target] > 0
                assert agent.connects_to[dead] >= 1  # tried, refused, retried on its own
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

    asyncio.run(scenario())


def test_agent_cli_takes_several_routers() -> None:
    args = build_parser().parse_args(
        ["--router", "r1:50051", "--router", "r2:50051", "--node-id", "a"]
    )
    assert args.router == ["r1:50051", "r2:50051"]
