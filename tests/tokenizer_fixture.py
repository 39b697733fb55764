"""A small byte-level BPE tokenizer trained here with the ``tokenizers`` trainer (tests
and benches never download one), and the ChatML template in fixtures/tokenizer/."""

from __future__ import annotations

import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CHAT_TEMPLATE = Path(__file__).parent / "fixtures" / "tokenizer" / "chatml.jinja"
SPECIAL_TOKENS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
WORDS = [
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "you",
    "that",
    "it",
    "for",
    "on",
    "with",
    "as",
    "are",
    "this",
    "be",
    "at",
    "or",
    "have",
    "from",
    "order",
    "ship",
    "book",
    "shop",
    "price",
    "please",
    "help",
    "answer",
    "question",
    "customer",
    "return",
    "refund",
    "delivery",
    "account",
    "password",
    "assistant",
    "system",
    "user",
    "model",
    "token",
    "cache",
    "prefix",
    "node",
]


def corpus(lines: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) for _ in range(lines)]


def make_tokenizer(directory: Path, vocab_size: int = 1000, lines: int = 2000) -> Path:
    """Trains a byte-level BPE tokenizer (BOS ``<s>`` added to plain encodes) and
    writes ``tokenizer.json`` into ``directory``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(lines), trainer=trainer)
    from tokenizers.processors import TemplateProcessing

    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    path = directory / "tokenizer.json"
    tokenizer.save(str(path))
    return path
