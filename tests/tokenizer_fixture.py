"""A small byte-level BPE tokenizer trained here with the ``tokenizers`` trainer (tests
and benches never download one), and the ChatML template in fixtures/tokenizer/."""

from __future__ import annotations

from pathlib import Path

from llmlb_fast.sim.sim_tokenizer import corpus as word_corpus
from llmlb_fast.sim.sim_tokenizer import train_tokenizer

CHAT_TEMPLATE = Path(__file__).parent / "fixtures" / "tokenizer" / "chatml.jinja"
_WORD_TEXT = (
    "the a of to and in is you that it for on with as are this be at or have from order "
    "ship book shop price please help answer question customer return refund delivery "
    "account password assistant system user model token cache prefix node"
)
WORDS = tuple(_WORD_TEXT.split())


def corpus(lines: int, seed: int = 0) -> list[str]:
    return word_corpus(WORDS, lines, seed)


def make_tokenizer(directory: Path, vocab_size: int = 1000, lines: int = 2000) -> Path:
    """A byte-level BPE (BOS ``<s>`` added to plain encodes) trained on WORDS."""
    return train_tokenizer(directory, WORDS, vocab_size=vocab_size, lines=lines)
