"""``llmlb serve --config FILE``: run the gRPC routing service until SIGTERM/SIGINT.

SIGTERM drains: health goes NOT_SERVING, new Route calls and proxy requests are
refused, routed requests get ``timeouts.drain`` seconds to complete, then the proxy and
the server stop. SIGHUP reloads the config file. With ``proxy.enabled`` the HTTP proxy
runs on the same event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from llmlb_fast.config import load_config
from llmlb_fast.errors import ConfigError

HELP = "run the gRPC routing service (config hot reload, /metrics, breakers, canary)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="YAML config file")
    parser.add_argument(
        "--listen", metavar="HOST:PORT", help="override server.listen from the config"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )


async def serve(config_path: str, listen: str | None) -> int:
    # Imported here so that `llmlb --help` does not load gRPC.
    from llmlb_fast.server import RoutingServer

    config = load_config(config_path)
    if listen is not None:
        config = config.model_copy(
            update={"server": config.server.model_copy(update={"listen": listen})}
        )
    server = RoutingServer(config, config_path)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ext_proc = "" if server.ext_proc_port is None else f"; ext_proc port {server.ext_proc_port}"
    print(
        f"llmlb serving on port {server.port}; metrics port {server.metrics_port}; "
        f"proxy port {server.proxy_port}{ext_proc}",
        flush=True,
    )
    await stop.wait()
    logging.getLogger(__name__).info("shutting down: draining")
    await server.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return asyncio.run(serve(args.config, args.listen))
    except ConfigError as error:
        print(f"llmlb serve: {error}")
        return 2
    except OSError as error:
        print(f"llmlb serve: {error}")
        return 1
