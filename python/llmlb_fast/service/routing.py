"""The routing service: the one front door into the router for every transport.

gRPC (unary and stream), the HTTP proxy and the Envoy ext_proc picker only translate
their messages into :meth:`RoutingService.route` and :meth:`RoutingService.complete`;
none of them calls the core ``Router`` directly. Here, once for all of them: the
draining flag, the canary's choice of policy, timing, route-error counting, telemetry,
and breaker feedback from every completion. Nodes, metrics and config changes come
through the same object. Everything runs on one asyncio event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from llmlb_fast import errors
from llmlb_fast._core import Completion, Node, NodeStatus, RouteDecision, Router
from llmlb_fast.config import KvEventsConfig, ServiceConfig, destructive_changes
from llmlb_fast.errors import ConfigError, LlmlbError
from llmlb_fast.kv_events import KvEventIngest, KvEventSource
from llmlb_fast.service.alerts import WebhookAlerter
from llmlb_fast.service.breakers import BreakerBoard
from llmlb_fast.service.canary import CanarySplit
from llmlb_fast.service.credentials import GrpcCredentials
from llmlb_fast.service.events import CONFIG_REJECTED, CONFIG_RELOADED, Event, EventBus
from llmlb_fast.service.replication import Replication
from llmlb_fast.service.telemetry import Telemetry
from llmlb_fast.tokenizer import ModelTokenizer, load_tokenizers

log = logging.getLogger(__name__)

EXPIRY_SWEEP_INTERVAL_S = 1.0

# Transport names, the ``transport`` label of the route-error metric.
GRPC, PROXY, EXT_PROC = "grpc", "proxy", "ext_proc"


class DrainingError(LlmlbError):
    """The service is stopping and takes no new requests."""

    def __init__(self) -> None:
        super().__init__("server is draining; route elsewhere")


# Why a route was refused, as the ``error`` label of llmlb_route_errors_total.
_ROUTE_ERROR_KINDS: tuple[tuple[type[Exception], str], ...] = (
    (DrainingError, "draining"),
    (errors.UnknownModelError, "unknown_model"),
    (errors.NoAvailableNodeError, "no_available_node"),
    (errors.DuplicateRequestError, "duplicate_request"),
    (errors.TableFullError, "table_full"),
    (errors.UnknownNodeError, "unknown_node"),
    (errors.InvalidInputError, "invalid_input"),
)


def route_error_kind(error: Exception) -> str:
    for error_type, kind in _ROUTE_ERROR_KINDS:
        if isinstance(error, error_type):
            return kind
    return "invalid_input"  # a ValueError/TypeError from argument conversion


class Routed(NamedTuple):
    decision: RouteDecision
    canary: bool


def _canary_of(config: ServiceConfig) -> CanarySplit | None:
    if config.canary is None or config.canary.percent == 0:
        return None
    return CanarySplit(config.canary.policy, config.canary.percent)


class RoutingService:
    """``config`` is the service config; ``router`` an already built core router (by
    default one is built from the config)."""

    def __init__(self, config: ServiceConfig, router: Router | None = None) -> None:
        self.config = config
        self.router = router or Router(config.router_config(), config.router_nodes())
        self.config_node_ids = {node.id for node in config.nodes}
        self.tokenizers = load_tokenizers(config.tokenizers)
        self._proxy_api_keys = _api_keys_of(config)
        self.grpc_credentials = _grpc_credentials_of(config)
        self.bus = EventBus()
        self.telemetry = Telemetry(self.router)
        self.breakers = BreakerBoard(self.router, self.bus, config.breaker)
        self.canary = _canary_of(config)
        self.alerter = WebhookAlerter(config.alerts.webhook_url, config.alerts.timeout)
        self.bus.add_listener(self.telemetry.observe_event)
        self.bus.add_listener(self.alerter.on_event)
        # Nodes whose engines publish KV events: from the config and from registrations.
        self.kv_events = KvEventIngest(self.router)
        self.telemetry.watch_kv_events(self.kv_events)
        self._registered_kv_sources: dict[str, KvEventSource] = {}
        self._config_kv_sources = kv_sources_of(config)
        self._sync_kv_sources()
        # Other replicas of this router (config.replicas): decisions shared through Redis.
        self.replication = (
            Replication(
                config.replicas,
                self.router,
                self.telemetry,
                self.breakers,
                lambda node, kv_events: self.register_node(node, kv_events, share=False),
                lambda node_id: self.deregister_node(node_id, share=False),
            )
            if config.replicas is not None
            else None
        )
        # Set once when the server starts stopping; every transport refuses new work.
        self.draining = False
        # Transports that keep their own copy of draining/canary/tokenizers (the Rust
        # proxy): called after each change.
        self._control_listeners: list[Callable[[], None]] = []
        self._sweeper: asyncio.Task[None] | None = None

    # --- requests -----------------------------------------------------------------

    def route(
        self,
        transport: str,
        prompt: str | None = None,
        *,
        token_ids: Sequence[int] | None = None,
        request_id: str | None = None,
        session_id: str = "",
        expected_output_tokens: int | None = None,
        model: str | None = None,
        adapter: str | None = None,
        exclude: Sequence[str] | None = None,
    ) -> Routed:
        """Routes one request and counts it in flight on the chosen node. Raises
        DrainingError, UnknownModelError, NoAvailableNodeError, DuplicateRequestError,
        InvalidInputError (each counted under ``transport`` before it propagates)."""
        try:
            if self.draining:
                raise DrainingError()
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
                adapter=adapter,
                exclude=exclude,
                policy=canary_policy,
            )
        except (LlmlbError, ValueError, TypeError, OverflowError) as error:
            self.telemetry.count_route_error(transport, route_error_kind(error))
            raise
        self.record_routed(
            decision.policy, decision.reason, time.perf_counter() - started, decision
        )
        return Routed(decision, canary_policy is not None)

    def record_routed(
        self, policy: str, reason: str, seconds: float, decision: RouteDecision | None
    ) -> None:
        """A decision made (here, or by the Rust proxy on the shared core): metrics, and
        the other replicas when there are any (``decision`` is needed then)."""
        self.telemetry.observe_route(policy, reason, seconds)
        if self.replication is not None and decision is not None:
            self.replication.sync.routed(decision)

    @property
    def shares_decisions(self) -> bool:
        """Whether decisions and first tokens must reach other replicas."""
        return self.replication is not None

    def add_control_listener(self, listener: Callable[[], None]) -> None:
        self._control_listeners.append(listener)

    def _control_changed(self) -> None:
        for listener in self._control_listeners:
            listener()

    def tokenizer(self, model: str) -> ModelTokenizer | None:
        """The engine's tokenizer for ``model`` (None: route its requests by text)."""
        return self.tokenizers.get(model)

    def count_tokenizer_fallback(self, model: str) -> None:
        """A request of a tokenized model routed by text (its chat template refused it)."""
        self.telemetry.tokenizer_fallbacks.labels(model).inc()

    def count_refusal(self, transport: str, error: Exception) -> None:
        """A request a transport refused before routing it (the proxy's model check)."""
        self.telemetry.count_route_error(transport, route_error_kind(error))

    def proxy_api_keys(self) -> list[tuple[str, str, float | None, float]]:
        """The HTTP proxy's client keys as (name, key, requests/s, burst), read when the
        config was."""
        return list(self._proxy_api_keys)

    def count_proxy_request(self, api_key: str) -> None:
        """A proxied request routed for the holder of the API key named ``api_key``."""
        self.telemetry.proxy_requests.labels(api_key).inc()

    def count_route_refusal(self, transport: str, kind: str) -> None:
        """A refusal a transport already classified (``kind``: the route-error label)."""
        self.telemetry.count_route_error(transport, kind)

    def first_token(self, request_id: str) -> bool:
        """The request's first token arrived (its prompt is no longer queued prefill);
        False when it is not in flight."""
        if not self.router.first_token(request_id):
            return False
        self.share_first_token(request_id)
        return True

    def share_first_token(self, request_id: str) -> None:
        """Tells the other replicas that a request routed here got its first token."""
        if self.replication is not None:
            self.replication.sync.first_token(request_id)

    def complete(
        self,
        request_id: str,
        outcome: str,
        *,
        ttft_s: float | None = None,
        tokens_in: int = 0,
        tokens_out: int = 0,
    ) -> Completion | None:
        """Releases a routed request exactly once; None when it is not in flight
        (unknown, already completed or expired). Metrics and breakers see it once."""
        completion = self.router.complete(
            request_id, outcome, ttft_s=ttft_s, tokens_in=tokens_in, tokens_out=tokens_out
        )
        if completion is None:
            return None
        self.completed(completion, ttft_s)
        return completion

    def completed(self, completion: Completion, ttft_s: float | None = None) -> None:
        """A request released in the core (here, or by the Rust proxy): metrics,
        breakers and other replicas see it once."""
        if ttft_s is not None:
            self.telemetry.observe_ttft(completion.policy, ttft_s)
        self._observe_completion(completion)

    @property
    def in_flight_total(self) -> int:
        return self.router.in_flight_total

    @property
    def ready(self) -> bool:
        """False while a replica warms up (health reports NOT_SERVING until then)."""
        return self.replication is None or self.replication.warm

    def _observe_completion(self, completion: Completion) -> None:
        if self.replication is not None:
            self.replication.sync.ended(completion.request_id)
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

    def register_node(
        self, node: Node, kv_events: KvEventsConfig | None = None, *, share: bool = True
    ) -> bool:
        """Adds or updates a node; with ``kv_events`` its engine's event stream is
        followed (a registration without it stops following a registered stream).
        ``share``: other replicas register it too."""
        created = self.router.upsert_node(node)
        if share and self.replication is not None:
            self.replication.node_registered(node, kv_events)
        source = kv_source_of(node.id, node.models, kv_events)
        if source is not None:
            self._registered_kv_sources[node.id] = source
        else:
            self._registered_kv_sources.pop(node.id, None)
        self._sync_kv_sources()
        return created

    def deregister_node(self, node_id: str, *, share: bool = True) -> list[str]:
        in_flight = self.router.remove_node(node_id)
        if share and self.replication is not None:
            self.replication.node_removed(node_id)
        self._registered_kv_sources.pop(node_id, None)
        self._config_kv_sources.pop(node_id, None)
        self._sync_kv_sources()
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
        """Applies a validated config; in-flight requests and their counts survive.
        Raises ConfigError for a reload that would wipe the nodes or the auth token
        without ``server.allow_destructive_reload``."""
        wiped = destructive_changes(self.config, new)
        if wiped:
            raise ConfigError(
                f"reload refused: {' and '.join(wiped)}; set server.allow_destructive_reload "
                "in the new file if that is meant"
            )
        # Loaded before anything changes: a tokenizer or key file that fails keeps the old
        # config whole.
        proxy_api_keys = _api_keys_of(new)
        grpc_credentials = _grpc_credentials_of(new)
        tokenizers = self.tokenizers
        if new.tokenizers != self.config.tokenizers:
            tokenizers = load_tokenizers(new.tokenizers)
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
                orphaned.extend(self.deregister_node(node_id, share=False))
        self.config_node_ids = new_ids
        self.tokenizers = tokenizers
        self._proxy_api_keys = proxy_api_keys
        self.grpc_credentials = grpc_credentials
        self._config_kv_sources = kv_sources_of(new)
        self._sync_kv_sources()
        self.breakers.reconfigure(new.breaker)
        self.canary = _canary_of(new)
        self.alerter.url = new.alerts.webhook_url
        self.alerter.timeout_s = new.alerts.timeout
        notes = ["applied", *self._restart_notes(new)]
        self.config = new
        self._control_changed()
        self.bus.publish(
            Event(
                kind=CONFIG_RELOADED, reason="; ".join(notes), in_flight_request_ids=tuple(orphaned)
            )
        )

    def _restart_notes(self, new: ServiceConfig) -> list[str]:
        notes = []
        old = self.config
        if new.server.model_dump(exclude={"auth_token", "auth"}) != old.server.model_dump(
            exclude={"auth_token", "auth"}
        ):
            notes.append("server settings other than auth_token, auth need a restart")
        reloadable: dict[str, Any] = {
            "api_keys": True,
            "admission": True,
            "ext_proc": {"fail_open"},
        }
        if new.proxy.model_dump(exclude=reloadable) != old.proxy.model_dump(exclude=reloadable):
            notes.append("proxy settings other than api_keys, admission, fail_open need a restart")
        if new.replicas != old.replicas:
            notes.append("replicas settings need a restart")
        for note in notes:
            log.warning("config reload: %s", note)
        return notes

    def _sync_kv_sources(self) -> None:
        # A node named in the config takes its source from there.
        self.kv_events.set_sources(
            {**self._registered_kv_sources, **self._config_kv_sources}.values()
        )

    def reject_config(self, error: ConfigError) -> None:
        self.bus.publish(Event(kind=CONFIG_REJECTED, reason=str(error)))

    # --- life -----------------------------------------------------------------------

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_expired())
        self.kv_events.start()
        if self.replication is not None:
            self.replication.start()

    async def _sweep_expired(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_SWEEP_INTERVAL_S)
            self.expire_stale()

    def drain(self) -> None:
        """From now on every transport refuses new requests; those in flight go on."""
        self.draining = True
        self._control_changed()

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        self.breakers.close()
        await asyncio.to_thread(self.kv_events.stop)
        if self.replication is not None:
            await asyncio.to_thread(self.replication.stop)
        await self.alerter.drain()


def _api_keys_of(config: ServiceConfig) -> list[tuple[str, str, float | None, float]]:
    try:
        return [(key.name, key.secret(), key.rate, key.burst_size) for key in config.proxy.api_keys]
    except ValueError as error:
        raise ConfigError(f"proxy.api_keys: {error}") from None


def _grpc_credentials_of(config: ServiceConfig) -> GrpcCredentials:
    try:
        return GrpcCredentials.of(config)
    except ValueError as error:
        raise ConfigError(f"server.auth: {error}") from None


def kv_source_of(
    node_id: str, models: Sequence[str], settings: KvEventsConfig | None
) -> KvEventSource | None:
    """The node's event stream; its model seeds the chains (the node's only model when
    ``kv_events.model`` is not set: requests are hashed with the model they name)."""
    if settings is None:
        return None
    model = settings.model or (models[0] if len(models) == 1 else None)
    return KvEventSource(
        node_id=node_id,
        endpoint=settings.endpoint,
        topic=settings.topic,
        replay_endpoint=settings.replay_endpoint,
        model=model,
        data_parallel_size=settings.data_parallel_size,
    )


def kv_sources_of(config: ServiceConfig) -> dict[str, KvEventSource]:
    sources = {node.id: kv_source_of(node.id, node.models, node.kv_events) for node in config.nodes}
    return {node_id: source for node_id, source in sources.items() if source is not None}
