"""The traffic controller inside ``llmlb serve``: the HTTP proxy and the Envoy ext_proc
endpoint picker wired to the service's runtime.

Both share the service's router, so requests they carry count in ``ListNodes`` and the
Prometheus metrics like gRPC-routed ones. They complete their requests in the router
themselves; each completion goes once to the runtime's observers (metrics, breakers),
and a breaker that opens moves the proxy's requests on that node that have not
received a byte yet to other nodes.
"""

from __future__ import annotations

import logging

import grpc

from llmlb_fast.config import ProxyConfig, split_listen
from llmlb_fast.events import BREAKER_OPENED, Event
from llmlb_fast.proxy import Hooks, ProxyServer, ProxySettings
from llmlb_fast.proxy.ext_proc import EndpointPicker, add_to_server
from llmlb_fast.runtime import RouterRuntime

log = logging.getLogger(__name__)


def proxy_settings(config: ProxyConfig) -> ProxySettings:
    return ProxySettings(
        max_body_bytes=config.max_body_bytes,
        request_timeout_s=config.request_timeout,
        connect_timeout_s=config.connect_timeout,
        max_attempts=config.max_attempts,
        backoff_base_s=config.backoff_base,
        backoff_cap_s=config.backoff_cap,
        models_ttl_s=config.models_ttl,
    )


class TrafficController:
    """Built before the gRPC server starts (the picker must be registered on it)."""

    def __init__(
        self, runtime: RouterRuntime, config: ProxyConfig, grpc_server: grpc.aio.Server
    ) -> None:
        self.config = config
        settings = proxy_settings(config)
        # No on_timeout hook: a timeout also arrives as a completion with outcome
        # "timeout", which is what request_timeout_total counts.
        hooks = Hooks(
            on_complete=runtime.observe_completion,
            pick_policy=runtime.canary_policy,
            on_route=runtime.observe_route,
            on_ttft=runtime.observe_ttft,
        )
        self.proxy: ProxyServer | None = None
        if config.enabled:
            self.proxy = ProxyServer(runtime.router, settings, hooks)
            runtime.bus.add_listener(self._on_event)
        self.picker: EndpointPicker | None = None
        if config.ext_proc.enabled:
            self.picker = EndpointPicker(runtime.router, settings, hooks)
            add_to_server(self.picker, grpc_server)
        self.port: int | None = None

    async def start(self) -> None:
        if self.proxy is not None:
            host, port = split_listen(self.config.listen)
            self.port = await self.proxy.start(host, port)

    def drain(self) -> None:
        """New proxy requests get a 503 from now on; those in flight go on."""
        if self.proxy is not None:
            self.proxy.draining = True

    async def stop(self) -> None:
        if self.proxy is not None:
            await self.proxy.stop()

    def _on_event(self, event: Event) -> None:
        if event.kind != BREAKER_OPENED or self.proxy is None:
            return
        moved = self.proxy.migrate(event.node_id, event.in_flight_request_ids)
        if moved:
            log.warning("breaker %s open: migrating %d requests", event.node_id, len(moved))
