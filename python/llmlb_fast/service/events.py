"""Service events (breaker transitions, config reloads) and the bus that fans them out.

Publishers and subscribers all live on the service's one event loop; a subscriber too
slow to keep up loses its oldest events, never blocks the publisher.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

BREAKER_OPENED = "breaker_opened"
BREAKER_HALF_OPENED = "breaker_half_opened"
BREAKER_CLOSED = "breaker_closed"
CONFIG_RELOADED = "config_reloaded"
CONFIG_REJECTED = "config_rejected"
EVENT_KINDS = (
    BREAKER_OPENED,
    BREAKER_HALF_OPENED,
    BREAKER_CLOSED,
    CONFIG_RELOADED,
    CONFIG_REJECTED,
)


@dataclass(frozen=True)
class Event:
    kind: str
    reason: str
    node_id: str = ""
    from_state: str = ""
    to_state: str = ""
    in_flight_request_ids: tuple[str, ...] = ()
    unix_time: float = field(default_factory=time.time)
    sequence: int = 0


class EventBus:
    def __init__(self, queue_size: int = 1024) -> None:
        self._queue_size = queue_size
        self._subscribers: set[asyncio.Queue[Event | None]] = set()
        self._closed = False
        self._sequence = itertools.count(1)
        self._listeners: list[Callable[[Event], None]] = []
        self.dropped = 0

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Called synchronously for every event (metrics, webhooks)."""
        self._listeners.append(listener)

    def publish(self, event: Event) -> Event:
        numbered = Event(
            kind=event.kind,
            reason=event.reason,
            node_id=event.node_id,
            from_state=event.from_state,
            to_state=event.to_state,
            in_flight_request_ids=event.in_flight_request_ids,
            unix_time=event.unix_time,
            sequence=next(self._sequence),
        )
        for listener in self._listeners:
            listener(numbered)
        for queue in self._subscribers:
            while queue.full():
                queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(numbered)
        return numbered

    def close(self) -> None:
        """Ends every subscription (shutdown): subscribers see the end of their stream."""
        self._closed = True
        for queue in self._subscribers:
            while queue.full():
                queue.get_nowait()
            queue.put_nowait(None)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def subscribe(self, kinds: frozenset[str] = frozenset()) -> Subscription:
        """Events published from now on (of ``kinds``, or all when empty)."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue(self._queue_size)
        if self._closed:
            queue.put_nowait(None)
        else:
            self._subscribers.add(queue)
        return Subscription(self, queue, kinds)

    def unsubscribe(self, queue: asyncio.Queue[Event | None]) -> None:
        self._subscribers.discard(queue)


class Subscription:
    """Registered when created, so no event published after ``subscribe`` is missed."""

    def __init__(
        self, bus: EventBus, queue: asyncio.Queue[Event | None], kinds: frozenset[str]
    ) -> None:
        self._bus = bus
        self._queue = queue
        self._kinds = kinds

    async def events(self) -> AsyncIterator[Event]:
        try:
            while True:
                event = await self._queue.get()
                if event is None:
                    return
                if not self._kinds or event.kind in self._kinds:
                    yield event
        finally:
            self._bus.unsubscribe(self._queue)

    def close(self) -> None:
        self._bus.unsubscribe(self._queue)
