"""``llmlb bench``: every routing policy on the same simulated cluster and workload.

Runs the discrete-event simulator (:mod:`llmlb_fast.sim.des`) once per policy, with
routing decided by the Rust core, and prints the article's table: TTFT p50/p95,
throughput (QPS and output tokens/s), GPU memory utilisation, timeout rate and KV-cache
hit rate, with the change against round robin. Writes the table (Markdown), the
numbers (JSON) and plots (TTFT CDF, per-node load over time) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from llmlb_fast import POLICIES, RouterConfig
from llmlb_fast.sim import live_benchmark, replica_sweep
from llmlb_fast.sim.des import SYNC_DELAY_S, RunResult, Simulation, summarize
from llmlb_fast.sim.profiles import (
    ENGINE_MODES,
    PROFILES,
    HardwareProfile,
    load_profiles,
    parse_cluster,
)
from llmlb_fast.sim.report import format_table, write_outputs
from llmlb_fast.sim.sweep import LoadSweep, describe_load, parse_factors, parse_modes, scale_load
from llmlb_fast.sim.workloads import ChatSessions, TraceReplay, Uniform, Workload, read_trace

HELP = "Compare routing policies on a simulated GPU cluster (the article's benchmark table)."

DEFAULT_TRACE = "../shared/traces/mooncake_conversation_trace.jsonl"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("what to compare")
    g.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help="comma-separated policies (default: all: %(default)s)",
    )
    g.add_argument(
        "--workload",
        choices=["chat", "trace", "uniform"],
        default="chat",
        help="chat: the article's scenario; trace: replay --trace; uniform: no sharing",
    )
    g.add_argument(
        "--cluster",
        default="h100x4:8",
        help=f"nodes as PROFILE:COUNT,... (built in: {', '.join(PROFILES)}; default %(default)s)",
    )
    g.add_argument("--profiles", metavar="FILE", help="JSON/YAML file declaring more profiles")
    g.add_argument(
        "--engine-mode",
        choices=ENGINE_MODES,
        help="prefill scheduling of every node: chunked (vLLM v1, prompt chunks share steps "
        "with decoding) or whole (vLLM v0, whole-prompt steps stall decoding); default: "
        "the profiles' (chunked for the built-in ones)",
    )
    g.add_argument(
        "--router-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="RouterConfig field for every run, e.g. weights.prefix=2 (repeatable)",
    )
    g = parser.add_argument_group("run")
    g.add_argument("--duration", type=float, default=7200.0, help="simulated seconds")
    g.add_argument("--warmup", type=float, default=300.0, help="seconds left out of the stats")
    g.add_argument("--timeout", type=float, default=10.0, help="TTFT deadline in seconds")
    g.add_argument(
        "--monitor-interval", type=float, default=1.0, help="GPU metrics report interval (s)"
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--no-kv-events",
        action="store_true",
        help="nodes publish no KV-cache events: the router guesses what they hold from "
        "what it routed (as before events; for comparison)",
    )
    g.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel processes"
    )
    g.add_argument("--out", metavar="DIR", help="write table.md, results.json and PNG plots")
    g.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = parser.add_argument_group("load sweep")
    g.add_argument(
        "--load-sweep",
        metavar="MULTIPLES",
        help="run every policy at each multiple of the load, e.g. 0.8,1.0,1.25,1.375,1.5: "
        "chat --sessions (rounded) or --rate, trace --speedup (or --concurrency), uniform "
        "--rate or its concurrency; writes sweep.md, sweep.json, sweep_ttft_p95.png to --out",
    )
    g.add_argument(
        "--engine-modes",
        metavar="MODES",
        help="with --load-sweep: the engine modes to sweep, e.g. chunked,whole "
        "(default: --engine-mode, else the profiles')",
    )
    g = parser.add_argument_group("router replicas (active-active)")
    g.add_argument(
        "--replicas",
        default="1",
        metavar="COUNTS",
        help="route with K replicas behind a random splitter (every replica gets the "
        "metrics and KV events); several counts, e.g. 1,2,4,8, run a replica sweep of "
        "--policies at each --load-sweep multiple and write replicas.md/.json/.png",
    )
    g.add_argument(
        "--sync-delay",
        default="0.005",
        metavar="SECONDS",
        help="when one replica's decisions, first tokens and completions reach the others "
        "(seconds; 'none': replicas share nothing; a list such as 0.005,none compares); "
        "default %(default)s",
    )
    g = parser.add_argument_group("chat workload")
    # 59 sessions x 20 streams on the default 8 nodes is the load at which round robin
    # times out 3.0% of requests in 2 hours, the nearest to the article's 3.2% (58: 2.0%,
    # 60: 4.5%; docs/benchmark.md, Workloads).
    g.add_argument(
        "--sessions", type=int, default=59, help="sessions (system prompts) (default %(default)s)"
    )
    g.add_argument("--streams", type=int, default=20, help="concurrent requests per session")
    g.add_argument("--system-tokens", type=int, default=1000)
    g.add_argument("--input-tokens", type=int, default=200, help="new input tokens per turn")
    g.add_argument("--output-tokens", type=int, default=800)
    g.add_argument("--turns", type=int, default=4, help="turns per conversation")
    g.add_argument("--think", type=float, default=2.0, help="mean think time between turns (s)")
    g.add_argument(
        "--ramp",
        type=float,
        default=120.0,
        help="closed loop: start the streams over this many seconds (default %(default)s)",
    )
    g.add_argument(
        "--rate", type=float, help="open loop: new conversations (chat) or requests per second"
    )
    g = parser.add_argument_group("trace and uniform workloads")
    g.add_argument(
        "--trace", metavar="FILE", help=f"Mooncake JSONL or Azure CSV (default {DEFAULT_TRACE})"
    )
    g.add_argument("--speedup", type=float, default=1.0, help="divide trace timestamps by this")
    g.add_argument(
        "--concurrency", type=int, help="closed loop with this many streams (trace, uniform)"
    )
    g.add_argument("--limit", type=int, help="replay only the first N trace requests")
    g.add_argument(
        "--arrival-spread",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="move each trace timestamp by a seeded uniform offset in [0, SECONDS): 1 "
        "undoes the Mooncake trace's rounding to whole seconds (else ~10 requests arrive "
        "at each same instant); default 0",
    )
    live_benchmark.add_live_arguments(parser)


@dataclass(frozen=True)
class BenchSpec:
    """Everything one policy's run needs, picklable for worker processes."""

    args: dict[str, Any]
    cluster: tuple[HardwareProfile, ...]
    router_options: dict[str, Any]


def build_workload(args: dict[str, Any]) -> Workload:
    kind = args["workload"]
    if kind == "chat":
        return ChatSessions(
            sessions=args["sessions"],
            streams=args["streams"],
            system_tokens=args["system_tokens"],
            input_tokens=args["input_tokens"],
            output_tokens=args["output_tokens"],
            turns=args["turns"],
            think_s=args["think"],
            rate_per_s=args["rate"],
            ramp_s=args["ramp"],
            duration_s=args["duration"],
            seed=args["seed"],
        )
    if kind == "uniform":
        concurrency = args["concurrency"]
        if concurrency is None and args["rate"] is None:
            concurrency = args["sessions"] * args["streams"]
        return Uniform(
            input_tokens=args["input_tokens"],
            output_tokens=args["output_tokens"],
            concurrency=concurrency,
            rate_per_s=args["rate"],
            duration_s=args["duration"],
            seed=args["seed"],
        )
    path = args["trace"] or DEFAULT_TRACE
    return TraceReplay(
        read_trace(path),
        name=Path(path).stem,
        speedup=args["speedup"],
        concurrency=args["concurrency"],
        limit=args["limit"],
        arrival_spread_s=args.get("arrival_spread", 0.0),
        seed=args["seed"],
    )


def parse_router_options(options: Sequence[str]) -> dict[str, Any]:
    """``["weights.prefix=2", "metrics_ttl_s=3"]`` -> RouterConfig keyword arguments."""
    fields = RouterConfig().to_dict()
    result: dict[str, Any] = {}
    for option in options:
        key, sep, text = option.partition("=")
        if not sep:
            raise ValueError(f"--router-option {option!r}: expected KEY=VALUE")
        value: Any
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if key.startswith("weights."):
            default_weights = cast(dict[str, float], fields["weights"])
            weights = result.setdefault("weights", dict(default_weights))
            weights[key.removeprefix("weights.")] = value
        elif key in fields and key not in {"policy", "seed"}:
            result[key] = value
        else:
            raise ValueError(f"--router-option {option!r}: unknown field {key!r}")
    RouterConfig(**result)  # validates now, not in a worker
    return result


def run_policy(
    spec: BenchSpec, policy: str, show_progress: bool = False
) -> tuple[RunResult, float]:
    args = spec.args
    sim = Simulation(
        build_workload(args),
        spec.cluster,
        policy=policy,
        config=RouterConfig(**spec.router_options),
        duration_s=args["duration"],
        warmup_s=args["warmup"],
        timeout_s=args["timeout"],
        monitor_interval_s=args["monitor_interval"],
        seed=args["seed"],
        kv_events=not args.get("no_kv_events", False),
        replicas=args.get("replica_count", 1),
        sync_delay_s=args.get("sync_delay_s", SYNC_DELAY_S),
    )
    started = time.perf_counter()
    if show_progress:
        from tqdm import tqdm

        with tqdm(total=round(args["duration"]), desc=policy, unit="sim s", leave=False) as bar:

            def advance(seconds: float) -> None:
                bar.update(round(seconds))

            result = sim.run(progress=advance)
    else:
        result = sim.run()
    wall = time.perf_counter() - started
    result.wall_s = wall
    return result, wall


def _run_policy_job(spec: BenchSpec, policy: str) -> tuple[RunResult, float]:
    return run_policy(spec, policy)


def run_all(spec: BenchSpec, policies: Sequence[str], jobs: int, progress: bool) -> list[RunResult]:
    if jobs <= 1 or len(policies) == 1:
        return [run_policy(spec, p, show_progress=progress)[0] for p in policies]
    return run_jobs([(spec, p) for p in policies], jobs, progress, desc="policies")


def run_jobs(
    runs: Sequence[tuple[BenchSpec, str]], jobs: int, progress: bool, desc: str = "runs"
) -> list[RunResult]:
    """Every (spec, policy) run, ``jobs`` at a time, with a progress bar over the runs."""
    from tqdm import tqdm

    with tqdm(total=len(runs), desc=desc, unit="run", disable=not progress) as bar:
        if jobs <= 1:
            results = []
            for spec, policy in runs:
                results.append(run_policy(spec, policy)[0])
                bar.update(1)
            return results
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(_run_policy_job, spec, policy) for spec, policy in runs]
            results = []
            for future in futures:
                results.append(future.result()[0])
                bar.update(1)
            return results


def _summary(result: RunResult) -> dict[str, float]:
    return {**summarize(result), "wall_s": round(result.wall_s, 2)}


def run_settings(args: dict[str, Any]) -> dict[str, Any]:
    settings = {k: args[k] for k in ("duration", "warmup", "timeout", "monitor_interval", "seed")}
    settings["kv_events"] = not args.get("no_kv_events", False)
    if args.get("replica_count", 1) > 1:
        settings["replicas"] = args["replica_count"]
        settings["sync_delay_s"] = args.get("sync_delay_s", SYNC_DELAY_S)
    return settings


def with_engine_mode(
    cluster: tuple[HardwareProfile, ...], mode: str | None
) -> tuple[HardwareProfile, ...]:
    return cluster if mode is None else tuple(replace(p, engine_mode=mode) for p in cluster)


def run_sweep(
    spec: BenchSpec,
    policies: Sequence[str],
    factors: Sequence[float],
    modes: Sequence[str | None],
    command: str,
) -> int:
    """Every policy at every load multiple and engine mode (``--load-sweep``); a mode of
    None keeps the profiles' own."""
    args = spec.args
    points = [(mode, f) for mode in modes for f in factors]
    specs = {
        point: BenchSpec(
            scale_load(args, point[1]),
            with_engine_mode(spec.cluster, point[0]),
            spec.router_options,
        )
        for point in points
    }
    for point_spec in specs.values():
        build_workload(point_spec.args)  # bad settings fail here, not in a worker
    runs = [(specs[point], p) for point in points for p in policies]
    started = time.perf_counter()
    results = iter(run_jobs(runs, args["jobs"], progress=not args["no_progress"]))
    label = {m: m or "/".join(sorted({p.engine_mode for p in spec.cluster})) for m in modes}
    summaries: dict[str, dict[float, dict[str, dict[str, float]]]] = {}
    for mode, f in points:
        summaries.setdefault(label[mode], {})[f] = {p: _summary(next(results)) for p in policies}
    sweep = LoadSweep(
        workload=str(build_workload(args).describe()["name"]),
        policies=list(policies),
        factors=list(factors),
        modes=[label[m] for m in modes],
        loads={f: describe_load(specs[(modes[0], f)].args) for f in factors},
        summaries=summaries,
    )
    print(sweep.markdown())
    print(f"{len(runs)} runs in {time.perf_counter() - started:.1f} s wall time")
    if args["out"]:
        meta = {
            "command": command,
            "cluster": [p.describe() for p in spec.cluster],
            "router_options": spec.router_options,
            "settings": run_settings(args),
        }
        for path in sweep.write(Path(args["out"]), meta, plots=not args["no_plots"]):
            print(f"wrote {path}")
    return 0


def run_replica_sweep(
    spec: BenchSpec,
    policies: Sequence[str],
    factors: Sequence[float],
    counts: Sequence[int],
    delays: Sequence[float | None],
    command: str,
) -> int:
    """Every policy at every (load, sync delay, K) of ``--replicas`` with several counts."""
    args = spec.args
    points = replica_sweep.points_of(list(factors), list(delays), list(counts))
    specs = {
        point: BenchSpec(
            {
                **scale_load(args, point.factor),
                "replica_count": point.replicas,
                "sync_delay_s": point.sync_delay_s,
            },
            spec.cluster,
            spec.router_options,
        )
        for point in points
    }
    runs = [(specs[point], p) for p in policies for point in points]
    started = time.perf_counter()
    results = iter(run_jobs(runs, args["jobs"], progress=not args["no_progress"]))
    workload = str(build_workload(args).describe()["name"])
    loads = {f: describe_load(scale_load(args, f)) for f in factors}
    sweeps = []
    for policy in policies:
        summaries = {point: _summary(next(results)) for point in points}
        sweeps.append(replica_sweep.ReplicaSweep(workload, policy, list(factors), loads, summaries))
    for sweep in sweeps:
        print(sweep.markdown())
    print(f"{len(runs)} runs in {time.perf_counter() - started:.1f} s wall time")
    if args["out"]:
        meta = {
            "command": command,
            "workload": build_workload(args).describe(),
            "cluster": [p.describe() for p in spec.cluster],
            "router_options": spec.router_options,
            "settings": run_settings(args),
        }
        out = Path(args["out"])
        for path in replica_sweep.write_sweeps(sweeps, out, meta, plots=not args["no_plots"]):
            print(f"wrote {path}")
    return 0


def des_defaults() -> dict[str, Any]:
    """Every option's value when not given (what the live mode's defaults replace)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return vars(parser.parse_args([]))


def run(args: argparse.Namespace) -> int:
    if args.live:
        for default in live_benchmark.apply_live_defaults(args, des_defaults()):
            print(f"live mode default: {default}")
    try:
        profiles = dict(PROFILES)
        if args.profiles:
            profiles.update(load_profiles(args.profiles))
        cluster = tuple(profiles[name] for name in parse_cluster(args.cluster, profiles))
        cluster = with_engine_mode(cluster, args.engine_mode)
        policies = [p.strip() for p in args.policies.split(",") if p.strip()]
        unknown = [p for p in policies if p not in POLICIES]
        if unknown or not policies:
            raise ValueError(f"unknown policies {unknown}; known: {', '.join(POLICIES)}")
        router_options = parse_router_options(args.router_option)
        if args.workload == "trace" and not args.trace and not Path(DEFAULT_TRACE).exists():
            raise ValueError("--workload trace needs --trace FILE (the default trace is absent)")
        command = "llmlb bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        spec = BenchSpec(vars(args).copy(), cluster, router_options)
        spec.args.pop("run", None)
        build_workload(spec.args)  # bad workload settings fail here, not in a worker
        if args.load_sweep:
            factors = parse_factors(args.load_sweep)
            modes = parse_modes(args.engine_modes) if args.engine_modes else [args.engine_mode]
            if args.live:
                raise ValueError("--load-sweep runs the DES (no --live)")
        elif args.engine_modes:
            raise ValueError("--engine-modes goes with --load-sweep (else --engine-mode)")
        counts = replica_sweep.parse_replicas(args.replicas)
        delays = replica_sweep.parse_sync_delays(args.sync_delay)
        if args.live and (len(delays) > 1 or args.sync_delay != "0.005"):
            raise ValueError("--sync-delay models the sync in the DES (live replicas use Redis)")
        spec.args["replica_count"], spec.args["sync_delay_s"] = counts[0], delays[0]
    except (ValueError, OSError) as e:
        print(f"llmlb bench: {e}", file=sys.stderr)
        return 2
    if not args.live and (len(counts) > 1 or len(delays) > 1):
        factors = parse_factors(args.load_sweep) if args.load_sweep else [1.0]
        return run_replica_sweep(spec, policies, factors, counts, delays, command)
    if args.load_sweep:
        return run_sweep(spec, policies, factors, modes, command)
    if args.live:
        return live_benchmark.run_live(args, cluster, policies, command)
    started = time.perf_counter()
    results = run_all(spec, policies, args.jobs, progress=not args.no_progress)
    summaries = {r.policy: summarize(r) for r in results}
    baseline = "round_robin" if "round_robin" in summaries else None
    table = format_table(summaries, baseline)
    meta = {
        "command": command,
        "workload": build_workload(spec.args).describe(),
        "cluster": [p.describe() for p in cluster],
        "router_options": router_options,
        "settings": run_settings(spec.args),
    }
    print(table)
    print(f"\n{len(results)} runs in {time.perf_counter() - started:.1f} s wall time")
    if args.out:
        for path in write_outputs(
            Path(args.out), results, summaries, meta, table, plots=not args.no_plots
        ):
            print(f"wrote {path}")
    return 0
