"""Exceptions raised by llmlb. Every one derives from :class:`LlmlbError`."""

from __future__ import annotations

import json


class LlmlbError(Exception):
    """Base class of every llmlb error."""


class InvalidInputError(LlmlbError, ValueError):
    """A value passed to the router is malformed (NaN metric, bad token id, ...)."""


class ConfigError(LlmlbError, ValueError):
    """A configuration value or file is invalid; the previous config stays in force."""


class UnknownNodeError(LlmlbError, KeyError):
    """No node with that id is registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnknownModelError(LlmlbError, LookupError):
    """No registered node serves the requested model."""


class NoAvailableNodeError(LlmlbError):
    """No node can take the request (none registered, or every breaker is open)."""


class DuplicateRequestError(LlmlbError, ValueError):
    """A request with this id is already in flight."""


class TableFullError(LlmlbError):
    """The node table holds the maximum number of nodes."""


class RequestError(LlmlbError):
    """A request a transport answers itself: an HTTP status and an OpenAI-style error
    (``{"error": {"message", "type", "code"}}``). Raised by ``_core.routing_key``."""

    def __init__(self, status: int, message: str, error_type: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.error_type, "code": self.code}
        return json.dumps({"error": error}).encode()
