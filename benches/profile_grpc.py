"""Where the server's time goes: runs ``bench_grpc.py`` for one variant, samples the
server with py-spy (``pip install py-spy``) and sorts the busy samples by layer.

    python benches/profile_grpc.py --variant unary --concurrency 8 [--native]

``--native`` also unwinds C frames (syscalls, gRPC's C-core), but then the Rust core and
the service's Python are told apart less reliably. Writes
``benches/results/grpc_profile_<variant>_c<clients>[_native].json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOLD_S = 2.0
IDLE_LEAVES = ("epoll_wait", "EpollSelector.select", "_PollLikeSelector.select", "poll (")


def layer_of(frames: list[str]) -> str | None:
    """The layer a sample belongs to; None when the thread was waiting."""
    leaf = frames[-1]
    if leaf.startswith(IDLE_LEAVES):
        return None
    stack = ";".join(frames)
    if "llmlb_core" in stack:  # native frames only; else the core counts as service python
        return "rust core"
    if "prometheus_client" in stack:
        return "prometheus_client"
    if "llmlb_fast/transports/grpc_api.py" in stack or "llmlb_fast/service/routing.py" in stack:
        return "service python"
    if leaf.startswith("sendmsg"):
        return "sendmsg syscall"
    if leaf.startswith("write"):
        return "write syscall (wake-ups)"
    if leaf.startswith(("recv", "read")):
        return "recv/read syscall"
    if "cygrpc" in stack or leaf.startswith("Thread.run"):
        return "grpc (Cython, C-core, poller thread)"
    return "asyncio and other"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="unary")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--native", action="store_true")
    args = parser.parse_args()
    suffix = "_native" if args.native else ""
    out = ROOT / f"benches/results/grpc_profile_{args.variant}_c{args.concurrency}{suffix}.json"
    raw = Path(tempfile.mkdtemp()) / "profile.raw"
    bench = subprocess.Popen(
        [sys.executable, str(ROOT / "benches/bench_grpc.py"), "--variants", args.variant,
         "--concurrency", str(args.concurrency), "--seconds", str(args.seconds + 2),
         "--hold", str(HOLD_S), "--out", str(raw.with_suffix(".bench.json"))],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert bench.stdout is not None
    line = bench.stdout.readline()
    while line and not line.startswith("server pid"):
        line = bench.stdout.readline()
    pid = line.split()[2]
    time.sleep(HOLD_S + 0.5)  # measuring has begun
    record = ["py-spy", "record", "-p", pid, "-d", str(int(args.seconds)), "-r", "200"]
    record += ["-f", "raw", "-o", str(raw)] + (["--native"] if args.native else [])
    subprocess.run(record, check=True, capture_output=True)
    bench.communicate()
    layers: Counter[str] = Counter()
    for sample in raw.read_text().splitlines():
        stack, count = sample.rsplit(" ", 1)
        layer = layer_of(stack.split(";"))
        if layer is not None:
            layers[layer] += int(count)
    busy = sum(layers.values())
    report = {
        "command": "python " + " ".join(sys.argv),
        "busy_samples": busy,
        "share_of_busy_samples": {k: round(v / busy, 3) for k, v in layers.most_common()},
        "bench": json.loads(raw.with_suffix(".bench.json").read_text())["results"],
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["share_of_busy_samples"], indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
