"""``llmlb sim-cluster``: a cluster of simulated vLLM nodes in one process.

Each node is a :class:`~llmlb_fast.sim.node_server.SimNode` (a real HTTP server on its own
port). With ``--router HOST:PORT`` every node is registered with the router
(``RegisterNode``) and streams its simulated GPU figures (memory split weights/KV, SM
and memory-bandwidth utilisation, PCIe, queue, KV usage and capacity) over the same
``ReportMetrics`` client as the NVML agent (:class:`llmlb_fast.agent.MetricsReporter`).
An unreachable router is retried with capped exponential backoff; SIGINT/SIGTERM
deregisters the nodes and stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from llmlb_fast.agent import BACKOFF_INITIAL_S, BACKOFF_MAX_S, MetricsReporter
from llmlb_fast.sim.node_server import SimNode
from llmlb_fast.sim.profiles import PROFILES, HardwareProfile, load_profiles, parse_cluster
from llmlb_fast.tokenizer import ModelTokenizer

HELP = "run simulated vLLM nodes (HTTP, OpenAI API) that register with and report to a router"

DEFAULT_MODEL = "llama-3-70b"


class ClusterError(RuntimeError):
    """The router refused the cluster (bad token, bad node spec)."""


def node_spec(node_id: str, url: str, profile: HardwareProfile, model: str) -> dict[str, Any]:
    """What an operator would declare about a node of this profile (config ``nodes[]``)."""
    return {
        "id": node_id,
        "address": url,
        "peak_tflops": profile.gpus * profile.gpu_tflops,
        "gpu_memory_bytes": int(profile.total_memory_bytes),
        "prefill_tokens_per_s": profile.prefill_tokens_per_s,
        "kv_capacity_tokens": profile.kv_capacity_tokens,
        "labels": {"profile": profile.name},
        "models": [model],
    }


class SimNodeReporter(MetricsReporter):
    """Forwards each report of a simulated node to the router, as an agent would."""

    def __init__(self, node_id: str, routers: Sequence[str], token: str | None) -> None:
        # interval 0: the node paces the samples (one per simulated report interval).
        super().__init__(node_id, routers, interval_s=0.0, token=token)
        self._figures: dict[str, float] | None = None
        self._fresh = asyncio.Event()

    def on_metrics(self, node_id: str, figures: dict[str, float]) -> None:
        self._figures = figures
        self._fresh.set()

    async def sample(self) -> dict[str, Any]:
        await self._fresh.wait()
        self._fresh.clear()
        assert self._figures is not None
        return {"node_id": self.node_id, **self._figures}


class SimCluster:
    """``await start()`` the nodes, optionally ``await connect(router)``, ``await stop()``."""

    def __init__(
        self,
        profiles: Sequence[HardwareProfile],
        *,
        dilation: float = 10.0,
        report_interval_s: float = 1.0,
        chunk_interval_s: float = 0.02,
        model: str = DEFAULT_MODEL,
        node_prefix: str = "node-",
        kv_events: bool = False,
        tokenizer: ModelTokenizer | None = None,
    ) -> None:
        if not profiles:
            raise ValueError("the cluster needs at least one node")
        self.profiles = list(profiles)
        self.model = model
        self.nodes = [
            SimNode(
                profile,
                node_id=f"{node_prefix}{i}",
                model=model,
                dilation=dilation,
                report_interval_s=report_interval_s,
                chunk_interval_s=chunk_interval_s,
                kv_events=kv_events,
                tokenizer=tokenizer,
            )
            for i, profile in enumerate(profiles)
        ]
        self.routers: list[str] = []
        self.token: str | None = None
        self.registered: list[tuple[str, str]] = []  # (router, node id)
        self._reporters: list[asyncio.Task[None]] = []

    def specs(self) -> list[dict[str, Any]]:
        return [
            node_spec(n.node_id, n.url, p, self.model)
            for n, p in zip(self.nodes, self.profiles, strict=True)
        ]

    def kv_event_sources(self) -> dict[str, dict[str, Any]]:
        """Each publishing node's ``kv_events`` config (once started)."""
        sources = {}
        for node in self.nodes:
            publisher = node.kv_publisher
            if publisher is not None:
                sources[node.node_id] = {
                    "endpoint": publisher.endpoint,
                    "replay_endpoint": publisher.replay_endpoint,
                    "topic": publisher.topic.decode(),
                    "model": self.model,
                }
        return sources

    async def start(self, host: str = "127.0.0.1", base_port: int = 0) -> None:
        for i, node in enumerate(self.nodes):
            await node.start(host, base_port + i if base_port else 0)

    async def connect(
        self, routers: str | Sequence[str], *, token: str | None = None, register: bool
    ) -> None:
        """Registers the nodes with every router (when ``register``; retried until it
        answers), then streams every node's metrics to every router (the replicas of an
        active-active router each need them)."""
        self.routers = [routers] if isinstance(routers, str) else list(routers)
        self.token = token
        if register:
            for router in self.routers:
                await self._register_all(router)
        for node in self.nodes:
            reporter = SimNodeReporter(node.node_id, self.routers, token)
            node.on_metrics = reporter.on_metrics
            self._reporters.append(asyncio.create_task(reporter.run()))

    async def disconnect(self) -> None:
        """Stops the metrics streams (the nodes keep serving)."""
        for task in self._reporters:
            task.cancel()
        for task in self._reporters:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._reporters.clear()
        for node in self.nodes:
            node.on_metrics = None

    async def stop(self) -> None:
        await self.disconnect()
        if self.registered:
            await self._deregister_all()
        for node in self.nodes:
            await node.stop()

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    async def _register_all(self, router: str) -> None:
        import grpc

        from grpc_server.llmlb.v1 import router_pb2 as pb
        from grpc_server.llmlb.v1 import router_pb2_grpc as pb_grpc

        backoff = BACKOFF_INITIAL_S
        async with grpc.aio.insecure_channel(router) as channel:
            stub = pb_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
            for node, spec in zip(self.nodes, self.specs(), strict=True):
                publisher = node.kv_publisher
                kv_events = None
                if publisher is not None:
                    kv_events = pb.KvEventsSource(
                        endpoint=publisher.endpoint,
                        topic=publisher.topic.decode(),
                        replay_endpoint=publisher.replay_endpoint,
                        model=self.model,
                    )
                while True:
                    try:
                        await stub.RegisterNode(
                            pb.RegisterNodeRequest(node=pb.NodeSpec(**spec), kv_events=kv_events),
                            metadata=self._metadata(),
                            timeout=5.0,
                        )
                        break
                    except grpc.aio.AioRpcError as error:
                        if error.code() not in (
                            grpc.StatusCode.UNAVAILABLE,
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                        ):
                            raise ClusterError(
                                f"router {router} refused node {spec['id']}: "
                                f"{error.code().name}: {error.details()}"
                            ) from None
                        print(
                            f"llmlb sim-cluster: router {router} unreachable "
                            f"({error.code().name}); retrying in {backoff:.1f} s",
                            file=sys.stderr,
                            flush=True,
                        )
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, BACKOFF_MAX_S)
                self.registered.append((router, spec["id"]))

    async def _deregister_all(self) -> None:
        import grpc

        from grpc_server.llmlb.v1 import router_pb2 as pb
        from grpc_server.llmlb.v1 import router_pb2_grpc as pb_grpc

        for router in dict.fromkeys(r for r, _ in self.registered):
            async with grpc.aio.insecure_channel(router) as channel:
                stub = pb_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
                for entry in [e for e in self.registered if e[0] == router]:
                    try:
                        await stub.DeregisterNode(
                            pb.DeregisterNodeRequest(node_id=entry[1]),
                            metadata=self._metadata(),
                            timeout=2.0,
                        )
                    except grpc.aio.AioRpcError as error:
                        if error.code() is not grpc.StatusCode.NOT_FOUND:
                            print(
                                f"llmlb sim-cluster: could not deregister {entry[1]} from "
                                f"{router}: {error.code().name}: {error.details()}",
                                file=sys.stderr,
                            )
                            continue
                    self.registered.remove(entry)


def cluster_profiles(spec: str, profiles_file: str | None) -> list[HardwareProfile]:
    """``h100x4:2,a100x4:1`` -> the profiles of the nodes, in order."""
    known = dict(PROFILES)
    if profiles_file:
        known.update(load_profiles(profiles_file))
    return [known[name] for name in parse_cluster(spec, known)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster",
        default="h100x4:2",
        help=f"nodes as PROFILE:COUNT,... (built in: {', '.join(PROFILES)}; default %(default)s)",
    )
    parser.add_argument("--profiles", metavar="FILE", help="JSON/YAML file declaring more profiles")
    parser.add_argument(
        "--dilation", type=float, default=10.0, help="simulated seconds per wall second"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address the nodes listen on")
    parser.add_argument(
        "--base-port", type=int, default=0, help="first node's port, then +1 each (0: ephemeral)"
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name the nodes serve")
    parser.add_argument("--node-prefix", default="sim-", help="node ids are PREFIX0, PREFIX1, ...")
    parser.add_argument(
        "--report-interval", type=float, default=1.0, help="metrics report interval (simulated s)"
    )
    parser.add_argument(
        "--chunk-interval",
        type=float,
        default=0.02,
        help="wall seconds between SSE chunks of a stream (coarser = less CPU)",
    )
    parser.add_argument(
        "--router",
        action="append",
        metavar="HOST:PORT",
        help="register with this router and report metrics to it (repeat it for every "
        "replica of an active-active router)",
    )
    parser.add_argument(
        "--kv-events",
        action="store_true",
        help="publish each node's KV-cache events over ZMQ as vLLM does (registered with "
        "the router, which then follows them)",
    )
    parser.add_argument(
        "--token", help="bearer token for the router's admin calls (default: $LLMLB_TOKEN)"
    )


async def serve_cluster(args: argparse.Namespace, profiles: list[HardwareProfile]) -> int:
    cluster = SimCluster(
        profiles,
        dilation=args.dilation,
        report_interval_s=args.report_interval,
        chunk_interval_s=args.chunk_interval,
        model=args.model,
        node_prefix=args.node_prefix,
        kv_events=args.kv_events,
    )
    await cluster.start(args.host, args.base_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    for node, profile in zip(cluster.nodes, profiles, strict=True):
        print(f"{node.node_id} ({profile.name}) {node.url}", flush=True)
    connecting: asyncio.Task[None] | None = None
    if args.router:
        token = args.token or os.environ.get("LLMLB_TOKEN")
        connecting = asyncio.create_task(cluster.connect(args.router, token=token, register=True))
        routers = ", ".join(args.router)
        connecting.add_done_callback(lambda task: _connected(task, routers, stop))
    await stop.wait()
    code = 0
    if connecting is not None:
        connecting.cancel()
        try:
            await connecting
        except asyncio.CancelledError:
            pass
        except ClusterError as error:
            print(f"llmlb sim-cluster: {error}", file=sys.stderr)
            code = 1
    await cluster.stop()
    print("llmlb sim-cluster: stopped", flush=True)
    return code


def _connected(task: asyncio.Task[None], router: str, stop: asyncio.Event) -> None:
    if task.cancelled():
        return
    if task.exception() is not None:
        stop.set()  # refused: nothing to run for
        return
    print(f"registered with {router}; streaming metrics", flush=True)


def run(args: argparse.Namespace) -> int:
    try:
        profiles = cluster_profiles(args.cluster, args.profiles)
        if args.dilation <= 0 or args.report_interval <= 0 or args.chunk_interval <= 0:
            raise ValueError("--dilation, --report-interval and --chunk-interval must be > 0")
    except (ValueError, OSError) as error:
        print(f"llmlb sim-cluster: {error}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve_cluster(args, profiles))
    except OSError as error:  # a port in use
        print(f"llmlb sim-cluster: {error}", file=sys.stderr)
        return 1
