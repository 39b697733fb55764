"""Bearer tokens on every gRPC call: an interceptor, so that unary calls, streams and
reflection are checked alike before any servicer code runs.

Three kinds of method: the data plane (what gateways call per request), admin (nodes,
metrics, state, events) and reflection; health stays open for probes. Which tokens each
accepts comes from ``server.auth`` (and the legacy ``server.auth_token``, an admin
token), resolved by the service when the config loads or reloads
(:class:`~llmlb_fast.service.credentials.GrpcCredentials`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from llmlb_fast.service.credentials import GrpcCredentials

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Checks each call's ``authorization`` metadata against ``credentials()`` (read per
    call, so a reload applies to the next call)."""

    def __init__(self, credentials: Callable[[], GrpcCredentials]) -> None:
        self._credentials = credentials

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        method: str = handler_call_details.method
        metadata = handler_call_details.invocation_metadata or ()
        authorization = next(
            (value for key, value in metadata if key == "authorization" and isinstance(value, str)),
            None,
        )
        refusal = self._credentials().refusal(method, authorization)
        if refusal is None:
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        return _refusing(handler, *refusal)


def _refusing(handler: Handler | None, code: grpc.StatusCode, details: str) -> Handler | None:
    """A handler of the same shape as ``handler`` that aborts with ``code`` (a coroutine
    for streamed answers too: grpc.aio takes one, and it aborts before any message)."""
    if handler is None:
        return None

    async def abort(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, details)

    wire = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, **wire)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **wire)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, **wire)
    return grpc.unary_unary_rpc_method_handler(abort, **wire)
