"""Per-node circuit breakers (R11): closed -> open -> half_open -> closed.

A node's breaker opens after ``failure_threshold`` consecutive failed completions (the
core counts them) or when its metrics stay over an overload threshold for a window.
After ``cooldown`` it goes half-open: the core then lets ``half_open_probes`` requests
through (one by default); the first probe's outcome closes or reopens it. The core only
gates routing on the state set here; every transition is logged and published as an
event naming the node's in-flight requests, so a traffic controller can migrate them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from llmlb_fast._core import Completion, Router, memory_usage
from llmlb_fast.config import BreakerConfig
from llmlb_fast.errors import UnknownNodeError
from llmlb_fast.service.events import (
    BREAKER_CLOSED,
    BREAKER_HALF_OPENED,
    BREAKER_OPENED,
    Event,
    EventBus,
)

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
_EVENT_KIND = {OPEN: BREAKER_OPENED, HALF_OPEN: BREAKER_HALF_OPENED, CLOSED: BREAKER_CLOSED}


@dataclass
class _NodeBreaker:
    state: str = CLOSED
    overloaded_since: float | None = None
    cooldown: asyncio.TimerHandle | None = None


def overload_reasons(config: BreakerConfig, metrics: Mapping[str, float | None]) -> list[str]:
    """The thresholds a metrics sample is over (empty when none)."""
    limits = config.overload
    reasons = []
    kv, memory = memory_usage(metrics)  # judged as the core's saturation skip judges it
    if limits.kv_cache_usage is not None and kv is not None and kv >= limits.kv_cache_usage:
        reasons.append(f"kv_cache_usage {kv:.3f} >= {limits.kv_cache_usage}")
    if (
        limits.gpu_memory_usage is not None
        and memory is not None
        and memory >= limits.gpu_memory_usage
    ):
        reasons.append(f"gpu_memory_usage {memory:.3f} >= {limits.gpu_memory_usage}")
    waiting = metrics.get("num_requests_waiting")
    threshold = limits.num_requests_waiting
    if threshold is not None and waiting is not None and waiting >= threshold:
        reasons.append(f"num_requests_waiting {waiting:g} >= {threshold:g}")
    return reasons


class BreakerBoard:
    """All nodes' breakers. Runs on the service's event loop."""

    def __init__(
        self,
        router: Router,
        bus: EventBus,
        config: BreakerConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._router = router
        self._bus = bus
        self.config = config
        self._clock = clock
        self._nodes: dict[str, _NodeBreaker] = {}
        # Told of every transition decided here (not those applied from other replicas):
        # (node_id, to_state, reason).
        self.on_transition: Callable[[str, str, str], None] | None = None

    def state(self, node_id: str) -> str:
        return self._nodes[node_id].state if node_id in self._nodes else CLOSED

    def reconfigure(self, config: BreakerConfig) -> None:
        self.config = config
        if not config.enabled:
            for node_id, breaker in list(self._nodes.items()):
                if breaker.state != CLOSED:
                    self._transition(node_id, CLOSED, "breaker disabled by config")

    def forget(self, node_id: str) -> None:
        breaker = self._nodes.pop(node_id, None)
        if breaker is not None and breaker.cooldown is not None:
            breaker.cooldown.cancel()

    def close(self) -> None:
        for node_id in list(self._nodes):
            self.forget(node_id)

    def on_completion(self, completion: Completion) -> None:
        node_id = completion.node_id
        failed = completion.outcome != "ok"
        state = self.state(node_id)
        if completion.was_probe and state == HALF_OPEN:
            if failed:
                self._transition(
                    node_id, OPEN, f"probe {completion.request_id} {completion.outcome}"
                )
            else:
                self._transition(node_id, CLOSED, f"probe {completion.request_id} ok")
            return
        if not failed or state != CLOSED or not self.config.enabled:
            return
        failures = completion.consecutive_failures
        if failures >= self.config.failure_threshold:
            self._transition(
                node_id, OPEN, f"{failures} consecutive failures (last: {completion.outcome})"
            )

    def on_metrics(self, node_id: str, metrics: Mapping[str, float | None]) -> None:
        if not self.config.enabled:
            return
        breaker = self._nodes.setdefault(node_id, _NodeBreaker())
        reasons = overload_reasons(self.config, metrics)
        if not reasons:
            breaker.overloaded_since = None
            return
        now = self._clock()
        if breaker.overloaded_since is None:
            breaker.overloaded_since = now
        sustained = now - breaker.overloaded_since
        if breaker.state == CLOSED and sustained >= self.config.overload.window:
            breaker.overloaded_since = None
            self._transition(
                node_id, OPEN, f"overloaded for {sustained:.1f}s: {'; '.join(reasons)}"
            )

    def apply_shared(self, node_id: str, to_state: str, reason: str) -> None:
        """A transition another replica decided (its failures or probe): applied here
        too, not told back. Ignored when this breaker is in that state already."""
        if to_state not in _EVENT_KIND:
            raise ValueError(f"unknown breaker state {to_state!r}")
        if self.state(node_id) != to_state:
            self._transition(node_id, to_state, reason, shared=True)

    def _transition(
        self, node_id: str, to_state: str, reason: str, *, shared: bool = False
    ) -> None:
        breaker = self._nodes.setdefault(node_id, _NodeBreaker())
        if breaker.cooldown is not None:
            breaker.cooldown.cancel()
            breaker.cooldown = None
        try:
            previous = self._router.set_breaker_state(
                node_id, to_state, probes=self.config.half_open_probes
            )
            in_flight = self._router.in_flight_request_ids(node_id)
        except UnknownNodeError:
            self.forget(node_id)
            return
        breaker.state = to_state
        if to_state == OPEN:
            loop = asyncio.get_running_loop()
            breaker.cooldown = loop.call_later(self.config.cooldown, self._half_open, node_id)
        log.warning("breaker %s: %s -> %s (%s)", node_id, previous, to_state, reason)
        if not shared and self.on_transition is not None:
            self.on_transition(node_id, to_state, reason)
        self._bus.publish(
            Event(
                kind=_EVENT_KIND[to_state],
                reason=reason,
                node_id=node_id,
                from_state=previous,
                to_state=to_state,
                in_flight_request_ids=tuple(in_flight),
            )
        )

    def _half_open(self, node_id: str) -> None:
        breaker = self._nodes.get(node_id)
        if breaker is not None and breaker.state == OPEN:
            breaker.cooldown = None
            self._transition(node_id, HALF_OPEN, f"cooldown of {self.config.cooldown:g}s over")
