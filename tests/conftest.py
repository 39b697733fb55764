"""Fixtures shared by the test files. Add new fixtures below; keep each one generic."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from llmlb_fast import Node, Router, RouterConfig
from redis_harness import RedisServer, redis_binary

RouterFactory = Callable[..., Router]


@pytest.fixture
def make_router() -> RouterFactory:
    """Builds a Router on a manual clock: ``make_router(["a", "b"], policy="least_request")``.

    Nodes may be given as ids or as :class:`Node` objects; keyword arguments go to
    :class:`RouterConfig`.
    """

    def build(nodes: Sequence[str | Node] = ("a", "b"), **config: object) -> Router:
        specs = [n if isinstance(n, Node) else Node(n, f"{n}.local:8000") for n in nodes]
        return Router(RouterConfig(**config), specs, manual_clock=True)  # type: ignore[arg-type]

    return build


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a loopback ephemeral port (skipped when not installed,
    unless LLMLB_REQUIRE_REDIS=1); ``stop()`` / ``start()`` keep the port."""
    server = RedisServer(redis_binary(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
