"""Builds and runs the gRPC server: Router service, health, reflection, optional TLS,
message size limits, the /metrics endpoint, config hot reload, and the traffic
controller (HTTP proxy, Envoy ext_proc picker) when the config enables it."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from llmlb_fast.config import ServiceConfig
from llmlb_fast.reload import ConfigWatcher
from llmlb_fast.runtime import RouterRuntime
from llmlb_fast.traffic import TrafficController

from grpc_server.llmlb.v1 import router_pb2 as pb
from grpc_server.llmlb.v1 import router_pb2_grpc as pb_grpc
from grpc_server.service import RouterService

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Router"].full_name
EXT_PROC_SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"
DRAIN_POLL_S = 0.05


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
        self.runtime = RouterRuntime(config)
        self.service = RouterService(self.runtime)
        self.health = health.aio.HealthServicer()
        limit = config.server.max_message_bytes
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ]
        )
        pb_grpc.add_RouterServicer_to_server(self.service, self.server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.traffic = TrafficController(self.runtime, config.proxy, self.server)
        services = [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME]
        if self.traffic.picker is not None:
            services.append(EXT_PROC_SERVICE_NAME)
        reflection.enable_server_reflection(services, self.server)
        self.watcher: ConfigWatcher | None = None
        self.port = 0
        self.metrics_port: int | None = None

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
        self.runtime.start()
        await self.traffic.start()
        server = self.config.server
        if server.metrics_port is not None:
            self.metrics_port = self.runtime.telemetry.serve_http(
                server.metrics_listen, server.metrics_port
            )
        if self.config_path is not None:
            self.watcher = ConfigWatcher(
                self.config_path,
                self.runtime.apply_config,
                self.runtime.reject_config,
                server.reload_poll_interval,
            )
            self.watcher.start(handle_sighup=handle_sighup)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "llmlb router serving on port %d (%s), metrics port %s, proxy port %s%s",
            self.port,
            "TLS" if credentials else "plaintext",
            self.metrics_port,
            self.traffic.port,
            ", ext_proc on the gRPC port" if self.traffic.picker is not None else "",
        )

    async def stop(self, drain_s: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, refuse new routes and proxy requests, wait (up to
        ``drain_s``) for routed requests (the proxy's too) to complete, then stop the
        proxy and the server."""
        drain_s = self.runtime.config.timeouts.drain if drain_s is None else drain_s
        await self.health.enter_graceful_shutdown()
        self.service.draining = True
        self.traffic.drain()
        if self.watcher is not None:
            await self.watcher.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        while self.runtime.router.in_flight_total > 0 and loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        left = self.runtime.router.in_flight_total
        if left:
            log.warning("drain timed out with %d requests still in flight", left)
        await self.traffic.stop()
        self.runtime.bus.close()
        await self.server.stop(grace=1.0)
        await self.runtime.stop()
        self.runtime.telemetry.stop_http()

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()
