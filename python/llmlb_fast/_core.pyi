"""Type stubs of the native module (checked against it by ``mypy.stubtest`` in CI)."""

from collections.abc import Mapping, Sequence
from typing import Final, final

from typing_extensions import Buffer

__all__ = [
    "HASH_SEED",
    "METRIC_FIELDS",
    "POLICIES",
    "BlockCache",
    "CandidateScore",
    "Completion",
    "Node",
    "NodeStatus",
    "RouteDecision",
    "Router",
    "RouterConfig",
    "__version__",
    "chain_seed",
    "hash_token_blocks",
    "memory_usage",
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
    def set_breaker_state(self, node_id: str, state: str) -> str: ...
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

    def __new__(cls, capacity_blocks: int) -> BlockCache: ...
    @property
    def capacity(self) -> int: ...
    @property
    def cached_blocks(self) -> int: ...
    @property
    def referenced_blocks(self) -> int: ...
    @property
    def evicted(self) -> int: ...
    def match(self, keys: Sequence[int], limit: int) -> int: ...
    def acquire(self, keys: Sequence[int]) -> None: ...
    def release(self, keys: Sequence[int]) -> None: ...
    def insert_unreferenced(self, keys: Sequence[int], free_blocks: int) -> None: ...
    def evict(self, blocks: int) -> int: ...
