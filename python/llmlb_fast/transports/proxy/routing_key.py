"""The routing key of an OpenAI request: the prompt text (or token ids) the router hashes.

Chat messages are rendered in order, role then content, so that requests sharing a
system prompt or a conversation history share a prefix of the rendered text and the
router's prefix index can match it block by block. A model with a tokenizer configured
is routed by the engine's own tokens instead (:func:`tokenized`), which is what its KV
events report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from llmlb_fast.tokenizer import ModelTokenizer, TemplateError
from llmlb_fast.transports.http_errors import invalid_request

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"


@dataclass(frozen=True, slots=True)
class RoutingKey:
    model: str
    prompt: str | None
    token_ids: list[int] | None
    expected_output_tokens: int | None
    stream: bool
    # The chat request's messages and tools, for a model's chat template.
    messages: list[dict[str, Any]] | None = None
    tools: object = None


def parse_body(raw: bytes) -> dict[str, Any]:
    """Parses a JSON object body or raises a 400 ProxyError saying what is wrong."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid_request(f"Request body is not valid JSON: {exc}", "invalid_json") from exc
    if not isinstance(body, dict):
        raise invalid_request("Request body must be a JSON object.", "invalid_json")
    return body


def routing_key(path: str, body: dict[str, Any]) -> RoutingKey:
    """Builds the key for ``/v1/chat/completions`` or ``/v1/completions``."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("Missing required parameter: 'model'.", "missing_model")
    prompt: str | None
    token_ids: list[int] | None = None
    messages = None
    if path == CHAT_PATH:
        prompt = render_messages(body.get("messages"))
        messages = body["messages"]
    else:
        prompt, token_ids = completion_prompt(body.get("prompt"))
    return RoutingKey(
        model=model,
        prompt=prompt,
        token_ids=token_ids,
        expected_output_tokens=expected_output_tokens(body),
        stream=body.get("stream") is True,
        messages=messages,
        tools=body.get("tools"),
    )


def tokenized(key: RoutingKey, tokenizer: ModelTokenizer) -> RoutingKey | None:
    """The key as the engine's token ids; None when the chat template refuses the
    request (it is then routed by text)."""
    if key.token_ids is not None:
        return key
    try:
        if key.messages is not None:
            ids = tokenizer.encode_chat(key.messages, key.tools)
        else:
            ids = tokenizer.encode_text(key.prompt or "")
    except TemplateError:
        return None
    return replace(key, prompt=None, token_ids=ids)


def render_messages(messages: object) -> str:
    if not isinstance(messages, list) or not messages:
        raise invalid_request("'messages' must be a non-empty array.", "invalid_messages")
    parts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            raise invalid_request("Each message must be an object.", "invalid_messages")
        role = message.get("role")
        if not isinstance(role, str):
            raise invalid_request("Each message needs a string 'role'.", "invalid_messages")
        parts.append(f"<|{role}|>\n{message_text(message.get('content'))}\n")
    return "".join(parts)


def message_text(content: object) -> str:
    """Text of a message: a string, or the text parts of a content array in order."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return "".join(texts)
    raise invalid_request("Message 'content' must be a string or an array.", "invalid_messages")


def completion_prompt(prompt: object) -> tuple[str | None, list[int] | None]:
    """The routing key of a completions prompt: string, strings, token ids or batches."""
    if isinstance(prompt, str):
        return prompt, None
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if all(isinstance(p, str) for p in prompt):
            # A batch routes as one request; its first prompt decides the prefix.
            return str(first), None
        if all(is_token(t) for t in prompt):
            return None, list(prompt)
        if isinstance(first, list) and all(
            isinstance(p, list) and all(is_token(t) for t in p) for p in prompt
        ):
            return None, list(first)
    raise invalid_request(
        "'prompt' must be a string, an array of strings or an array of token ids.",
        "invalid_prompt",
    )


def is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def expected_output_tokens(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not is_token(value):
            raise invalid_request(f"'{name}' must be a non-negative integer.", "invalid_max_tokens")
        return int(value)
    return None
