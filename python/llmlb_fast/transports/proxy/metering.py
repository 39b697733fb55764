"""Counts what a response carried: time to first byte, output tokens and the usage block.

Streaming responses are Server-Sent Events; each ``data:`` event other than ``[DONE]``
is one chunk (one token for vLLM and SGLang). When the backend sends a ``usage`` object
(non-streaming, or ``stream_options.include_usage``), its counts win.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

EVENT_END = b"\n\n"
DATA = b"data:"
DONE = b"[DONE]"


class ResponseMeter:
    """Fed with the response bytes as they pass through; never changes them."""

    __slots__ = ("_carry", "events", "first_byte_at", "prompt_tokens", "usage_tokens")

    def __init__(self) -> None:
        self._carry = b""
        self.events = 0
        self.first_byte_at: float | None = None
        self.prompt_tokens: int | None = None
        self.usage_tokens: int | None = None

    def feed_stream(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self.first_byte_at is None:
            self.first_byte_at = time.perf_counter()
        data = self._carry + chunk if self._carry else chunk
        events = data.split(EVENT_END)
        self._carry = events.pop()
        for event in events:
            self._count_event(event)

    def finish_stream(self) -> None:
        if self._carry.strip():
            self._count_event(self._carry)
        self._carry = b""

    def feed_whole(self, body: bytes) -> None:
        """A non-streaming JSON body: read its usage block when it has one."""
        if body and self.first_byte_at is None:
            self.first_byte_at = time.perf_counter()
        if b'"usage"' not in body:
            return
        try:
            self._read_usage(json.loads(body))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return

    @property
    def tokens_out(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.events

    def _count_event(self, event: bytes) -> None:
        for line in event.split(b"\n"):
            if not line.startswith(DATA):
                continue
            payload = line[len(DATA) :].strip()
            if payload == DONE:
                continue
            self.events += 1
            if b'"usage"' in payload:
                with contextlib.suppress(UnicodeDecodeError, json.JSONDecodeError):
                    self._read_usage(json.loads(payload))

    def _read_usage(self, document: Any) -> None:
        if not isinstance(document, dict):
            return
        usage = document.get("usage")
        if not isinstance(usage, dict):
            return
        completion = usage.get("completion_tokens")
        prompt = usage.get("prompt_tokens")
        if isinstance(completion, int):
            self.usage_tokens = completion
        if isinstance(prompt, int):
            self.prompt_tokens = prompt
