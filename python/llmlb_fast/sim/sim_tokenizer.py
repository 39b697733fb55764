"""A tokenizer for simulated nodes and the router in front of them to share, so that the
router's token chains are the nodes' (what their KV events carry): a byte-level BPE
trained here on the load generator's words (nothing is downloaded), and a ChatML chat
template. Tests and benches train theirs with it too."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing

BOS = "<s>"
SPECIAL_TOKENS = [BOS, "</s>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def corpus(words: Sequence[str], lines: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 30))) for _ in range(lines)]


def train_tokenizer(
    directory: Path, words: Sequence[str], *, vocab_size: int = 1000, lines: int = 2000
) -> Path:
    """Trains a byte-level BPE (plain encodes start with ``<s>``) on text made of
    ``words``; writes ``tokenizer.json`` into ``directory`` and returns its path."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(words, lines), trainer=trainer)
    bos = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, bos)])
    path = directory / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def write_model_files(directory: Path, words: Sequence[str]) -> tuple[Path, Path]:
    """``tokenizer.json`` and ``chat.jinja`` for a simulated model, in ``directory``."""
    template = directory / "chat.jinja"
    template.write_text(CHATML_TEMPLATE, encoding="utf-8")
    return train_tokenizer(directory, words), template
