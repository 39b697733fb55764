"""Type stubs of the native module (checked against it by ``mypy.stubtest`` in CI)."""

from collections.abc import Mapping, Sequence
from typing import Final, final

from typing_extensions import Buffer

__all__ = [
    "HASH_SEED",
    "METRIC_FIELDS",
    "POLICIES",
    "BlockCache",
    "CanarySplit",
    "CandidateScore",
    "Completion",
    "HttpProxy",
    "KvEventsOutcome",
    "Node",
    "NodeStatus",
    "PrefixCredit",
    "ResponseMeter",
    "RouteDecision",
    "Router",
    "RouterConfig",
    "RoutingKey",
    "__version__",
    "canary_bucket",
    "chain_seed",
    "check_node_address",
    "hash_token_blocks",
    "memory_usage",
    "routing_key",
]

HASH_SEED: Final[int]
METRIC_FIELDS: Final[list[str]]
POLICIES: Final[list[str]]

def chain_seed(model: str | None = None, adapter: str | None = None) -> int:
    """Seed of a prompt's first block: ``HASH_SEED`` when neither is named, else
    ``xxh3_64(model, seed=HASH_SEED)`` then ``xxh3_64(adapter, seed=that)``."""

def hash_token_blocks(
    token_ids: Sequence[int] | Buffer,
    *,
    block_size: int = 16,
    parent: int | None = None,
    model: str | None = None,
    adapter: str | None = None,
) -> list[int]: ...
def check_node_address(node_id: str, address: str) -> None:
    """Raises InvalidInputError unless ``address`` is ``host[:port]`` or
    ``http(s)://host[:port][/path]``."""

def memory_usage(
    metrics: Mapping[str, float | None], *, gpu_memory_bytes: int | None = None
) -> tuple[float | None, float | None]:
    """``(kv_cache_usage, gpu_memory_usage)`` of a report, as the router judges memory.

    Keys are ``METRIC_FIELDS`` names (None: not reported). ``gpu_memory_usage`` is
    used / total, with ``gpu_memory_bytes`` (the node's declared memory) standing in for
    a missing total. A node whose report has no KV figure is skipped when its GPU
    memory use is at or above ``memory_saturation_threshold``; one with a KV figure
    only when its KV use is, and its waiting queue grew or it preempted since its
    previous report. Raises InvalidInputError for an unknown
    name or a value ``update_metrics`` would refuse.
    """

__version__: Final[str]

@final
class RouterConfig:
    """Every argument defaults from the core (``RouterConfig()`` shows the defaults).

    ``policies`` sets policy parameters: ``{"prefix_aware": {"balance_abs_threshold": 4}}``.
    ``weights`` (``policies["llmlb"]``) and ``balance_abs_threshold`` /
    ``balance_rel_threshold`` (``policies["prefix_aware"]``) are older spellings; one
    that disagrees with ``policies`` is an error.
    """

    def __new__(
        cls,
        *,
        policy: str | None = ...,
        token_block_size: int | None = ...,
        char_block_size: int | None = ...,
        chars_per_token: float | None = ...,
        prefix_cache_size: int | None = ...,
        prefix_guess_ttl_s: float | None = ...,
        offloaded_prefix_weight: float | None = ...,
        metrics_ttl_s: float | None = ...,
        request_ttl_s: float | None = ...,
        load_balance_window_s: float | None = ...,
        memory_saturation_threshold: float | None = ...,
        default_output_tokens: int | None = ...,
        max_output_tokens: int | None = ...,
        policies: Mapping[str, Mapping[str, float]] | None = ...,
        seed: int | None = ...,
        weights: Mapping[str, float] | None = ...,
        balance_abs_threshold: float | None = ...,
        balance_rel_threshold: float | None = ...,
    ) -> RouterConfig: ...
    @property
    def policy(self) -> str: ...
    @property
    def token_block_size(self) -> int: ...
    @property
    def char_block_size(self) -> int: ...
    @property
    def chars_per_token(self) -> float: ...
    @property
    def prefix_cache_size(self) -> int: ...
    @property
    def prefix_guess_ttl_s(self) -> float: ...
    @property
    def offloaded_prefix_weight(self) -> float: ...
    @property
    def metrics_ttl_s(self) -> float: ...
    @property
    def request_ttl_s(self) -> float: ...
    @property
    def load_balance_window_s(self) -> float: ...
    @property
    def memory_saturation_threshold(self) -> float: ...
    @property
    def default_output_tokens(self) -> int: ...
    @property
    def max_output_tokens(self) -> int: ...
    @property
    def policies(self) -> dict[str, dict[str, float]]: ...
    @property
    def seed(self) -> int: ...
    @property
    def weights(self) -> dict[str, float]: ...
    @property
    def balance_abs_threshold(self) -> float: ...
    @property
    def balance_rel_threshold(self) -> float: ...
    def to_dict(self) -> dict[str, object]: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __ne__(self, value: object, /) -> bool: ...

@final
class Node:
    def __new__(
        cls,
        id: str,
        address: str = "",
        *,
        peak_tflops: float | None = ...,
        gpu_memory_bytes: int | None = None,
        max_concurrency: int | None = None,
        prefill_tokens_per_s: float | None = None,
        kv_capacity_tokens: int | None = None,
        labels: Mapping[str, str] | None = None,
        models: Sequence[str] | None = None,
    ) -> Node: ...
    @property
    def id(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def peak_tflops(self) -> float: ...
    @property
    def gpu_memory_bytes(self) -> int | None: ...
    @property
    def max_concurrency(self) -> int | None: ...
    @property
    def prefill_tokens_per_s(self) -> float: ...
    @property
    def kv_capacity_tokens(self) -> int | None: ...
    @property
    def labels(self) -> dict[str, str]: ...
    @property
    def models(self) -> list[str]: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __ne__(self, value: object, /) -> bool: ...

@final
class NodeStatus:
    @property
    def node(self) -> Node: ...
    @property
    def id(self) -> str: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def routed_total(self) -> int: ...
    @property
    def breaker_state(self) -> str: ...
    @property
    def consecutive_failures(self) -> int: ...
    @property
    def backlog_tokens(self) -> float: ...
    @property
    def pending_prefill_tokens(self) -> int: ...
    @property
    def cache_trust(self) -> float: ...
    @property
    def metrics(self) -> dict[str, float] | None: ...
    @property
    def metrics_age_s(self) -> float | None: ...
    @property
    def metrics_fresh(self) -> bool: ...
    @property
    def prefix_blocks(self) -> int: ...
    @property
    def kv_events_state(self) -> str:
        """Where the node's prefix credit comes from: "off", "live" or "unconfirmed"."""
    @property
    def kv_engine_blocks(self) -> int:
        """Engine blocks the router knows the node holds (from its KV events)."""

@final
class CandidateScore:
    @property
    def node_id(self) -> str: ...
    @property
    def score(self) -> float | None: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def load(self) -> float: ...
    @property
    def matched_blocks(self) -> int: ...
    @property
    def skipped(self) -> str | None: ...

@final
class RouteDecision:
    @property
    def request_id(self) -> str: ...
    @property
    def node_id(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def policy(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def matched_blocks(self) -> int: ...
    @property
    def matched_tokens(self) -> int: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def prefill_tokens(self) -> int:
        """Uncached prompt tokens counted in the node's prefill backlog."""
    @property
    def block_hashes(self) -> list[int]:
        """The prompt's block chain (what another replica needs to count this decision)."""
    @property
    def text_blocks(self) -> bool:
        """Whether ``block_hashes`` are text (char) blocks."""
    @property
    def candidates(self) -> list[CandidateScore]: ...
    def to_dict(self) -> dict[str, object]: ...

@final
class Completion:
    @property
    def request_id(self) -> str: ...
    @property
    def node_id(self) -> str: ...
    @property
    def policy(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def duration_s(self) -> float: ...
    @property
    def was_probe(self) -> bool: ...
    @property
    def consecutive_failures(self) -> int: ...

_EngineBlockHash = int | bytes
"""An engine's own block hash: an int, or bytes (vLLM's default ``sha256`` hashes)."""

@final
class KvEventsOutcome:
    """What a ``KVEventBatch`` or a single event did to a node's engine map."""

    @property
    def stored_blocks(self) -> int: ...
    @property
    def removed_blocks(self) -> int: ...
    @property
    def skipped_events(self) -> int:
        """Events not placed: a parent never stored, tokens that do not fill the blocks,
        a block size the index cannot align with."""
    @property
    def offloaded_blocks(self) -> int:
        """Blocks stored in a tier below the GPU (credited with
        ``offloaded_prefix_weight``)."""
    @property
    def overflowed(self) -> bool:
        """The node's maps outgrew ``prefix_cache_size`` blocks (removals were lost) and
        started over; what they had confirmed became guesses."""
    @property
    def cleared(self) -> int: ...
    @property
    def unknown_events(self) -> int: ...
    @property
    def data_parallel_rank(self) -> int | None: ...
    @property
    def ts(self) -> float: ...

@final
class PrefixCredit:
    """How many leading blocks of a prompt a node is credited with."""

    @property
    def node_id(self) -> str: ...
    @property
    def blocks(self) -> int:
        """By the main index: confirmed by the node's KV events, or routed there when the
        node publishes none."""
    @property
    def guessed_blocks(self) -> int:
        """Routed to a node with live KV events, not confirmed yet (expires after one to
        two ``prefix_guess_ttl_s``)."""
    @property
    def offloaded_blocks(self) -> int:
        """Held below GPU memory (KV events of another medium); in routing each block
        past ``blocks`` counts for ``offloaded_prefix_weight`` of one."""

@final
class Router:
    def __new__(
        cls,
        config: RouterConfig | None = None,
        nodes: Sequence[Node] | None = None,
        *,
        manual_clock: bool = False,
    ) -> Router: ...
    @property
    def config(self) -> RouterConfig: ...
    def reconfigure(self, config: RouterConfig) -> None: ...
    def upsert_node(self, node: Node) -> bool: ...
    def remove_node(self, node_id: str) -> list[str]: ...
    def update_metrics(
        self,
        node_id: str,
        *,
        gpu_memory_used_bytes: float | None = None,
        gpu_memory_total_bytes: float | None = None,
        kv_cache_memory_bytes: float | None = None,
        compute_memory_bytes: float | None = None,
        kv_cache_usage: float | None = None,
        sm_utilization: float | None = None,
        mem_bandwidth_utilization: float | None = None,
        pcie_tx_bytes_per_s: float | None = None,
        pcie_rx_bytes_per_s: float | None = None,
        num_requests_running: float | None = None,
        num_requests_waiting: float | None = None,
        kv_capacity_tokens: float | None = None,
        prefix_cache_hits_total: float | None = None,
        prefix_cache_queries_total: float | None = None,
        num_preemptions_total: float | None = None,
    ) -> None: ...
    def clear_node_cache(self, node_id: str) -> None: ...
    def set_breaker_state(self, node_id: str, state: str, *, probes: int = 1) -> str: ...
    def apply_remote_route(
        self,
        replica: str,
        request_id: str,
        node_id: str,
        block_hashes: Sequence[int],
        *,
        prompt_tokens: int,
        prefill_tokens: int,
        text_blocks: bool = False,
        matched_tokens: int | None = None,
        routed_at: float | None = None,
    ) -> bool:
        """Counts another router replica's decision (its ``RouteDecision`` figures) as
        in-flight load, prefill backlog and provisional prefix credit, until
        ``apply_remote_completion`` (or ``request_ttl_s``; no outcome is recorded here).
        ``matched_tokens`` (the decision's) counts the prompt in the totals the engine's
        hit counters are checked against (leave it None when applying a decision again,
        as from a snapshot); ``routed_at``: when it was routed, on this router's clock.
        False when already counted. The messages that carry these between processes are
        :mod:`llmlb_fast.replicas` (``ReplicaSync``)."""
    def apply_remote_first_token(self, replica: str, request_id: str) -> bool: ...
    def apply_remote_completion(self, replica: str, request_id: str) -> bool: ...
    def forget_replica(self, replica: str) -> int:
        """A replica is gone: its requests stop counting here; returns how many."""
    @property
    def remote_in_flight_total(self) -> int: ...
    def set_kv_events_state(self, node_id: str, state: str) -> str:
        """ "off" (credit from routed prompts), "live" (from the engine's KV events;
        routed prompts are guesses that expire) or "unconfirmed" (events were lost:
        scored as guesses until the stream is whole). Returns the previous state."""
    def kv_blocks_stored(
        self,
        node_id: str,
        block_hashes: Sequence[_EngineBlockHash],
        parent_block_hash: _EngineBlockHash | None = None,
        token_ids: Sequence[int] | Buffer | None = None,
        *,
        block_size: int | None = None,
        model: str | None = None,
        lora_name: str | None = None,
        medium: str | None = None,
        rank: int = 0,
    ) -> KvEventsOutcome:
        """One ``BlockStored``. With ``token_ids`` (``block_size`` per block, default
        ``token_block_size``) the hashes are the engine's own and the tokens place them
        in the router's chains (seeded by ``model`` and ``lora_name``); without, the
        hashes are the router's chain hashes. A ``medium`` other than GPU (CPU or disk
        offload) is a lower tier, credited with ``offloaded_prefix_weight``."""
    def kv_blocks_removed(
        self,
        node_id: str,
        block_hashes: Sequence[_EngineBlockHash],
        *,
        medium: str | None = None,
        rank: int = 0,
    ) -> KvEventsOutcome:
        """One ``BlockRemoved`` (in the tier of ``medium``): the node loses those blocks
        and every block below."""
    def kv_cache_cleared(self, node_id: str, *, rank: int | None = None) -> None:
        """``AllBlocksCleared`` on one data-parallel rank (None: every rank)."""
    def apply_kv_event_batch(
        self, node_id: str, payload: bytes, *, model: str | None = None
    ) -> KvEventsOutcome:
        """Decodes and applies one msgpack ``KVEventBatch`` (vLLM's map or array
        encoding, SGLang's arrays); ``model`` seeds the chains. A malformed payload
        raises InvalidInputError and changes nothing."""
    def prefix_credit(
        self,
        prompt: str | None = None,
        *,
        token_ids: Sequence[int] | Buffer | None = None,
        block_hashes: Sequence[int] | None = None,
        prompt_tokens: int | None = None,
        model: str | None = None,
        adapter: str | None = None,
    ) -> dict[str, PrefixCredit]:
        """Each node's credit for a prompt (given as to ``route``), by node id."""
    def route(
        self,
        prompt: str | None = None,
        *,
        token_ids: Sequence[int] | Buffer | None = None,
        block_hashes: Sequence[int] | None = None,
        prompt_tokens: int | None = None,
        request_id: str | None = None,
        expected_output_tokens: int | None = None,
        model: str | None = None,
        adapter: str | None = None,
        exclude: Sequence[str] | None = None,
        policy: str | None = None,
    ) -> RouteDecision: ...
    def first_token(self, request_id: str) -> bool: ...
    def complete(
        self,
        request_id: str,
        outcome: str = "ok",
        *,
        ttft_s: float | None = None,
        tokens_in: int = 0,
        tokens_out: int = 0,
    ) -> Completion | None: ...
    def expire_stale(self) -> list[Completion]: ...
    def in_flight_request_ids(self, node_id: str) -> list[str]: ...
    @property
    def in_flight_total(self) -> int: ...
    def nodes(self) -> list[NodeStatus]: ...
    def node_stats(self, node_id: str) -> dict[str, float | int | None]: ...
    def stats(self) -> dict[str, object]: ...
    def now(self) -> float: ...
    def set_time(self, seconds: float) -> None: ...

@final
class BlockCache:
    """The simulator's KV-cache block table (prefix caching, LRU of freed blocks)."""

    def __new__(cls, capacity_blocks: int, *, record_events: bool = False) -> BlockCache: ...
    @property
    def capacity(self) -> int: ...
    @property
    def cached_blocks(self) -> int: ...
    @property
    def referenced_blocks(self) -> int: ...
    @property
    def evicted(self) -> int: ...
    def match(self, keys: Sequence[int], limit: int) -> int: ...
    def acquire(self, keys: Sequence[int], parent: int | None = None) -> None: ...
    def release(self, keys: Sequence[int]) -> None: ...
    def insert_unreferenced(
        self, keys: Sequence[int], free_blocks: int, parent: int | None = None
    ) -> None: ...
    def evict(self, blocks: int) -> int: ...
    def take_events(self) -> list[tuple[str, list[int], int | None]]:
        """With ``record_events``: what entered and left the cache since the last call,
        in order, as ``("stored", keys, parent)`` and ``("removed", keys, None)`` (vLLM's
        ``BlockStored`` / ``BlockRemoved``)."""

@final
class CanarySplit:
    """Which requests a canary policy routes (the core's rule, for every transport)."""

    def __new__(cls, policy: str, percent: float) -> CanarySplit: ...
    @property
    def policy(self) -> str: ...
    @property
    def percent(self) -> float: ...
    def choose(self, key: str, draw: int) -> str | None: ...

def canary_bucket(key: str) -> int: ...

@final
class RoutingKey:
    @property
    def model(self) -> str: ...
    @property
    def prompt(self) -> str | None: ...
    @property
    def token_ids(self) -> list[int] | None: ...
    @property
    def expected_output_tokens(self) -> int | None: ...
    @property
    def stream(self) -> bool: ...
    @property
    def messages_json(self) -> str | None: ...
    @property
    def tools_json(self) -> str | None: ...
    def with_token_ids(self, token_ids: Sequence[int]) -> RoutingKey: ...

def routing_key(path: str, body: bytes) -> RoutingKey:
    """Raises ``llmlb_fast.errors.RequestError`` (a 400) for bad input."""

@final
class ResponseMeter:
    def __new__(cls) -> ResponseMeter: ...
    def feed_stream(self, chunk: bytes) -> None: ...
    def finish_stream(self) -> None: ...
    def feed_whole(self, body: bytes) -> None: ...
    @property
    def events(self) -> int: ...
    @property
    def prompt_tokens(self) -> int | None: ...
    @property
    def tokens_out(self) -> int: ...

_ProxyEvent = tuple[object, ...]
"""("routed", policy, reason, seconds, canary, RouteDecision | None, api_key | None),
("refused", transport, kind),
("first_token", request_id), ("completed", Completion, ttft_s | None),
("tokenizer_fallback", model)."""

@final
class HttpProxy:
    """The Rust data path on a router's core (its own tokio runtime): the HTTP proxy and
    the Envoy ext_proc endpoint picker."""

    def __new__(
        cls,
        router: Router,
        *,
        max_body_bytes: int = 8388608,
        request_timeout_s: float = 600.0,
        connect_timeout_s: float = 2.0,
        max_attempts: int = 3,
        backoff_base_s: float = 0.005,
        backoff_cap_s: float = 0.2,
        pool_size: int = 1024,
        keepalive_timeout_s: float = 60.0,
        models_ttl_s: float = 5.0,
        models_fetch_timeout_s: float = 2.0,
        worker_threads: int = 0,
        tokenizer: object | None = None,
    ) -> HttpProxy: ...
    def start(
        self,
        *,
        http: tuple[str, int] | None = None,
        ext_proc: tuple[str, int] | None = None,
    ) -> None: ...
    def stop(self) -> None: ...
    def set_control(
        self,
        *,
        draining: bool,
        warming_up: bool,
        canary: CanarySplit | None = None,
        tokenized_models: Sequence[str] = ...,
        share_decisions: bool = False,
        api_keys: Sequence[tuple[str, str, float | None, float]] = ...,
        max_in_flight: int | None = None,
        queue_size: int = 0,
        queue_timeout_s: float = 5.0,
        ext_proc_fail_open: bool = False,
    ) -> None: ...
    def migrate(self, node_id: str, request_ids: Sequence[str] | None = None) -> list[str]: ...
    def wait_events(self, timeout_s: float) -> bool: ...
    def take_events(self) -> list[_ProxyEvent]: ...
    @property
    def port(self) -> int | None: ...
    @property
    def ext_proc_port(self) -> int | None: ...
    @property
    def waiting_attempts(self) -> int: ...
    @property
    def dropped_events(self) -> int: ...
