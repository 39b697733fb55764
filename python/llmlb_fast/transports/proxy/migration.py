"""Requests that can still move: routed, forwarded, but no byte back from the backend yet.

When a node's breaker trips, the service calls ``migrate(node_id, request_ids)``; each of
those requests still waiting for its first byte has its upstream attempt cancelled, and
the forwarder re-sends it to another node. The client sees only the eventual answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


class MovableRequests:
    """Pending upstream attempts by router request id (event-loop thread only)."""

    def __init__(self) -> None:
        self._attempts: dict[str, tuple[str, asyncio.Task[Any]]] = {}
        self._migrated: set[str] = set()

    def add(self, request_id: str, node_id: str, task: asyncio.Task[Any]) -> None:
        """``task`` is waiting for the first byte of ``request_id`` from ``node_id``."""
        self._attempts[request_id] = (node_id, task)

    def discard(self, request_id: str) -> None:
        self._attempts.pop(request_id, None)
        self._migrated.discard(request_id)

    def take_migrated(self, request_id: str) -> bool:
        """Whether the cancellation the task just received came from ``migrate``."""
        if request_id in self._migrated:
            self._migrated.discard(request_id)
            return True
        return False

    def __len__(self) -> int:
        return len(self._attempts)

    def migrate(self, node_id: str, request_ids: Iterable[str] | None = None) -> list[str]:
        """Cancels the attempts on ``node_id`` (all of them when ``request_ids`` is None);
        returns the ids that will be re-sent. Ids that already stream, finished, or run on
        another node are left alone."""
        ids = list(self._attempts) if request_ids is None else list(request_ids)
        moved: list[str] = []
        for request_id in ids:
            entry = self._attempts.get(request_id)
            if entry is None or entry[0] != node_id or entry[1].done():
                continue
            self._migrated.add(request_id)
            entry[1].cancel()
            del self._attempts[request_id]
            moved.append(request_id)
        return moved
