"""llmlb: an LLM-aware load balancer with a Rust routing core.

The public API: build a :class:`Router` from a :class:`RouterConfig` and :class:`Node`
list, then ``route()`` each request and ``complete()`` it when it ends.
"""

from llmlb_fast._core import (
    HASH_SEED,
    POLICIES,
    CandidateScore,
    Completion,
    KvEventsOutcome,
    Node,
    NodeStatus,
    PrefixCredit,
    RouteDecision,
    Router,
    RouterConfig,
    __version__,
    chain_seed,
    hash_token_blocks,
)
from llmlb_fast.errors import (
    ConfigError,
    DuplicateRequestError,
    InvalidInputError,
    LlmlbError,
    NoAvailableNodeError,
    TableFullError,
    UnknownModelError,
    UnknownNodeError,
)

__all__ = [
    "HASH_SEED",
    "POLICIES",
    "CandidateScore",
    "Completion",
    "ConfigError",
    "DuplicateRequestError",
    "InvalidInputError",
    "KvEventsOutcome",
    "LlmlbError",
    "NoAvailableNodeError",
    "Node",
    "NodeStatus",
    "PrefixCredit",
    "RouteDecision",
    "Router",
    "RouterConfig",
    "TableFullError",
    "UnknownModelError",
    "UnknownNodeError",
    "__version__",
    "chain_seed",
    "hash_token_blocks",
]
