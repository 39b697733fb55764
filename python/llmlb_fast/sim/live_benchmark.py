"""``llmlb bench --live``: the policies (and external routers) in front of real HTTP nodes.

For each policy: a fresh simulated cluster (:class:`~llmlb_fast.sim.cluster.SimCluster`,
in this process), a fresh ``llmlb serve`` subprocess with the HTTP proxy on and that
policy, the nodes in its config and their simulated GPU metrics arriving over
``ReportMetrics``, and the chat load (:mod:`llmlb_fast.sim.load_generator`) streamed through
the proxy. Then the same for each external router found (``sglang-router``,
``vllm-router``, ``--policy cache_aware``) in front of a fresh cluster. Everything
listens on 127.0.0.1 ephemeral ports; every subprocess is stopped at the end, on errors
and on Ctrl-C too.

Measured per run: TTFT at the client (wall time x dilation, simulated seconds),
completions, timeouts, KV-cache hits (the nodes' ``cached_tokens`` per request) and GPU
memory / KV use sampled from the nodes, summarised with the DES's
:func:`~llmlb_fast.sim.des.summarize` so both modes print the same table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlb_fast.sim.cluster import SimCluster
from llmlb_fast.sim.des import RequestRecord, RunResult, summarize
from llmlb_fast.sim.load_generator import WORDS, ChatLoad, LiveChatLoad
from llmlb_fast.sim.monitor import EngineMonitor, NodeSample
from llmlb_fast.sim.peer_routers import (
    EXTERNAL_ROUTERS,
    External,
    external_router,
    find_externals,
    llmlb_service,
    serve_config,
)
from llmlb_fast.sim.profiles import HardwareProfile
from llmlb_fast.sim.redis_server import RedisServer, find_redis_server
from llmlb_fast.sim.replica_sweep import parse_replicas
from llmlb_fast.sim.report import format_table, write_outputs
from llmlb_fast.sim.sim_tokenizer import BOS, write_model_files
from llmlb_fast.tokenizer import ModelTokenizer


@dataclass(frozen=True)
class LiveSettings:
    load: ChatLoad
    cluster: tuple[HardwareProfile, ...]
    dilation: float = 10.0
    chunk_interval_s: float = 0.25
    warmup_s: float = 60.0
    sample_interval_s: float = 5.0
    report_interval_s: float = 1.0
    # The nodes publish KV events and tokenize with a BPE trained here, which the
    # router's proxy then uses too (prompt sizes differ from the stand-in tokenizer's).
    kv_events: bool = False
    # With K > 1 replicas: SIGKILL the first replica at this simulated second, and
    # compare the KV hit rate of the ``kill_window_s`` before and after.
    kill_replica_at_s: float | None = None
    kill_window_s: float = 60.0

    def __post_init__(self) -> None:
        if self.dilation <= 0 or self.chunk_interval_s <= 0:
            raise ValueError("--dilation and --chunk-interval must be > 0")
        if not 0 <= self.warmup_s < self.load.duration_s:
            raise ValueError("--warmup must be >= 0 and less than --duration")
        kill = self.kill_replica_at_s
        if kill is not None and not 0 < kill < self.load.duration_s:
            raise ValueError("--kill-replica-at must be within the run (0, --duration)")


@dataclass
class LiveRun:
    """One target's result plus what only the live mode knows."""

    result: RunResult
    node_kv_hit_rate: float
    in_flight_after: int | None
    loop_lag_p95_ms: float
    unknown_node: int
    engine_ttft_mean_ms: float
    client_ttft_mean_ms: float
    replicas: int = 1
    retries: int = 0
    kill: dict[str, float] | None = None
    redis: dict[str, float] | None = None


# --- one run --------------------------------------------------------------------------


class NodeSampler:
    """Samples every node's engine (what vLLM and NVML would report) into NodeSamples,
    and measures this event loop's lag (how late the samples wake up)."""

    def __init__(self, cluster: SimCluster, load: LiveChatLoad, interval_s: float) -> None:
        self.cluster = cluster
        self.load = load
        self.interval_s = interval_s
        self.samples: list[NodeSample] = []
        self.lags_s: list[float] = []
        self._monitors = [EngineMonitor(node.engine, interval_s) for node in cluster.nodes]

    async def run(self, progress: Callable[[int], object] | None) -> None:
        """Samples until cancelled; ``progress`` gets the whole simulated seconds passed."""
        wall_interval = self.interval_s / self.load.dilation
        next_wake = time.monotonic() + wall_interval
        shown = 0
        while True:
            await asyncio.sleep(max(0.0, next_wake - time.monotonic()))
            self.lags_s.append(max(0.0, time.monotonic() - next_wake))
            next_wake += wall_interval
            now = self.load.sim_now()
            self.sample(now)
            if progress is not None:
                step = min(int(now), round(self.load.load.duration_s)) - shown
                progress(step)
                shown += step

    def sample(self, now: float) -> None:
        for i, (node, monitor) in enumerate(zip(self.cluster.nodes, self._monitors, strict=True)):
            self.samples.append(monitor.sample(monitor.read(node.virtual_now()), now, i))


@dataclass
class Target:
    """Who routes: an llmlb policy (``serve`` subprocess) or an external router."""

    label: str
    policy: str | None = None
    external: External | None = None
    replicas: int = 1
    runs: list[LiveRun] = field(default_factory=list)


async def in_flight_total(grpc_port: int, settle_s: float = 3.0) -> int:
    """Requests the router still holds once the abandoned streams have been released
    (a replica counts its peers' too)."""
    import grpc

    from grpc_server.llmlb.v1 import router_pb2 as pb
    from grpc_server.llmlb.v1 import router_pb2_grpc as pb_grpc

    deadline = time.monotonic() + settle_s
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
        while True:
            reply = await stub.ListNodes(pb.ListNodesRequest(), timeout=5.0)
            total: int = sum(node.in_flight for node in reply.nodes)
            if total == 0 or time.monotonic() > deadline:
                return total
            await asyncio.sleep(0.1)


async def run_target(settings: LiveSettings, target: Target, progress: bool) -> LiveRun:
    with tempfile.TemporaryDirectory(prefix="llmlb-live-") as tmp:
        workdir = Path(tmp)
        files = write_model_files(workdir, WORDS) if settings.kv_events else None
        cluster = SimCluster(
            settings.cluster,
            dilation=settings.dilation,
            report_interval_s=settings.report_interval_s,
            chunk_interval_s=settings.chunk_interval_s,
            model=settings.load.model,
            kv_events=settings.kv_events,
            tokenizer=ModelTokenizer.from_files(*files, bos_token=BOS) if files else None,
        )
        await cluster.start()
        try:
            return await _run_on(settings, target, cluster, workdir, files, progress)
        finally:
            await cluster.stop()


async def _run_on(
    settings: LiveSettings,
    target: Target,
    cluster: SimCluster,
    workdir: Path,
    tokenizer_files: tuple[Path, Path] | None,
    progress: bool,
) -> LiveRun:
    if target.external is not None:
        urls = [node.url for node in cluster.nodes]
        async with external_router(target.external, urls, workdir) as url:
            return await measure(settings, target, cluster, [url], [], progress)
    assert target.policy is not None
    config = serve_config(target.policy, cluster.specs())
    if tokenizer_files is not None:
        add_kv_events(config, cluster, settings.load.model, tokenizer_files)
    if target.replicas > 1:
        return await _run_replicas(settings, target, cluster, workdir, config, progress)
    async with llmlb_service(config, workdir) as ports:
        await cluster.connect(f"127.0.0.1:{ports['grpc']}", register=False)
        url = f"http://127.0.0.1:{ports['proxy']}"
        try:
            return await measure(settings, target, cluster, [url], [ports["grpc"]], progress)
        finally:
            await cluster.disconnect()


async def _run_replicas(
    settings: LiveSettings,
    target: Target,
    cluster: SimCluster,
    workdir: Path,
    config: dict[str, Any],
    progress: bool,
) -> LiveRun:
    """K ``llmlb serve`` replicas sharing a real redis-server; every node reports to
    every replica; the load goes to a random replica per request."""
    binary = find_redis_server()
    if binary is None:
        raise RuntimeError("--replicas needs redis-server on PATH (apt install redis-server)")
    redis = RedisServer(binary, workdir)
    await asyncio.to_thread(redis.start)
    processes: list[asyncio.subprocess.Process] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            ports = []
            for i in range(target.replicas):
                replica = {**config, "replicas": {"redis_url": redis.url, "name": f"replica-{i}"}}
                service = llmlb_service(replica, workdir, f"replica-{i}", processes)
                ports.append(await stack.enter_async_context(service))
            await cluster.connect([f"127.0.0.1:{p['grpc']}" for p in ports], register=False)
            urls = [f"http://127.0.0.1:{p['proxy']}" for p in ports]
            try:
                run = await measure(
                    settings, target, cluster, urls, [p["grpc"] for p in ports], progress,
                    processes,
                )  # fmt: skip
            finally:
                await cluster.disconnect()
        run.redis = redis_traffic(await asyncio.to_thread(redis.info, "all"), run)
        return run
    finally:
        await asyncio.to_thread(redis.stop)


def redis_traffic(info: dict[str, object], run: LiveRun) -> dict[str, float]:
    """What the sync cost Redis, per request the load sent."""
    requests = max(1, len(run.result.requests))
    xadd = info.get("cmdstat_xadd")
    calls = float(xadd["calls"]) if isinstance(xadd, dict) else math.nan
    return {
        "bytes_in_per_request": float(str(info.get("total_net_input_bytes", "nan"))) / requests,
        "bytes_out_per_request": float(str(info.get("total_net_output_bytes", "nan"))) / requests,
        "xadd_per_request": calls / requests,
    }


def add_kv_events(
    config: dict[str, Any], cluster: SimCluster, model: str, files: tuple[Path, Path]
) -> None:
    """The nodes' event streams and their tokenizer, in ``llmlb serve``'s config."""
    sources = cluster.kv_event_sources()
    for node in config["nodes"]:
        node["kv_events"] = sources[node["id"]]
    tokenizer, template = files
    config["tokenizers"] = {
        model: {"tokenizer": str(tokenizer), "chat_template": str(template), "bos_token": BOS}
    }


async def measure(
    settings: LiveSettings,
    target: Target,
    cluster: SimCluster,
    urls: list[str],
    grpc_ports: list[int],
    progress: bool,
    processes: list[asyncio.subprocess.Process] | None = None,
) -> LiveRun:
    node_index = {node.node_id: i for i, node in enumerate(cluster.nodes)}
    load = LiveChatLoad(urls, settings.load, settings.dilation, node_index)
    sampler = NodeSampler(cluster, load, settings.sample_interval_s)
    started = time.perf_counter()
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=round(settings.load.duration_s), desc=target.label, unit="sim s")
    sampling = asyncio.create_task(sampler.run(bar.update if bar is not None else None))
    killing = None
    if settings.kill_replica_at_s is not None and processes and len(processes) > 1:
        killing = asyncio.create_task(_kill_at(processes[0], settings.kill_replica_at_s, load))
    try:
        stats = await load.run()
    finally:
        for task in (sampling, killing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if bar is not None:
            bar.update(bar.total - bar.n)
            bar.close()
    wall = time.perf_counter() - started
    alive = [
        port
        for i, port in enumerate(grpc_ports)
        if processes is None or i >= len(processes) or processes[i].returncode is None
    ]
    in_flight = max([await in_flight_total(port) for port in alive], default=None)
    queries = sum(n.engine.counters.prompt_tokens for n in cluster.nodes)
    hits = sum(n.engine.counters.cached_tokens for n in cluster.nodes)
    result = RunResult(
        policy=target.label,
        node_ids=[n.node_id for n in cluster.nodes],
        profiles=[p.name for p in cluster.profiles],
        duration_s=settings.load.duration_s,
        warmup_s=settings.warmup_s,
        requests=stats.records,
        samples=sampler.samples,
        preemptions=sum(n.engine.counters.preemptions for n in cluster.nodes),
        wall_s=wall,
    )
    # The nodes' own TTFT (their /metrics histogram) against the client's: the gap is what
    # the HTTP hops and the router cost, times the dilation.
    engine_count = sum(sum(n.ttft_counts) for n in cluster.nodes)
    engine_sum = sum(n.ttft_sum for n in cluster.nodes)
    client = [r.ttft_s for r in stats.records if r.ttft_s is not None]
    lags = sorted(sampler.lags_s)
    lag_p95 = lags[int(0.95 * (len(lags) - 1))] * 1e3 if lags else math.nan
    return LiveRun(
        result=result,
        node_kv_hit_rate=hits / queries if queries else math.nan,
        in_flight_after=in_flight,
        loop_lag_p95_ms=lag_p95,
        unknown_node=stats.unknown_node,
        engine_ttft_mean_ms=engine_sum / engine_count * 1e3 if engine_count else math.nan,
        client_ttft_mean_ms=sum(client) / len(client) * 1e3 if client else math.nan,
        replicas=target.replicas,
        retries=stats.retries,
        kill=kill_effect(stats.records, settings) if killing is not None else None,
    )


async def _kill_at(process: asyncio.subprocess.Process, at_s: float, load: LiveChatLoad) -> None:
    await asyncio.sleep(max(0.0, at_s - load.sim_now()) / load.dilation)
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGKILL)
    await process.wait()


def kill_effect(records: Sequence[RequestRecord], settings: LiveSettings) -> dict[str, float]:
    """KV hit rate and failed requests in the window before the kill and after it."""
    assert settings.kill_replica_at_s is not None
    at, window = settings.kill_replica_at_s, settings.kill_window_s

    def figures(start: float, end: float) -> tuple[float, float]:
        chosen = [r for r in records if start <= r.arrival_s < end]
        served = [r for r in chosen if r.outcome == "ok"]
        prompt = sum(r.prompt_tokens for r in served)
        hit = sum(r.cached_tokens for r in served) / prompt if prompt else math.nan
        return hit, float(sum(1 for r in chosen if r.outcome == "rejected"))

    hit_before, failed_before = figures(at - window, at)
    hit_after, failed_after = figures(at, at + window)
    return {
        "at_s": at,
        "window_s": window,
        "kv_hit_before": hit_before,
        "kv_hit_after": hit_after,
        "kv_hit_after_over_before": hit_after / hit_before if hit_before else math.nan,
        "failed_before": failed_before,
        "failed_after": failed_after,
    }


def live_summary(run: LiveRun) -> dict[str, float]:
    summary = summarize(run.result)
    if any(r.node < 0 for r in run.result.requests):
        # Requests that never reached a node (timeouts, errors) have no node to count.
        summary["max_over_mean_node_requests"] = math.nan
    return summary


async def run_targets(
    settings: LiveSettings, targets: list[Target], progress: bool
) -> dict[str, str]:
    """Runs every target in turn; an external router that fails to start is skipped
    (label -> reason), an llmlb failure aborts."""
    skipped = {}
    for target in targets:
        try:
            target.runs.append(await run_target(settings, target, progress))
        except RuntimeError as error:
            if target.external is None:
                raise
            skipped[target.label] = str(error)
            print(f"skipping {target.label}: {error}", flush=True)
    return skipped


# --- the command ----------------------------------------------------------------------

# Defaults of the live mode where the DES defaults would take hours of wall time.
LIVE_DEFAULTS: dict[str, Any] = {
    "cluster": "h100x4:2,a100x4:2",
    "sessions": 8,
    "streams": 10,
    "duration": 300.0,
    "warmup": 60.0,
    # A 120 s ramp would take most of a short live run; light live loads do not lock step.
    "ramp": 5.0,
}


def add_live_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "live mode (real HTTP nodes, an llmlb serve process per policy, external routers)"
    )
    g.add_argument(
        "--live",
        action="store_true",
        help="run live instead of the DES (defaults then: "
        + ", ".join(f"--{k} {v}" for k, v in LIVE_DEFAULTS.items())
        + ")",
    )
    g.add_argument(
        "--dilation", type=float, default=10.0, help="simulated seconds per wall second (10)"
    )
    g.add_argument(
        "--chunk-interval",
        type=float,
        default=0.25,
        help="wall seconds between a stream's SSE chunks at the nodes (0.25)",
    )
    g.add_argument(
        "--external",
        metavar="NAMES",
        help=f"also measure these routers in front of the same nodes: {','.join(EXTERNAL_ROUTERS)}",
    )
    g.add_argument(
        "--external-bin-dir", metavar="DIR", help="where the external routers are (default: PATH)"
    )
    g.add_argument(
        "--live-kv-events",
        action="store_true",
        help="the nodes publish KV events over ZMQ and tokenize with a BPE trained at start, "
        "which llmlb's proxy uses too (off by default: it changes prompt sizes from the "
        "stand-in tokenizer the live runs are calibrated with)",
    )
    g.add_argument(
        "--kill-replica-at",
        type=float,
        metavar="SECONDS",
        help="with --replicas K > 1: SIGKILL the first replica at this simulated second and "
        "report the KV hit rate and failed requests of --kill-window before and after",
    )
    g.add_argument(
        "--kill-window",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="simulated seconds compared before and after --kill-replica-at (60)",
    )


def apply_live_defaults(args: argparse.Namespace, des_defaults: dict[str, Any]) -> list[str]:
    """Options left at their DES default take the live default; returns what changed."""
    changed = []
    for key, value in LIVE_DEFAULTS.items():
        if getattr(args, key) == des_defaults[key]:
            setattr(args, key, value)
            changed.append(f"--{key} {value}")
    return changed


def settings_from_args(
    args: argparse.Namespace, cluster: Sequence[HardwareProfile]
) -> LiveSettings:
    if args.workload != "chat":
        raise ValueError("--live plays the chat workload only (--workload chat)")
    if args.rate is not None:
        raise ValueError("--live runs the chat workload closed loop (no --rate)")
    if args.router_option:
        raise ValueError("--router-option is for the DES; in --live the service uses its config")
    load = ChatLoad(
        sessions=args.sessions,
        streams=args.streams,
        system_tokens=args.system_tokens,
        input_tokens=args.input_tokens,
        output_tokens=args.output_tokens,
        turns=args.turns,
        think_s=args.think,
        ramp_s=args.ramp,
        duration_s=args.duration,
        timeout_s=args.timeout,
        seed=args.seed,
    )
    return LiveSettings(
        load=load,
        cluster=tuple(cluster),
        dilation=args.dilation,
        chunk_interval_s=args.chunk_interval,
        warmup_s=args.warmup,
        report_interval_s=args.monitor_interval,
        kv_events=args.live_kv_events,
        kill_replica_at_s=args.kill_replica_at,
        kill_window_s=args.kill_window,
    )


def make_targets(
    policies: Sequence[str], externals: Sequence[External], replica_counts: Sequence[int] = (1,)
) -> list[Target]:
    targets = [
        Target(label=p if k == 1 else f"{p} x{k} replicas", policy=p, replicas=k)
        for p in policies
        for k in replica_counts
    ]
    targets += [Target(label=e.label, external=e) for e in externals if e.path is not None]
    return targets


def describe(settings: LiveSettings) -> dict[str, Any]:
    load = settings.load
    return {
        "mode": "live",
        "dilation": settings.dilation,
        "sse_chunk_interval_wall_s": settings.chunk_interval_s,
        "ttft": "client wall-clock time to the first streamed token x dilation",
        "workload": {
            "name": "chat",
            "sessions": load.sessions,
            "streams_per_session": load.streams,
            "system_tokens": load.system_tokens,
            "input_tokens": load.input_tokens,
            "output_tokens": load.output_tokens,
            "turns": load.turns,
            "think_s": load.think_s,
            "ramp_s": load.ramp_s,
            "duration_s": load.duration_s,
        },
        "cluster": [p.describe() for p in settings.cluster],
        "settings": {
            "duration": load.duration_s,
            "warmup": settings.warmup_s,
            "timeout": load.timeout_s,
            "monitor_interval": settings.report_interval_s,
            "seed": load.seed,
            "kv_events": settings.kv_events,
        },
    }


def run_live(
    args: argparse.Namespace,
    cluster: Sequence[HardwareProfile],
    policies: Sequence[str],
    command: str,
) -> int:
    try:
        settings = settings_from_args(args, cluster)
        names = [n.strip() for n in (args.external or "").split(",") if n.strip()]
        externals = find_externals(names, args.external_bin_dir)
        counts = parse_replicas(args.replicas)
        if args.kill_replica_at is not None and max(counts) < 2:
            raise ValueError("--kill-replica-at needs --replicas with a count of 2 or more")
    except ValueError as error:
        print(f"llmlb bench: {error}", file=sys.stderr)
        return 2
    # sglang-router probes the workers with HTTP/2 prior knowledge at startup; the nodes
    # answer 400 (they speak HTTP/1.1, as vLLM does) and aiohttp would log every probe.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    for external in externals:
        if external.path is None:
            print(f"skipping {external.label}: {external.reason}", flush=True)
    targets = make_targets(policies, externals, counts)
    started = time.perf_counter()
    try:
        skipped = asyncio.run(run_targets(settings, targets, progress=not args.no_progress))
    except RuntimeError as error:
        print(f"llmlb bench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("llmlb bench: interrupted", file=sys.stderr)
        return 130
    skipped.update({e.label: e.reason for e in externals if e.path is None})
    runs = [t.runs[0] for t in targets if t.runs]
    summaries = {r.result.policy: live_summary(r) for r in runs}
    baseline = "round_robin" if "round_robin" in summaries else None
    table = format_table(summaries, baseline)
    print(table)
    for line in replica_lines(runs):
        print(line)
    print(
        f"\n{len(runs)} live runs in {time.perf_counter() - started:.1f} s wall time "
        f"(dilation {settings.dilation:g}: TTFT = client wall time x {settings.dilation:g})"
    )
    meta = {
        "command": command,
        **describe(settings),
        "live": {
            r.result.policy: {
                "node_kv_hit_rate": r.node_kv_hit_rate,
                "in_flight_after": r.in_flight_after,
                "loop_lag_p95_wall_ms": round(r.loop_lag_p95_ms, 2),
                "requests_with_unknown_node": r.unknown_node,
                "engine_ttft_mean_ms": round(r.engine_ttft_mean_ms, 1),
                "client_ttft_mean_ms": round(r.client_ttft_mean_ms, 1),
                "replicas": r.replicas,
                "retries_on_another_replica": r.retries,
                **({"kill": r.kill} if r.kill is not None else {}),
                **({"redis": r.redis} if r.redis is not None else {}),
            }
            for r in runs
        },
        "skipped": skipped,
    }
    if args.out:
        results = [r.result for r in runs]
        for path in write_outputs(
            Path(args.out), results, summaries, meta, table, plots=not args.no_plots
        ):
            print(f"wrote {path}")
    return 0


def replica_lines(runs: Sequence[LiveRun]) -> list[str]:
    """What only replicated runs have: retries, the kill's effect, Redis traffic."""
    lines = []
    for run in runs:
        if run.replicas == 1:
            continue
        label = run.result.policy
        lines.append(f"{label}: {run.retries} requests retried on another replica")
        if run.kill is not None:
            k = run.kill
            lines.append(
                f"{label}: replica killed at {k['at_s']:g} s; KV hit {k['kv_hit_before']:.1%} in "
                f"the {k['window_s']:g} s before, {k['kv_hit_after']:.1%} after "
                f"(x{k['kv_hit_after_over_before']:.2f}); failed requests: "
                f"{k['failed_before']:g} that arrived before (streams the killed replica was "
                f"proxying), {k['failed_after']:g} after"
            )
        if run.redis is not None:
            r = run.redis
            lines.append(
                f"{label}: Redis took {r['bytes_in_per_request']:.0f} B in, "
                f"{r['bytes_out_per_request']:.0f} B out and {r['xadd_per_request']:.2f} XADD "
                "per request"
            )
    return lines
