"""The routing key of an OpenAI request: the prompt text (or token ids) the router hashes.

Built in Rust (``llmlb-proxy``'s ``routing_key``) for every transport, so that the HTTP
proxy, the ext_proc picker and Python callers hash the same prefixes: chat messages are
rendered in order as ``<|role|>\\ncontent\\n`` (shared history is a shared prefix). A
model with a tokenizer configured is routed by the engine's own tokens instead
(:func:`tokenized`), which is what its KV events report.
"""

from __future__ import annotations

import json

from llmlb_fast._core import RoutingKey, routing_key
from llmlb_fast.tokenizer import ModelTokenizer, TemplateError

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"

__all__ = [
    "CHAT_PATH",
    "COMPLETIONS_PATH",
    "RoutingKey",
    "engine_token_ids",
    "routing_key",
    "tokenized",
]


def tokenized(key: RoutingKey, tokenizer: ModelTokenizer) -> RoutingKey | None:
    """The key as the engine's token ids; None when the chat template refuses the
    request (it is then routed by text)."""
    if key.token_ids is not None:
        return key
    ids = engine_token_ids(tokenizer, key.prompt, key.messages_json, key.tools_json)
    return None if ids is None else key.with_token_ids(ids)


def engine_token_ids(
    tokenizer: ModelTokenizer,
    prompt: str | None,
    messages_json: str | None,
    tools_json: str | None,
) -> list[int] | None:
    """A chat request through the model's template, a completions prompt as text."""
    try:
        if messages_json is not None:
            tools = json.loads(tools_json) if tools_json is not None else None
            return tokenizer.encode_chat(json.loads(messages_json), tools)
        return tokenizer.encode_text(prompt or "")
    except TemplateError:
        return None
