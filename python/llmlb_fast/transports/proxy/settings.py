"""Tunables of the HTTP proxy and the ext_proc endpoint picker."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from llmlb_fast.config import ProxyConfig


@dataclass(frozen=True, slots=True)
class ProxySettings:
    # Largest request body accepted (413 beyond it).
    max_body_bytes: int = 8 * 1024 * 1024
    # How long an attempt may wait for its first byte (504), and a stream may go quiet
    # between two chunks (then it is cut and booked as a timeout).
    request_timeout_s: float = 600.0
    connect_timeout_s: float = 2.0
    # Attempts per request (1 = no retry); only connect errors and 5xx before the first byte.
    max_attempts: int = 3
    backoff_base_s: float = 0.005
    backoff_cap_s: float = 0.2
    # Idle upstream connections kept per backend, and for how long.
    pool_size: int = 1024
    keepalive_timeout_s: float = 60.0
    # How long a /v1/models answer is reused; also the model check of each request.
    models_ttl_s: float = 5.0
    models_fetch_timeout_s: float = 2.0
    # Threads of the Rust proxy's runtime (0: one per core).
    worker_threads: int = 0

    def __post_init__(self) -> None:
        if self.max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        for name in ("request_timeout_s", "connect_timeout_s", "models_fetch_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.backoff_base_s < 0 or self.backoff_cap_s < self.backoff_base_s:
            raise ValueError("need 0 <= backoff_base_s <= backoff_cap_s")
        if self.worker_threads < 0:
            raise ValueError("worker_threads must be >= 0")

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``_core.HttpProxy``."""
        return asdict(self)


def proxy_settings(config: ProxyConfig) -> ProxySettings:
    """The proxy and ext_proc tunables of a ``proxy:`` config section."""
    return ProxySettings(
        max_body_bytes=config.max_body_bytes,
        request_timeout_s=config.request_timeout,
        connect_timeout_s=config.connect_timeout,
        max_attempts=config.max_attempts,
        backoff_base_s=config.backoff_base,
        backoff_cap_s=config.backoff_cap,
        models_ttl_s=config.models_ttl,
    )
