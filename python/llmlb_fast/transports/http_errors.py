"""OpenAI-style error responses (``{"error": {"message", "type", "code"}}``) of the Python
ext_proc picker, and its mapping from the routing service's errors to them (the HTTP
proxy's own, in Rust, answer the same)."""

from __future__ import annotations

from llmlb_fast.errors import (
    DuplicateRequestError,
    NoAvailableNodeError,
    RequestError,
    TableFullError,
    UnknownModelError,
    UnknownNodeError,
)
from llmlb_fast.service.routing import DrainingError

ProxyError = RequestError


def invalid_request(message: str, code: str = "invalid_request") -> ProxyError:
    return ProxyError(400, message, "invalid_request_error", code)


def unknown_model(model: str) -> ProxyError:
    return ProxyError(
        404,
        f"The model {model!r} does not exist on any backend.",
        "invalid_request_error",
        "model_not_found",
    )


def body_too_large(limit: int) -> ProxyError:
    return ProxyError(
        413,
        f"Request body is larger than the limit of {limit} bytes.",
        "invalid_request_error",
        "request_too_large",
    )


def no_backend(message: str) -> ProxyError:
    return ProxyError(503, message, "service_unavailable", "no_backend_available")


def upstream_failed(message: str) -> ProxyError:
    return ProxyError(502, message, "upstream_error", "upstream_failed")


def upstream_timeout(timeout_s: float) -> ProxyError:
    return ProxyError(
        504, f"The backend did not answer within {timeout_s:g} s.", "timeout", "upstream_timeout"
    )


def draining() -> ProxyError:
    return no_backend("The server is draining; send the request elsewhere.")


def route_error(error: Exception, model: str) -> ProxyError:
    """What a client sees when the routing service refused its request."""
    if isinstance(error, DrainingError):
        return draining()
    if isinstance(error, UnknownModelError):
        return unknown_model(model)
    if isinstance(error, NoAvailableNodeError | UnknownNodeError | TableFullError):
        return no_backend(f"No backend can take the request: {error}")
    if isinstance(error, DuplicateRequestError):
        return ProxyError(409, str(error), "invalid_request_error", "duplicate_request")
    return invalid_request(str(error))
