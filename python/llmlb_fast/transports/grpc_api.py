"""The ``llmlb.v1.Router`` gRPC servicer: translates messages to ``RoutingService`` calls
and errors to gRPC status codes. The wire types come from ``grpc_server`` (the
``llmlb.v1`` stubs), which imports nothing from llmlb_fast."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NoReturn, TypeAlias

import grpc

from grpc_server.llmlb.v1 import router_pb2 as pb
from grpc_server.llmlb.v1 import router_pb2_grpc as pb_grpc
from llmlb_fast._core import (
    METRIC_FIELDS,
    Completion,
    Node,
    NodeStatus,
    RouteDecision,
    check_node_address,
)
from llmlb_fast.config import KvEventsConfig
from llmlb_fast.errors import (
    DuplicateRequestError,
    LlmlbError,
    NoAvailableNodeError,
    TableFullError,
    UnknownModelError,
    UnknownNodeError,
)
from llmlb_fast.service import events
from llmlb_fast.service.events import Event
from llmlb_fast.service.routing import GRPC, DrainingError, Routed, RoutingService

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
OUTCOMES = {pb.OUTCOME_OK: "ok", pb.OUTCOME_ERROR: "error", pb.OUTCOME_TIMEOUT: "timeout"}
# Service event kind -> wire enum: "breaker_opened" is EVENT_KIND_BREAKER_OPENED.
EVENT_KINDS: dict[str, pb.EventKind] = {
    kind: getattr(pb, f"EVENT_KIND_{kind.upper()}") for kind in events.EVENT_KINDS
}
EVENT_NAMES = {value: name for name, value in EVENT_KINDS.items()}
# What Route and Complete may raise for a bad or unlucky request (answered, not crashed).
REQUEST_ERRORS = (LlmlbError, ValueError, KeyError, TypeError, OverflowError)
_OPTIONAL_SPEC_FIELDS = (
    "peak_tflops",
    "gpu_memory_bytes",
    "max_concurrency",
    "prefill_tokens_per_s",
    "kv_capacity_tokens",
)


class UnknownRequestError(LlmlbError, KeyError):
    """Complete named a request that is not in flight (unknown or already completed)."""

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"request {request_id!r} is not in flight (unknown, already completed or expired)"
        )

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class EmptyStreamCallError(ValueError):
    def __init__(self) -> None:
        super().__init__("stream call has no route, first_token or complete")


class InvalidOutcomeError(ValueError):
    def __init__(self) -> None:
        super().__init__("outcome must be OUTCOME_OK, OUTCOME_ERROR or OUTCOME_TIMEOUT")


def status_code_of(error: Exception) -> grpc.StatusCode:
    if isinstance(error, DuplicateRequestError):
        return grpc.StatusCode.ALREADY_EXISTS
    if isinstance(error, UnknownNodeError | UnknownRequestError | UnknownModelError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(error, DrainingError):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(error, NoAvailableNodeError):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(error, TableFullError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(error, ValueError | TypeError | OverflowError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


def set_route_fields(response: pb.RouteResponse, routed: Routed, candidates: bool) -> None:
    """Fills a RouteResponse in place (a stream result's field needs no copy)."""
    d: RouteDecision = routed.decision
    response.request_id = d.request_id
    response.node_id = d.node_id
    response.address = d.address
    response.policy = d.policy
    response.reason = d.reason
    response.matched_prefix_tokens = d.matched_tokens
    response.matched_blocks = d.matched_blocks
    response.prompt_tokens = d.prompt_tokens
    response.canary = routed.canary
    if candidates:
        # add() fills the repeated field in place: half the cost of building a list.
        add = response.candidates.add
        for c in d.candidates:
            add(
                node_id=c.node_id,
                score=c.score,
                in_flight=c.in_flight,
                load=c.load,
                matched_blocks=c.matched_blocks,
                skipped=c.skipped or "",
            )


def set_complete_fields(response: pb.CompleteResponse, completion: Completion) -> None:
    response.node_id = completion.node_id
    response.policy = completion.policy
    response.duration_seconds = completion.duration_s
    response.was_probe = completion.was_probe


def node_from_spec(spec: pb.NodeSpec) -> Node:
    if not spec.id:
        raise ValueError("node.id is required")
    check_node_address(spec.id, spec.address)
    optional = {name: getattr(spec, name) for name in _OPTIONAL_SPEC_FIELDS if spec.HasField(name)}
    return Node(
        spec.id, spec.address, labels=dict(spec.labels), models=list(spec.models), **optional
    )


def kv_events_from(request: pb.RegisterNodeRequest) -> KvEventsConfig:
    """Raises ValueError (pydantic's ValidationError) naming what is wrong."""
    source = request.kv_events
    return KvEventsConfig(
        endpoint=source.endpoint,
        topic=source.topic,
        replay_endpoint=source.replay_endpoint if source.HasField("replay_endpoint") else None,
        model=source.model if source.HasField("model") else None,
        data_parallel_size=source.data_parallel_size or 1,
    )


def node_spec(node: Node) -> pb.NodeSpec:
    return pb.NodeSpec(
        id=node.id,
        address=node.address,
        peak_tflops=node.peak_tflops,
        gpu_memory_bytes=node.gpu_memory_bytes,
        max_concurrency=node.max_concurrency,
        prefill_tokens_per_s=node.prefill_tokens_per_s,
        kv_capacity_tokens=node.kv_capacity_tokens,
        labels=node.labels,
        models=node.models,
    )


def node_state(status: NodeStatus) -> pb.NodeState:
    return pb.NodeState(
        node=node_spec(status.node),
        in_flight=status.in_flight,
        routed_total=status.routed_total,
        breaker_state=status.breaker_state,
        consecutive_failures=status.consecutive_failures,
        backlog_tokens=status.backlog_tokens,
        metrics_fresh=status.metrics_fresh,
        metrics_age_seconds=status.metrics_age_s,
        prefix_blocks=status.prefix_blocks,
        metrics=status.metrics or {},
        kv_events_state=status.kv_events_state,
        kv_engine_blocks=status.kv_engine_blocks,
    )


def event_message(event: Event) -> pb.Event:
    return pb.Event(
        kind=EVENT_KINDS[event.kind],
        node_id=event.node_id,
        from_state=event.from_state,
        to_state=event.to_state,
        reason=event.reason,
        in_flight_request_ids=event.in_flight_request_ids,
        unix_time=event.unix_time,
        sequence=event.sequence,
    )


async def _abort(context: Context, error: Exception) -> NoReturn:
    await context.abort(status_code_of(error), str(error))
    raise AssertionError("unreachable: abort raises")


class RouterServicer(pb_grpc.RouterServicer):
    def __init__(self, service: RoutingService) -> None:
        self.service = service

    def _routed(self, request: pb.RouteRequest) -> Routed:
        """Raises the errors ``status_code_of`` maps (shared by Route and RouteStream)."""
        which = request.WhichOneof("prompt")
        return self.service.route(
            GRPC,
            request.text if which == "text" else None,
            token_ids=request.token_ids.ids if which == "token_ids" else None,
            request_id=request.request_id or None,
            session_id=request.session_id,
            expected_output_tokens=request.expected_output_tokens
            if request.HasField("expected_output_tokens")
            else None,
            model=request.model or None,
            adapter=request.adapter or None,
        )

    def first_token(self, request: pb.FirstTokenRequest) -> pb.FirstTokenResponse:
        if not self.service.first_token(request.request_id):
            raise UnknownRequestError(request.request_id)
        return pb.FirstTokenResponse()

    def _completion(self, request: pb.CompleteRequest) -> Completion:
        outcome = OUTCOMES.get(request.outcome)
        if outcome is None:
            raise InvalidOutcomeError()
        completion = self.service.complete(
            request.request_id,
            outcome,
            ttft_s=request.ttft_seconds if request.HasField("ttft_seconds") else None,
            tokens_in=request.tokens_in,
            tokens_out=request.tokens_out,
        )
        if completion is None:
            raise UnknownRequestError(request.request_id)
        return completion

    def route(self, request: pb.RouteRequest) -> pb.RouteResponse:
        response = pb.RouteResponse()
        set_route_fields(response, self._routed(request), request.include_candidates)
        return response

    def complete(self, request: pb.CompleteRequest) -> pb.CompleteResponse:
        response = pb.CompleteResponse()
        set_complete_fields(response, self._completion(request))
        return response

    def stream_reply(self, batch: pb.RouteStreamRequest) -> pb.RouteStreamReply:
        """The reply to one RouteStream batch: a result per call, in order."""
        reply = pb.RouteStreamReply()
        add = reply.results.add
        for call in batch.calls:
            self._fill_stream_result(add(tag=call.tag), call)
        return reply

    def _fill_stream_result(self, result: pb.StreamResult, call: pb.StreamCall) -> None:
        """A refused call gets an error result; the stream goes on."""
        try:
            which = call.WhichOneof("call")
            if which == "route":
                routed = self._routed(call.route)
                set_route_fields(result.route, routed, call.route.include_candidates)
            elif which == "complete":
                set_complete_fields(result.complete, self._completion(call.complete))
            elif which == "first_token":
                result.first_token.CopyFrom(self.first_token(call.first_token))
            else:
                raise EmptyStreamCallError()
        except REQUEST_ERRORS as error:
            result.error.code = status_code_of(error).value[0]
            result.error.message = str(error)

    async def Route(self, request: pb.RouteRequest, context: Context) -> pb.RouteResponse:
        try:
            return self.route(request)
        except REQUEST_ERRORS as error:
            await _abort(context, error)

    async def FirstToken(
        self, request: pb.FirstTokenRequest, context: Context
    ) -> pb.FirstTokenResponse:
        try:
            return self.first_token(request)
        except REQUEST_ERRORS as error:
            await _abort(context, error)

    async def Complete(self, request: pb.CompleteRequest, context: Context) -> pb.CompleteResponse:
        try:
            return self.complete(request)
        except REQUEST_ERRORS as error:
            await _abort(context, error)

    async def RouteStream(
        self, request_iterator: AsyncIterator[pb.RouteStreamRequest], context: Context
    ) -> AsyncIterator[pb.RouteStreamReply]:
        async for batch in request_iterator:
            yield self.stream_reply(batch)

    async def RegisterNode(
        self, request: pb.RegisterNodeRequest, context: Context
    ) -> pb.RegisterNodeResponse:
        try:
            node = node_from_spec(request.node)
            kv_events = kv_events_from(request) if request.HasField("kv_events") else None
            created = self.service.register_node(node, kv_events)
        except (LlmlbError, ValueError, TypeError, OverflowError) as error:
            await _abort(context, error)
        return pb.RegisterNodeResponse(created=created)

    async def DeregisterNode(
        self, request: pb.DeregisterNodeRequest, context: Context
    ) -> pb.DeregisterNodeResponse:
        try:
            in_flight = self.service.deregister_node(request.node_id)
        except (LlmlbError, KeyError) as error:
            await _abort(context, error)
        return pb.DeregisterNodeResponse(in_flight_request_ids=in_flight)

    async def ListNodes(
        self, request: pb.ListNodesRequest, context: Context
    ) -> pb.ListNodesResponse:
        return pb.ListNodesResponse(nodes=[node_state(s) for s in self.service.nodes()])

    async def ReportMetrics(
        self,
        request_iterator: AsyncIterator[pb.NodeMetrics],
        context: Context,
    ) -> pb.ReportMetricsResponse:
        accepted = 0
        async for sample in request_iterator:
            metrics = {
                name: getattr(sample, name) for name in METRIC_FIELDS if sample.HasField(name)
            }
            hit_rate = (
                sample.prefix_cache_hit_rate if sample.HasField("prefix_cache_hit_rate") else None
            )
            try:
                self.service.report_metrics(
                    sample.node_id,
                    metrics,
                    engine_hit_rate=hit_rate,
                    cache_reset=sample.cache_reset,
                )
            except (LlmlbError, ValueError, KeyError) as error:
                await context.abort(
                    status_code_of(error),
                    f"sample {accepted} of this stream (node {sample.node_id!r}) refused: {error}; "
                    f"{accepted} earlier samples were applied",
                )
            accepted += 1
        return pb.ReportMetricsResponse(accepted=accepted)

    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: Context
    ) -> AsyncIterator[pb.Event]:
        unknown = [kind for kind in request.kinds if kind not in EVENT_NAMES]
        if unknown:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown event kinds {unknown}")
        kinds = frozenset(EVENT_NAMES[kind] for kind in request.kinds)
        subscription = self.service.bus.subscribe(kinds)
        try:
            # Headers go out once subscribed: a client awaiting them misses no event.
            await context.send_initial_metadata(())
        except BaseException:
            subscription.close()
            raise
        async for event in subscription.events():
            yield event_message(event)
