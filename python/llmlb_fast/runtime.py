"""The routing service without its transport: the router plus breakers, canary,
config reload, events and metrics. The gRPC layer (``grpc_server``) only translates
messages to these calls. Everything here runs on one asyncio event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from llmlb_fast._core import Completion, Node, NodeStatus, RouteDecision, Router
from llmlb_fast.alerts import WebhookAlerter
from llmlb_fast.breaker import BreakerBoard
from llmlb_fast.canary import CanarySplit
from llmlb_fast.config import ServiceConfig
from llmlb_fast.errors import ConfigError
from llmlb_fast.events import CONFIG_REJECTED, CONFIG_RELOADED, Event, EventBus
from llmlb_fast.telemetry import Telemetry

log = logging.getLogger(__name__)

EXPIRY_SWEEP_INTERVAL_S = 1.0


class UnknownRequestError(KeyError):
    """Complete named a request that is not in flight (unknown or already completed)."""


class Routed(NamedTuple):
    decision: RouteDecision
    canary: bool


def _canary_of(config: ServiceConfig) -> CanarySplit | None:
    if config.canary is None or config.canary.percent == 0:
        return None
    return CanarySplit(config.canary.policy, config.canary.percent)


class RouterRuntime:
    def __init__(self, config: ServiceConfig, router: Router | None = None) -> None:
        self.config = config
        self.router = router or Router(config.router_config(), config.router_nodes())
        self.config_node_ids = {node.id for node in config.nodes}
        self.bus = EventBus()
        self.telemetry = Telemetry(self.router)
        self.breakers = BreakerBoard(self.router, self.bus, config.breaker)
        self.canary = _canary_of(config)
        self.alerter = WebhookAlerter(config.alerts.webhook_url, config.alerts.timeout)
        self.bus.add_listener(self.telemetry.observe_event)
        self.bus.add_listener(self.alerter.on_event)
        self._sweeper: asyncio.Task[None] | None = None

    # --- requests -----------------------------------------------------------------

    def route(
        self,
        prompt: str | None = None,
        *,
        token_ids: Sequence[int] | None = None,
        request_id: str | None = None,
        session_id: str = "",
        expected_output_tokens: int | None = None,
        model: str | None = None,
    ) -> Routed:
        """Raises UnknownModelError when no node serves ``model``, NoAvailableNodeError,
        DuplicateRequestError, InvalidInputError."""
        canary_policy = None
        if self.canary is not None:
            canary_policy = self.canary.choose(session_id, request_id or "")
        started = time.perf_counter()
        decision = self.router.route(
            prompt,
            token_ids=token_ids,
            request_id=request_id,
            expected_output_tokens=expected_output_tokens,
            model=model,
            policy=canary_policy,
        )
        self.telemetry.observe_route(
            decision.policy, decision.reason, time.perf_counter() - started
        )
        return Routed(decision, canary_policy is not None)

    def complete(
        self,
        request_id: str,
        outcome: str,
        *,
        ttft_s: float | None = None,
        tokens_in: int = 0,
        tokens_out: int = 0,
    ) -> Completion:
        completion = self.router.complete(
            request_id, outcome, ttft_s=ttft_s, tokens_in=tokens_in, tokens_out=tokens_out
        )
        if completion is None:
            raise UnknownRequestError(
                f"request {request_id!r} is not in flight (unknown, already completed or expired)"
            )
        if ttft_s is not None:
            self.telemetry.observe_ttft(completion.policy, ttft_s)
        self._observe_completion(completion)
        return completion

    def canary_policy(self, session_id: str | None) -> str | None:
        """The policy for a request that routes itself (proxy, ext_proc): the canary's for
        a request in its share (sticky per session id; a random draw without one)."""
        if self.canary is None:
            return None
        return self.canary.choose(session_id or "")

    def observe_route(self, decision: RouteDecision, seconds: float) -> None:
        """Metrics of a decision made by the proxy or the ext_proc picker."""
        self.telemetry.observe_route(decision.policy, decision.reason, seconds)

    def observe_ttft(self, completion: Completion, ttft_s: float) -> None:
        self.telemetry.observe_ttft(completion.policy, ttft_s)

    def observe_completion(self, completion: Completion) -> None:
        """A completion made by the proxy or the ext_proc picker (they call
        ``Router.complete`` themselves): metrics and breakers see it once."""
        self._observe_completion(completion)

    def _observe_completion(self, completion: Completion) -> None:
        self.telemetry.observe_completion(completion.node_id, completion.policy, completion.outcome)
        self.breakers.on_completion(completion)

    def expire_stale(self) -> list[Completion]:
        """Releases requests past ``timeouts.request`` and collects those ``route()``'s own
        sweep released since the last call, so breakers and metrics see every expiry."""
        expired = self.router.expire_stale()
        for completion in expired:
            self._observe_completion(completion)
        return expired

    # --- nodes and metrics --------------------------------------------------------

    def register_node(self, node: Node) -> bool:
        return self.router.upsert_node(node)

    def deregister_node(self, node_id: str) -> list[str]:
        in_flight = self.router.remove_node(node_id)
        self.breakers.forget(node_id)
        self.telemetry.engine_hit_rates.pop(node_id, None)
        self.config_node_ids.discard(node_id)
        return in_flight

    def nodes(self) -> list[NodeStatus]:
        return self.router.nodes()

    def report_metrics(
        self,
        node_id: str,
        metrics: Mapping[str, float],
        *,
        engine_hit_rate: float | None = None,
        cache_reset: bool = False,
    ) -> None:
        """Applies one agent sample (raises UnknownNodeError / InvalidInputError)."""
        self.router.update_metrics(node_id, **metrics)
        if cache_reset:
            self.router.clear_node_cache(node_id)
        if engine_hit_rate is not None:
            self.telemetry.engine_hit_rates[node_id] = engine_hit_rate
        self.telemetry.metric_samples.labels(node_id).inc()
        self.breakers.on_metrics(node_id, metrics)

    # --- config -------------------------------------------------------------------

    def apply_config(self, new: ServiceConfig) -> None:
        """Applies a validated config; in-flight requests and their counts survive."""
        try:
            self.router.reconfigure(new.router_config())
        except ValueError as error:
            raise ConfigError(str(error)) from None
        new_ids = {node.id for node in new.nodes}
        for node in new.router_nodes():
            self.router.upsert_node(node)
        orphaned: list[str] = []
        for node_id in sorted(self.config_node_ids - new_ids):
            with contextlib.suppress(KeyError):
                orphaned.extend(self.deregister_node(node_id))
        self.config_node_ids = new_ids
        self.breakers.reconfigure(new.breaker)
        self.canary = _canary_of(new)
        self.alerter.url = new.alerts.webhook_url
        self.alerter.timeout_s = new.alerts.timeout
        notes = ["applied"]
        if new.server.model_dump(exclude={"auth_token"}) != self.config.server.model_dump(
            exclude={"auth_token"}
        ):
            notes.append("server settings other than auth_token need a restart")
            log.warning("config reload: server settings other than auth_token need a restart")
        if new.proxy != self.config.proxy:
            notes.append("proxy settings need a restart")
            log.warning("config reload: proxy settings need a restart")
        self.config = new
        self.bus.publish(
            Event(
                kind=CONFIG_RELOADED, reason="; ".join(notes), in_flight_request_ids=tuple(orphaned)
            )
        )

    def reject_config(self, error: ConfigError) -> None:
        self.bus.publish(Event(kind=CONFIG_REJECTED, reason=str(error)))

    # --- life -----------------------------------------------------------------------

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_expired())

    async def _sweep_expired(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_SWEEP_INTERVAL_S)
            self.expire_stale()

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        self.breakers.close()
        await self.alerter.drain()
