"""Bench-only probe: the same Route/Complete/RouteStream logic served by the synchronous
``grpc.server`` with a thread pool instead of grpc.aio, to compare the two transports.

    python benches/sync_server.py --config FILE [--threads 8]

Not a supported server mode: breakers' cooldown timers, config reload, health and
/metrics need the asyncio service (``llmlb serve``). Prints the same first line as
``llmlb serve`` so ``bench_grpc.py --server sync`` can start it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, NoReturn

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmlb_fast.config import load_config  # noqa: E402
from llmlb_fast.service.routing import RoutingService  # noqa: E402
from llmlb_fast.transports.grpc_api import REQUEST_ERRORS, RouterServicer, status_code_of  # noqa: E402

from grpc_server.llmlb.v1 import router_pb2 as pb  # noqa: E402
from grpc_server.llmlb.v1 import router_pb2_grpc as pb_grpc  # noqa: E402


def _abort(context: grpc.ServicerContext, error: Exception) -> NoReturn:
    context.abort(status_code_of(error), str(error))
    raise AssertionError("unreachable: abort raises")


class SyncRouter(pb_grpc.RouterServicer):
    """Calls the asyncio service's synchronous parts under one lock (the runtime's
    Python state expects one thread at a time)."""

    def __init__(self, service: RouterServicer) -> None:
        self.service = service
        self.lock = threading.Lock()

    def Route(self, request: pb.RouteRequest, context: Any) -> pb.RouteResponse:
        try:
            with self.lock:
                return self.service.route(request)
        except REQUEST_ERRORS as error:
            _abort(context, error)

    def Complete(self, request: pb.CompleteRequest, context: Any) -> pb.CompleteResponse:
        try:
            with self.lock:
                return self.service.complete(request)
        except REQUEST_ERRORS as error:
            _abort(context, error)

    def RouteStream(
        self, request_iterator: Iterator[pb.RouteStreamRequest], context: Any
    ) -> Iterator[pb.RouteStreamReply]:
        for batch in request_iterator:
            with self.lock:
                reply = self.service.stream_reply(batch)
            yield reply


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--log-level", default="WARNING")  # accepted like llmlb serve's
    args = parser.parse_args()
    config = load_config(args.config)
    service = RouterServicer(RoutingService(config))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.threads))
    pb_grpc.add_RouterServicer_to_server(SyncRouter(service), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port(config.server.listen)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"sync probe serving on port {port}; metrics port None", flush=True)
    stop.wait()
    server.stop(grace=1.0).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
