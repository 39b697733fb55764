"""Starts the real routing server on a loopback ephemeral port for the gRPC tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from llmlb_fast.config import parse_config
from llmlb_fast.server import RoutingServer

from grpc_server.llmlb.v1 import router_pb2 as pb
from grpc_server.llmlb.v1 import router_pb2_grpc as pb_grpc

BASE_CONFIG: dict[str, Any] = {
    "server": {"listen": "127.0.0.1:0", "metrics_port": None},
    "nodes": [{"id": "a", "address": "10.0.0.1:8000"}, {"id": "b", "address": "10.0.0.2:8000"}],
}


def merged(overrides: dict[str, Any]) -> dict[str, Any]:
    """BASE_CONFIG with top-level sections replaced/merged (one level deep)."""
    config = {key: (dict(v) if isinstance(v, dict) else v) for key, v in BASE_CONFIG.items()}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def write_config(path: Path, data: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")


@dataclass
class Running:
    server: RoutingServer
    channel: grpc.aio.Channel
    stub: pb_grpc.RouterStub

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"


@contextlib.asynccontextmanager
async def running_server(
    overrides: dict[str, Any] | None = None,
    config_path: Path | None = None,
    stop_drain_s: float = 0.0,
) -> AsyncIterator[Running]:
    """A started server and a client stub. With ``config_path`` the file is written
    from the config and watched for reloads."""
    data = merged(overrides or {})
    if config_path is not None:
        write_config(config_path, data)
    server = RoutingServer(parse_config(data), config_path)
    await server.start(handle_sighup=config_path is not None)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield Running(server, channel, pb_grpc.RouterStub(channel))  # type: ignore[no-untyped-call]
    finally:
        await channel.close()
        await server.stop(drain_s=stop_drain_s)


async def route_and_complete(
    stub: pb_grpc.RouterStub, text: str, outcome: pb.Outcome = pb.OUTCOME_OK, **fields: Any
) -> pb.RouteResponse:
    routed: pb.RouteResponse = await stub.Route(pb.RouteRequest(text=text, **fields))
    await stub.Complete(pb.CompleteRequest(request_id=routed.request_id, outcome=outcome))
    return routed


async def expect_error(call: Any, code: grpc.StatusCode) -> str:
    """Awaits a call that must fail with ``code``; returns its details."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        assert error.code() == code, (error.code(), error.details())
        return error.details() or ""
    raise AssertionError(f"expected {code}, the call succeeded")
