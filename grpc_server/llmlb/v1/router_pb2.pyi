from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_OK: _ClassVar[Outcome]
    OUTCOME_ERROR: _ClassVar[Outcome]
    OUTCOME_TIMEOUT: _ClassVar[Outcome]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_BREAKER_OPENED: _ClassVar[EventKind]
    EVENT_KIND_BREAKER_HALF_OPENED: _ClassVar[EventKind]
    EVENT_KIND_BREAKER_CLOSED: _ClassVar[EventKind]
    EVENT_KIND_CONFIG_RELOADED: _ClassVar[EventKind]
    EVENT_KIND_CONFIG_REJECTED: _ClassVar[EventKind]
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_OK: Outcome
OUTCOME_ERROR: Outcome
OUTCOME_TIMEOUT: Outcome
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_BREAKER_OPENED: EventKind
EVENT_KIND_BREAKER_HALF_OPENED: EventKind
EVENT_KIND_BREAKER_CLOSED: EventKind
EVENT_KIND_CONFIG_RELOADED: EventKind
EVENT_KIND_CONFIG_REJECTED: EventKind

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("request_id", "model", "text", "token_ids", "session_id", "expected_output_tokens", "include_candidates", "adapter")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    text: str
    token_ids: TokenIds
    session_id: str
    expected_output_tokens: int
    include_candidates: bool
    adapter: str
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Union[TokenIds, _Mapping]] = ..., session_id: _Optional[str] = ..., expected_output_tokens: _Optional[int] = ..., include_candidates: _Optional[bool] = ..., adapter: _Optional[str] = ...) -> None: ...

class FirstTokenRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class FirstTokenResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CandidateScore(_message.Message):
    __slots__ = ("node_id", "score", "in_flight", "load", "matched_blocks", "skipped")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    MATCHED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    score: float
    in_flight: int
    load: float
    matched_blocks: int
    skipped: str
    def __init__(self, node_id: _Optional[str] = ..., score: _Optional[float] = ..., in_flight: _Optional[int] = ..., load: _Optional[float] = ..., matched_blocks: _Optional[int] = ..., skipped: _Optional[str] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("request_id", "node_id", "address", "policy", "reason", "matched_prefix_tokens", "matched_blocks", "prompt_tokens", "candidates", "canary")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MATCHED_PREFIX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MATCHED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    node_id: str
    address: str
    policy: str
    reason: str
    matched_prefix_tokens: int
    matched_blocks: int
    prompt_tokens: int
    candidates: _containers.RepeatedCompositeFieldContainer[CandidateScore]
    canary: bool
    def __init__(self, request_id: _Optional[str] = ..., node_id: _Optional[str] = ..., address: _Optional[str] = ..., policy: _Optional[str] = ..., reason: _Optional[str] = ..., matched_prefix_tokens: _Optional[int] = ..., matched_blocks: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., candidates: _Optional[_Iterable[_Union[CandidateScore, _Mapping]]] = ..., canary: _Optional[bool] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("request_id", "outcome", "ttft_seconds", "tokens_in", "tokens_out")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    TTFT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_IN_FIELD_NUMBER: _ClassVar[int]
    TOKENS_OUT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    outcome: Outcome
    ttft_seconds: float
    tokens_in: int
    tokens_out: int
    def __init__(self, request_id: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., ttft_seconds: _Optional[float] = ..., tokens_in: _Optional[int] = ..., tokens_out: _Optional[int] = ...) -> None: ...

class CompleteResponse(_message.Message):
    __slots__ = ("node_id", "policy", "duration_seconds", "was_probe")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WAS_PROBE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    policy: str
    duration_seconds: float
    was_probe: bool
    def __init__(self, node_id: _Optional[str] = ..., policy: _Optional[str] = ..., duration_seconds: _Optional[float] = ..., was_probe: _Optional[bool] = ...) -> None: ...

class StreamCall(_message.Message):
    __slots__ = ("tag", "route", "complete", "first_token")
    TAG_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tag: int
    route: RouteRequest
    complete: CompleteRequest
    first_token: FirstTokenRequest
    def __init__(self, tag: _Optional[int] = ..., route: _Optional[_Union[RouteRequest, _Mapping]] = ..., complete: _Optional[_Union[CompleteRequest, _Mapping]] = ..., first_token: _Optional[_Union[FirstTokenRequest, _Mapping]] = ...) -> None: ...

class StreamError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class StreamResult(_message.Message):
    __slots__ = ("tag", "route", "complete", "error", "first_token")
    TAG_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tag: int
    route: RouteResponse
    complete: CompleteResponse
    error: StreamError
    first_token: FirstTokenResponse
    def __init__(self, tag: _Optional[int] = ..., route: _Optional[_Union[RouteResponse, _Mapping]] = ..., complete: _Optional[_Union[CompleteResponse, _Mapping]] = ..., error: _Optional[_Union[StreamError, _Mapping]] = ..., first_token: _Optional[_Union[FirstTokenResponse, _Mapping]] = ...) -> None: ...

class RouteStreamRequest(_message.Message):
    __slots__ = ("calls",)
    CALLS_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[StreamCall]
    def __init__(self, calls: _Optional[_Iterable[_Union[StreamCall, _Mapping]]] = ...) -> None: ...

class RouteStreamReply(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[StreamResult]
    def __init__(self, results: _Optional[_Iterable[_Union[StreamResult, _Mapping]]] = ...) -> None: ...

class NodeSpec(_message.Message):
    __slots__ = ("id", "address", "peak_tflops", "gpu_memory_bytes", "max_concurrency", "prefill_tokens_per_s", "kv_capacity_tokens", "labels", "models")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PEAK_TFLOPS_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    KV_CAPACITY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    peak_tflops: float
    gpu_memory_bytes: int
    max_concurrency: int
    prefill_tokens_per_s: float
    kv_capacity_tokens: int
    labels: _containers.ScalarMap[str, str]
    models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., peak_tflops: _Optional[float] = ..., gpu_memory_bytes: _Optional[int] = ..., max_concurrency: _Optional[int] = ..., prefill_tokens_per_s: _Optional[float] = ..., kv_capacity_tokens: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., models: _Optional[_Iterable[str]] = ...) -> None: ...

class KvEventsSource(_message.Message):
    __slots__ = ("endpoint", "topic", "replay_endpoint", "model", "data_parallel_size")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    REPLAY_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATA_PARALLEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    topic: str
    replay_endpoint: str
    model: str
    data_parallel_size: int
    def __init__(self, endpoint: _Optional[str] = ..., topic: _Optional[str] = ..., replay_endpoint: _Optional[str] = ..., model: _Optional[str] = ..., data_parallel_size: _Optional[int] = ...) -> None: ...

class RegisterNodeRequest(_message.Message):
    __slots__ = ("node", "kv_events")
    NODE_FIELD_NUMBER: _ClassVar[int]
    KV_EVENTS_FIELD_NUMBER: _ClassVar[int]
    node: NodeSpec
    kv_events: KvEventsSource
    def __init__(self, node: _Optional[_Union[NodeSpec, _Mapping]] = ..., kv_events: _Optional[_Union[KvEventsSource, _Mapping]] = ...) -> None: ...

class RegisterNodeResponse(_message.Message):
    __slots__ = ("created",)
    CREATED_FIELD_NUMBER: _ClassVar[int]
    created: bool
    def __init__(self, created: _Optional[bool] = ...) -> None: ...

class DeregisterNodeRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class DeregisterNodeResponse(_message.Message):
    __slots__ = ("in_flight_request_ids",)
    IN_FLIGHT_REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    in_flight_request_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, in_flight_request_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeState(_message.Message):
    __slots__ = ("node", "in_flight", "routed_total", "breaker_state", "consecutive_failures", "backlog_tokens", "metrics_fresh", "metrics_age_seconds", "prefix_blocks", "metrics", "kv_events_state", "kv_engine_blocks")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NODE_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    ROUTED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BREAKER_STATE_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_TOKENS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FRESH_FIELD_NUMBER: _ClassVar[int]
    METRICS_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    KV_EVENTS_STATE_FIELD_NUMBER: _ClassVar[int]
    KV_ENGINE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    node: NodeSpec
    in_flight: int
    routed_total: int
    breaker_state: str
    consecutive_failures: int
    backlog_tokens: float
    metrics_fresh: bool
    metrics_age_seconds: float
    prefix_blocks: int
    metrics: _containers.ScalarMap[str, float]
    kv_events_state: str
    kv_engine_blocks: int
    def __init__(self, node: _Optional[_Union[NodeSpec, _Mapping]] = ..., in_flight: _Optional[int] = ..., routed_total: _Optional[int] = ..., breaker_state: _Optional[str] = ..., consecutive_failures: _Optional[int] = ..., backlog_tokens: _Optional[float] = ..., metrics_fresh: _Optional[bool] = ..., metrics_age_seconds: _Optional[float] = ..., prefix_blocks: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., kv_events_state: _Optional[str] = ..., kv_engine_blocks: _Optional[int] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeState]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeState, _Mapping]]] = ...) -> None: ...

class NodeMetrics(_message.Message):
    __slots__ = ("node_id", "gpu_memory_used_bytes", "gpu_memory_total_bytes", "kv_cache_memory_bytes", "compute_memory_bytes", "kv_cache_usage", "sm_utilization", "mem_bandwidth_utilization", "pcie_tx_bytes_per_s", "pcie_rx_bytes_per_s", "num_requests_running", "num_requests_waiting", "kv_capacity_tokens", "prefix_cache_hit_rate", "cache_reset", "prefix_cache_hits_total", "prefix_cache_queries_total", "num_preemptions_total")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USAGE_FIELD_NUMBER: _ClassVar[int]
    SM_UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    MEM_BANDWIDTH_UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    PCIE_TX_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    PCIE_RX_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    NUM_REQUESTS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    NUM_REQUESTS_WAITING_FIELD_NUMBER: _ClassVar[int]
    KV_CAPACITY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    CACHE_RESET_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_HITS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_QUERIES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    NUM_PREEMPTIONS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    gpu_memory_used_bytes: float
    gpu_memory_total_bytes: float
    kv_cache_memory_bytes: float
    compute_memory_bytes: float
    kv_cache_usage: float
    sm_utilization: float
    mem_bandwidth_utilization: float
    pcie_tx_bytes_per_s: float
    pcie_rx_bytes_per_s: float
    num_requests_running: float
    num_requests_waiting: float
    kv_capacity_tokens: float
    prefix_cache_hit_rate: float
    cache_reset: bool
    prefix_cache_hits_total: float
    prefix_cache_queries_total: float
    num_preemptions_total: float
    def __init__(self, node_id: _Optional[str] = ..., gpu_memory_used_bytes: _Optional[float] = ..., gpu_memory_total_bytes: _Optional[float] = ..., kv_cache_memory_bytes: _Optional[float] = ..., compute_memory_bytes: _Optional[float] = ..., kv_cache_usage: _Optional[float] = ..., sm_utilization: _Optional[float] = ..., mem_bandwidth_utilization: _Optional[float] = ..., pcie_tx_bytes_per_s: _Optional[float] = ..., pcie_rx_bytes_per_s: _Optional[float] = ..., num_requests_running: _Optional[float] = ..., num_requests_waiting: _Optional[float] = ..., kv_capacity_tokens: _Optional[float] = ..., prefix_cache_hit_rate: _Optional[float] = ..., cache_reset: _Optional[bool] = ..., prefix_cache_hits_total: _Optional[float] = ..., prefix_cache_queries_total: _Optional[float] = ..., num_preemptions_total: _Optional[float] = ...) -> None: ...

class ReportMetricsResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("kinds",)
    KINDS_FIELD_NUMBER: _ClassVar[int]
    kinds: _containers.RepeatedScalarFieldContainer[EventKind]
    def __init__(self, kinds: _Optional[_Iterable[_Union[EventKind, str]]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("kind", "node_id", "from_state", "to_state", "reason", "in_flight_request_ids", "unix_time", "sequence")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    UNIX_TIME_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    kind: EventKind
    node_id: str
    from_state: str
    to_state: str
    reason: str
    in_flight_request_ids: _containers.RepeatedScalarFieldContainer[str]
    unix_time: float
    sequence: int
    def __init__(self, kind: _Optional[_Union[EventKind, str]] = ..., node_id: _Optional[str] = ..., from_state: _Optional[str] = ..., to_state: _Optional[str] = ..., reason: _Optional[str] = ..., in_flight_request_ids: _Optional[_Iterable[str]] = ..., unix_time: _Optional[float] = ..., sequence: _Optional[int] = ...) -> None: ...
