"""Envoy ``envoy.service.ext_proc.v3.ExternalProcessor`` endpoint picker.

Works like the Gateway API Inference Extension's endpoint picker: Envoy streams the
request headers and (buffered) body of each HTTP request; we build the routing key, ask
the router, and answer with the ``x-gateway-destination-endpoint`` header and the same
value in dynamic metadata under ``envoy.lb``, which Envoy-based gateways use to send the
request to that pod. Envoy then streams the response headers and body back; at the end
of the response the request is completed in the router (outcome from the status).

Envoy filter settings this expects: ``request_header_mode: SEND``,
``request_body_mode: BUFFERED``, ``response_header_mode: SEND``,
``response_body_mode: STREAMED`` (see docs/proxy.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import grpc
from envoy.config.core.v3 import base_pb2  # type: ignore[import-untyped]
from envoy.service.ext_proc.v3 import (  # type: ignore[import-untyped]
    external_processor_pb2 as pb,
)
from envoy.service.ext_proc.v3 import (
    external_processor_pb2_grpc as pb_grpc,
)
from envoy.type.v3 import http_status_pb2  # type: ignore[import-untyped]
from google.protobuf import struct_pb2

from llmlb_fast._core import ResponseMeter, RouteDecision
from llmlb_fast.errors import LlmlbError
from llmlb_fast.service.routing import EXT_PROC, RoutingService
from llmlb_fast.transports.http_errors import ProxyError, body_too_large, route_error
from llmlb_fast.transports.proxy.routing_key import (
    CHAT_PATH,
    RoutingKey,
    routing_key,
    tokenized,
)
from llmlb_fast.transports.proxy.settings import ProxySettings

log = logging.getLogger("llmlb.ext_proc")

DESTINATION_HEADER = "x-gateway-destination-endpoint"
METADATA_NAMESPACE = "envoy.lb"
REQUEST_ID_HEADER = "x-llmlb-request-id"
NODE_HEADER = "x-llmlb-node"
# Non-streaming response bodies are kept (for their usage block) up to this size.
MAX_KEPT_RESPONSE = 1 << 20


def destination(address: str) -> str:
    """``http://10.0.0.5:8000/`` -> ``10.0.0.5:8000`` (the form the header carries)."""
    netloc = urlsplit(address).netloc if "//" in address else address
    return netloc.rstrip("/")


def header_map(headers: base_pb2.HeaderMap) -> dict[str, str]:
    """Envoy sends ``raw_value`` (bytes) in current versions and ``value`` in older ones."""
    return {
        h.key.lower(): h.raw_value.decode("latin-1") if h.raw_value else h.value
        for h in headers.headers
    }


def set_header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def immediate(error: ProxyError) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=error.status),
            body=error.body(),
            headers=pb.HeaderMutation(set_headers=[set_header("content-type", "application/json")]),
            details=error.code,
        )
    )


class Exchange:
    """One HTTP request/response seen through one ext_proc stream."""

    def __init__(self, picker: EndpointPicker) -> None:
        self._picker = picker
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._decision: RouteDecision | None = None
        self._routed_at = 0.0
        self._status = 0
        self._streaming = False
        self._meter = ResponseMeter()
        self._first_byte_at: float | None = None
        self._kept = bytearray()

    def handle(self, message: pb.ProcessingRequest) -> pb.ProcessingResponse | None:
        kind = message.WhichOneof("request")
        if kind == "request_headers":
            return self._request_headers(message.request_headers)
        if kind == "request_body":
            return self._request_body(message.request_body)
        if kind == "request_trailers":
            return pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
        if kind == "response_headers":
            return self._response_headers(message.response_headers)
        if kind == "response_body":
            return self._response_body(message.response_body)
        if kind == "response_trailers":
            self.finish()
            return pb.ProcessingResponse(response_trailers=pb.TrailersResponse())
        return None

    def _request_headers(self, headers: pb.HttpHeaders) -> pb.ProcessingResponse:
        self._headers = header_map(headers.headers)
        length = self._headers.get("content-length")
        limit = self._picker.settings.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            return immediate(body_too_large(limit))
        if not headers.end_of_stream:
            return pb.ProcessingResponse(request_headers=pb.HeadersResponse())
        # No body (a GET): route without a prompt.
        return self._pick(
            None,
            lambda common: pb.ProcessingResponse(
                request_headers=pb.HeadersResponse(response=common)
            ),
        )

    def _request_body(self, body: pb.HttpBody) -> pb.ProcessingResponse:
        self._body += body.body
        limit = self._picker.settings.max_body_bytes
        if len(self._body) > limit:
            return immediate(body_too_large(limit))
        if not body.end_of_stream:
            return pb.ProcessingResponse(request_body=pb.BodyResponse())
        try:
            key = self._routing_key()
        except ProxyError as error:
            return immediate(error)
        return self._pick(
            key, lambda common: pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))
        )

    def _routing_key(self) -> RoutingKey:
        path = self._headers.get(":path", "").split("?", 1)[0]
        key = routing_key(
            CHAT_PATH if path.endswith("/chat/completions") else path, bytes(self._body)
        )
        tokenizer = self._picker.service.tokenizer(key.model)
        if tokenizer is None:
            return key
        # Envoy waits on this call for its route either way; the stream runs on the
        # server's loop, so a long prompt's tokens cost it that time (as they would a
        # worker thread's).
        engine_key = tokenized(key, tokenizer)
        if engine_key is None:
            self._picker.service.count_tokenizer_fallback(key.model)
            return key
        return engine_key

    def _pick(
        self,
        key: RoutingKey | None,
        respond: Callable[[pb.CommonResponse], pb.ProcessingResponse],
    ) -> pb.ProcessingResponse:
        try:
            decision = self._picker.service.route(
                EXT_PROC,
                key.prompt if key else None,
                token_ids=key.token_ids if key else None,
                session_id=self._headers.get("x-session-id", ""),
                expected_output_tokens=key.expected_output_tokens if key else None,
                model=key.model if key else None,
            ).decision
        except (LlmlbError, ValueError, TypeError, OverflowError) as exc:
            return immediate(route_error(exc, key.model if key else ""))
        self._decision = decision
        self._routed_at = time.perf_counter()
        endpoint = destination(decision.address)
        common = pb.CommonResponse(
            header_mutation=pb.HeaderMutation(
                set_headers=[
                    set_header(DESTINATION_HEADER, endpoint),
                    set_header(REQUEST_ID_HEADER, decision.request_id),
                    set_header(NODE_HEADER, decision.node_id),
                ]
            ),
            clear_route_cache=True,
        )
        response = respond(common)
        metadata = struct_pb2.Struct()
        metadata.update({METADATA_NAMESPACE: {DESTINATION_HEADER: endpoint}})
        response.dynamic_metadata.CopyFrom(metadata)
        return response

    def _response_headers(self, headers: pb.HttpHeaders) -> pb.ProcessingResponse:
        values = header_map(headers.headers)
        status = values.get(":status", "0")
        self._status = int(status) if status.isdigit() else 0
        self._streaming = values.get("content-type", "").startswith("text/event-stream")
        if headers.end_of_stream:
            self.finish()
        return pb.ProcessingResponse(response_headers=pb.HeadersResponse())

    def _response_body(self, body: pb.HttpBody) -> pb.ProcessingResponse:
        if self._streaming:
            if self._first_byte_at is None and body.body:
                self._first_byte_at = time.perf_counter()
                if self._decision is not None:
                    self._picker.service.first_token(self._decision.request_id)
            self._meter.feed_stream(body.body)
        elif len(self._kept) + len(body.body) <= MAX_KEPT_RESPONSE:
            self._kept += body.body
        if body.end_of_stream:
            self.finish()
        return pb.ProcessingResponse(response_body=pb.BodyResponse())

    def finish(self) -> None:
        """Completes the request from what the response showed (idempotent)."""
        if self._decision is None:
            return
        decision, self._decision = self._decision, None
        if self._streaming:
            self._meter.finish_stream()
        else:
            self._meter.feed_whole(bytes(self._kept))
        outcome = outcome_of(self._status)
        ttft = None
        if self._streaming and self._first_byte_at is not None:
            ttft = self._first_byte_at - self._routed_at
        tokens_in = self._meter.prompt_tokens or decision.prompt_tokens
        self._picker.service.complete(
            decision.request_id,
            outcome,
            ttft_s=ttft,
            tokens_in=tokens_in,
            tokens_out=self._meter.tokens_out,
        )


def outcome_of(status: int) -> str:
    """0 = the stream ended before any response header: the upstream never answered."""
    if status in (408, 504):
        return "timeout"
    if status == 0 or status >= 500:
        return "error"
    return "ok"


class EndpointPicker:
    """The servicer. Register with :func:`add_to_server` on a ``grpc.aio`` server."""

    def __init__(self, service: RoutingService, settings: ProxySettings | None = None) -> None:
        self.service = service
        self.settings = settings or ProxySettings()

    async def Process(
        self,
        request_iterator: AsyncIterator[pb.ProcessingRequest],
        context: grpc.aio.ServicerContext[pb.ProcessingRequest, pb.ProcessingResponse],
    ) -> AsyncIterator[pb.ProcessingResponse]:
        exchange = Exchange(self)
        try:
            async for message in request_iterator:
                response = exchange.handle(message)
                if response is not None:
                    yield response
        finally:
            # Stream closed early (Envoy reset, client gone): release the slot anyway.
            exchange.finish()


def add_to_server(picker: EndpointPicker, server: grpc.aio.Server) -> None:
    pb_grpc.add_ExternalProcessorServicer_to_server(picker, server)
