"""What tokenizing chat requests the engine's way costs the proxy: microseconds per
request and per 1,000 tokens for system prompts of 0.5 to 32 KB (template render plus
Hugging Face ``tokenizers`` encode), and whether two threads encode in parallel (the
library releasing the GIL, so the proxy can tokenize off its event loop).

The tokenizer is a byte-level BPE trained here (``tests/tokenizer_fixture.py``, 8,000
tokens of vocabulary); real models' vocabularies are larger, which changes the token
count per KB more than the cost per token.

Run: ``python benches/tokenizer_cost.py`` (writes benches/results/tokenizer_cost.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests"))

from llmlb_fast.tokenizer import ModelTokenizer  # noqa: E402
from tokenizer_fixture import CHAT_TEMPLATE, corpus, make_tokenizer  # noqa: E402
from tqdm import tqdm  # noqa: E402

RESULTS = ROOT / "results"
SIZES_KB = (0.5, 2.0, 8.0, 32.0)


def messages_of(kb: float) -> list[dict[str, str]]:
    text = " ".join(corpus(2000, seed=7))[: int(kb * 1024)]
    return [{"role": "system", "content": text}, {"role": "user", "content": "Where is it?"}]


def time_encode(tokenizer: ModelTokenizer, kb: float, calls: int) -> dict[str, float]:
    messages = messages_of(kb)
    tokens = len(tokenizer.encode_chat(messages))
    started = time.perf_counter()
    for _ in range(calls):
        tokenizer.encode_chat(messages)
    us = (time.perf_counter() - started) / calls * 1e6
    return {"tokens": tokens, "us_per_request": us, "us_per_1k_tokens": us / tokens * 1000}


def parallel_speedup(tokenizer: ModelTokenizer, calls: int) -> float:
    """Chat encodes of an 8 KB prompt per second on two threads over one thread (the
    template renders under the GIL, the encode without it)."""
    messages = messages_of(8.0)

    def encode(n: int) -> None:
        for _ in range(n):
            tokenizer.encode_chat(messages)

    started = time.perf_counter()
    encode(calls)
    one = time.perf_counter() - started
    threads = [threading.Thread(target=encode, args=(calls // 2,)) for _ in range(2)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    two = time.perf_counter() - started
    return one / two


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="encodes per prompt size")
    parser.add_argument("--out", type=Path, default=RESULTS / "tokenizer_cost.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        path = make_tokenizer(Path(directory), vocab_size=8000, lines=20_000)
        tokenizer = ModelTokenizer.from_files(path, CHAT_TEMPLATE, bos_token="<s>")
    results: dict[str, object] = {
        "command": "python benches/tokenizer_cost.py " + " ".join(sys.argv[1:]),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "vocab_size": tokenizer.tokenizer.get_vocab_size(),
    }
    sizes = {}
    for kb in tqdm(SIZES_KB, desc="prompt sizes", unit="size"):
        sizes[f"{kb:g}KB"] = time_encode(tokenizer, kb, args.calls)
        print(f"{kb:g} KB: {sizes[f'{kb:g}KB']}", flush=True)
    results["chat_prompts"] = sizes
    results["two_threads_speedup_8KB"] = parallel_speedup(tokenizer, args.calls)
    print(f"two threads: x{results['two_threads_speedup_8KB']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
