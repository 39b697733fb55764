"""The ``llmlb serve`` process: one routing service and the transports in front of it.

The gRPC server carries the ``llmlb.v1`` Router API, health and reflection; the Rust
data path (the HTTP proxy and the Envoy ext_proc picker) and ``/metrics`` listen on
their own ports; the config file is watched for hot reload. Every transport goes through the
same :class:`~llmlb_fast.service.routing.RoutingService`.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from grpc_server.llmlb.v1 import router_pb2 as pb
from grpc_server.llmlb.v1 import router_pb2_grpc as pb_grpc
from llmlb_fast.config import ServiceConfig, split_listen
from llmlb_fast.service.events import BREAKER_OPENED, Event
from llmlb_fast.service.reload import ConfigWatcher
from llmlb_fast.service.routing import RoutingService
from llmlb_fast.transports.grpc_api import RouterServicer
from llmlb_fast.transports.grpc_auth import BearerTokenInterceptor
from llmlb_fast.transports.proxy import ProxyServer, proxy_settings

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Router"].full_name
DRAIN_POLL_S = 0.05
WARM_POLL_S = 0.05


def _credentials(config: ServiceConfig) -> grpc.ServerCredentials | None:
    tls = config.server.tls
    if tls is None:
        return None
    key = Path(tls.key_file).read_bytes()
    cert = Path(tls.cert_file).read_bytes()
    return grpc.ssl_server_credentials([(key, cert)])


class RoutingServer:
    """One service instance on the running event loop: ``await start()``, ``await stop()``."""

    def __init__(self, config: ServiceConfig, config_path: str | Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.service = RoutingService(config)
        self.health = health.aio.HealthServicer()
        limit = config.server.max_message_bytes
        self.server = grpc.aio.server(
            interceptors=[BearerTokenInterceptor(lambda: self.service.grpc_credentials)],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_RouterServicer_to_server(RouterServicer(self.service), self.server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        settings = proxy_settings(config.proxy)
        data_path = config.proxy.enabled or config.proxy.ext_proc.enabled
        self.proxy = ProxyServer(self.service, settings) if data_path else None
        if self.proxy is not None:
            self.service.bus.add_listener(self._migrate_on_breaker_open)
        services = [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(services, self.server)
        self.watcher: ConfigWatcher | None = None
        self.port = 0
        self.metrics_port: int | None = None
        self.proxy_port: int | None = None
        self.ext_proc_port: int | None = None
        self._warming: asyncio.Task[None] | None = None

    async def start(self, handle_sighup: bool = True) -> None:
        listen = self.config.server.listen
        credentials = _credentials(self.config)
        if credentials is None:
            self.port = self.server.add_insecure_port(listen)
        else:
            self.port = self.server.add_secure_port(listen, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {listen}")
        await self.server.start()
        self.service.start()
        if self.proxy is not None:
            proxy = self.config.proxy
            ext_proc = split_listen(proxy.ext_proc.listen) if proxy.ext_proc.enabled else None
            http_port = await self.proxy.start(
                *split_listen(proxy.listen), http=proxy.enabled, ext_proc=ext_proc
            )
            self.proxy_port = http_port if proxy.enabled else None
            self.ext_proc_port = self.proxy.ext_proc_port
        server = self.config.server
        if server.metrics_port is not None:
            self.metrics_port = self.service.telemetry.serve_http(
                server.metrics_listen, server.metrics_port
            )
        if self.config_path is not None:
            self.watcher = ConfigWatcher(
                self.config_path,
                self.service.apply_config,
                self.service.reject_config,
                server.reload_poll_interval,
            )
            self.watcher.start(handle_sighup=handle_sighup)
        if self.service.ready:
            await self._set_health(serving=True)
        else:  # a replica warming up: NOT_SERVING until it knows its peers' load
            await self._set_health(serving=False)
            self._warming = asyncio.get_running_loop().create_task(self._serve_when_warm())
        log.info(
            "llmlb router serving on port %d (%s), metrics port %s, proxy port %s, "
            "ext_proc port %s",
            self.port,
            "TLS" if credentials else "plaintext",
            self.metrics_port,
            self.proxy_port,
            self.ext_proc_port,
        )

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status.SERVING if serving else status.NOT_SERVING)

    async def _serve_when_warm(self) -> None:
        while not self.service.ready:
            await asyncio.sleep(WARM_POLL_S)
        if not self.service.draining:
            await self._set_health(serving=True)

    async def stop(self, drain_s: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, every transport refuses new requests, routed
        requests get up to ``drain_s`` to complete, then the proxy and the server stop."""
        drain_s = self.service.config.timeouts.drain if drain_s is None else drain_s
        if self._warming is not None:
            self._warming.cancel()
        await self.health.enter_graceful_shutdown()
        self.service.drain()
        if self.watcher is not None:
            await self.watcher.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        while self.service.in_flight_total > 0 and loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        left = self.service.in_flight_total
        if left:
            log.warning("drain timed out with %d requests still in flight", left)
        if self.proxy is not None:
            await self.proxy.stop()
        self.service.bus.close()
        await self.server.stop(grace=1.0)
        await self.service.stop()
        self.service.telemetry.stop_http()

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()

    def _migrate_on_breaker_open(self, event: Event) -> None:
        """A breaker that opens moves the proxy's requests on that node that have not
        received a byte yet to other nodes."""
        if event.kind != BREAKER_OPENED or self.proxy is None:
            return
        moved = self.proxy.migrate(event.node_id, event.in_flight_request_ids)
        if moved:
            log.warning("breaker %s open: migrating %d requests", event.node_id, len(moved))
