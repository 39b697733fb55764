"""KV-event ingestion cost: decoding and applying vLLM ``KVEventBatch`` payloads in Rust
(``Router.apply_kv_event_batch``) against decoding them with msgspec in Python and
applying each event through the per-event API, and the whole path over ZMQ on loopback
(publisher -> ingestion thread -> index).

Each batch is what a busy vLLM step publishes: one ``BlockStored`` of ``--blocks``
32-byte (sha256) block hashes with their tokens, and one ``BlockRemoved`` evicting as
many older blocks, so the index stays at a steady size.

Run: ``python benches/kv_events_ingest.py`` (writes benches/results/kv_events_ingest.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

from llmlb_fast import Node, Router, RouterConfig
from llmlb_fast.kv_events import KvEventIngest, KvEventSource
from llmlb_fast.kv_events.publisher import KvEventPublisher
from llmlb_fast.kv_events.wire import (
    BlockRemoved,
    BlockStored,
    KVEventBatch,
    decode_batch,
    encode_batch,
)
from tqdm import tqdm

RESULTS = Path(__file__).resolve().parent / "results"
BLOCK = 16


def block_hash(n: int) -> bytes:
    return hashlib.sha256(n.to_bytes(8, "big")).digest()


def workload(batches: int, blocks: int) -> list[bytes]:
    """Payloads of ``batches`` steps; step i stores chain i and evicts chain i - 8."""
    payloads = []
    for i in range(batches):
        hashes = [block_hash(i * blocks + j) for j in range(blocks)]
        tokens = list(range(i * 7, i * 7 + blocks * BLOCK))
        events: list[BlockStored | BlockRemoved] = [BlockStored(hashes, None, tokens, BLOCK)]
        if i >= 8:
            events.append(BlockRemoved([block_hash((i - 8) * blocks + j) for j in range(blocks)]))
        payloads.append(encode_batch(KVEventBatch(ts=float(i), events=events)))
    return payloads


def live_router() -> Router:
    router = Router(RouterConfig(), [Node("a", "a:8000")])
    router.set_kv_events_state("a", "live")
    return router


def apply_in_rust(router: Router, payload: bytes) -> None:
    router.apply_kv_event_batch("a", payload)


def apply_in_python(router: Router, payload: bytes) -> None:
    for event in decode_batch(payload).events:
        if isinstance(event, BlockStored):
            router.kv_blocks_stored(
                "a", event.block_hashes, event.parent_block_hash, event.token_ids,
                block_size=event.block_size,
            )  # fmt: skip
        elif isinstance(event, BlockRemoved):
            router.kv_blocks_removed("a", event.block_hashes)


def decode_only(router: Router, payload: bytes) -> None:
    """The part of the Python path that holds the GIL throughout (the router's calls
    release it; so does ``apply_kv_event_batch`` for all of its work)."""
    decode_batch(payload)


def time_apply(
    apply: Callable[[Router, bytes], None], payloads: list[bytes], label: str
) -> dict[str, float]:
    router = live_router()
    started = time.perf_counter()
    for payload in tqdm(payloads, desc=label, unit="batch", leave=False):
        apply(router, payload)
    elapsed = time.perf_counter() - started
    return {"us_per_batch": elapsed / len(payloads) * 1e6}


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def over_zmq(payloads: list[bytes]) -> dict[str, float]:
    """Publisher and ingestion thread in this process; CPU is the process's, both sides."""
    router = live_router()
    publisher = KvEventPublisher(topic="kv-events")
    ingest = KvEventIngest(router)
    ingest.start()
    source = KvEventSource("a", publisher.endpoint, "kv-events", publisher.replay_endpoint)
    ingest.set_sources([source])
    deadline = time.monotonic() + 10
    while ingest.stats["a"].replays["ok"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    started, cpu_before = time.perf_counter(), cpu_s()
    for payload in payloads:
        publisher.publish_raw(payload)
    deadline = time.monotonic() + 120
    with tqdm(total=len(payloads), desc="zmq", unit="batch", leave=False) as bar:
        while ingest.stats["a"].batches < len(payloads) and time.monotonic() < deadline:
            bar.update(ingest.stats["a"].batches - bar.n)
            time.sleep(0.005)
    elapsed, cpu = time.perf_counter() - started, cpu_s() - cpu_before
    applied = ingest.stats["a"].batches
    ingest.stop()
    publisher.close()
    return {
        "batches_applied": applied,
        "batches_per_s": applied / elapsed,
        "process_cpu_us_per_batch": cpu / applied * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20_000, help="batches per measurement")
    parser.add_argument(
        "--blocks", type=int, default=32, help="blocks stored (and removed) per batch"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "kv_events_ingest.json")
    args = parser.parse_args()
    payloads = workload(args.batches, args.blocks)
    blocks_per_batch = 2 * args.blocks  # stored + removed
    results: dict[str, object] = {
        "command": "python benches/kv_events_ingest.py " + " ".join(sys.argv[1:]),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "batches": args.batches,
        "blocks_stored_per_batch": args.blocks,
        "payload_bytes_mean": sum(map(len, payloads)) / len(payloads),
    }
    paths = (
        ("rust_decode_and_apply", apply_in_rust),
        ("python_msgspec_decode", apply_in_python),
        ("python_msgspec_decode_only", decode_only),
    )
    for name, apply in paths:
        figures = time_apply(apply, payloads, name)
        figures["us_per_block"] = figures["us_per_batch"] / blocks_per_batch
        results[name] = figures
        print(f"{name}: {figures}", flush=True)
    zmq_figures = over_zmq(payloads)
    results["zmq_loopback_end_to_end"] = zmq_figures
    print(f"zmq: {zmq_figures}", flush=True)
    rust, python = results["rust_decode_and_apply"], results["python_msgspec_decode"]
    assert isinstance(rust, dict) and isinstance(python, dict)
    results["python_over_rust"] = python["us_per_batch"] / rust["us_per_batch"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
