"""The OpenAI-compatible HTTP proxy: aiohttp server, handlers and the service-facing API."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiohttp import web

from llmlb_fast.errors import UnknownModelError
from llmlb_fast.service.routing import PROXY, RoutingService
from llmlb_fast.transports.http_errors import ProxyError, body_too_large, unknown_model
from llmlb_fast.transports.proxy.forward import (
    Forwarder,
    proxy_error_response,
)
from llmlb_fast.transports.proxy.migration import MovableRequests
from llmlb_fast.transports.proxy.models import ModelCatalog
from llmlb_fast.transports.proxy.routing_key import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    RoutingKey,
    parse_body,
    routing_key,
    tokenized,
)
from llmlb_fast.transports.proxy.settings import ProxySettings
from llmlb_fast.transports.proxy.upstream import Upstream

log = logging.getLogger("llmlb.proxy")
# Below this body size a request is tokenized on the event loop (about 0.1 ms: less than
# handing it to a thread and back).
INLINE_TOKENIZE_BYTES = 512


class ProxyServer:
    """Serves ``/v1/completions``, ``/v1/chat/completions`` and ``/v1/models`` in front of
    the service's nodes (each node's ``address`` is the backend base URL). Every request
    is routed and completed through ``service``; while it drains, new requests get a 503.
    """

    def __init__(self, service: RoutingService, settings: ProxySettings | None = None) -> None:
        self.service = service
        self.settings = settings or ProxySettings()
        self._upstream = Upstream(self.settings)
        self._movable = MovableRequests()
        self._catalog = ModelCatalog(service, self._upstream, self.settings)
        self._forwarder = Forwarder(service, self._upstream, self.settings, self._movable)
        self._runner: web.AppRunner | None = None
        self.app = self._build_app()

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        app.router.add_post(CHAT_PATH, self._completion)
        app.router.add_post(COMPLETIONS_PATH, self._completion)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        app.on_cleanup.append(self._cleanup)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listens on host:port (0 = an ephemeral port) and returns the bound port."""
        # handler_cancellation: a client that disconnects cancels its handler at once,
        # which releases its router slot even while the backend has not answered yet.
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=2048, reuse_address=True)
        await site.start()
        bound: int = self._runner.addresses[0][1]
        log.info("proxy listening on %s:%d", host, bound)
        return bound

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def migrate(self, node_id: str, request_ids: Iterable[str] | None = None) -> list[str]:
        """Moves the requests of ``node_id`` that have not received a byte yet to other
        nodes (all of that node's such requests when ``request_ids`` is None). Call on the
        proxy's event loop; returns the request ids that will be re-sent."""
        return self._movable.migrate(node_id, request_ids)

    async def _cleanup(self, _app: web.Application) -> None:
        await self._catalog.close()
        await self._upstream.close()

    async def _completion(self, request: web.Request) -> web.StreamResponse:
        try:
            raw = await self._read_body(request)
            key = routing_key(request.path, parse_body(raw))
            if await self._catalog.knows(key.model) is False:
                self.service.count_refusal(PROXY, UnknownModelError(key.model))
                raise unknown_model(key.model)
            key = await self._engine_tokens(key, len(raw))
            return await self._forwarder.forward(request, request.path, raw, key)
        except ProxyError as error:
            return proxy_error_response(error)

    async def _engine_tokens(self, key: RoutingKey, body_bytes: int) -> RoutingKey:
        """The key as the engine's tokens when its model has a tokenizer. Tokenizing costs
        about 1 µs per token (benches/results/tokenizer_cost.json): past a small body it
        runs on a worker thread (the library releases the GIL), not on the event loop."""
        tokenizer = self.service.tokenizer(key.model)
        if tokenizer is None:
            return key
        if body_bytes <= INLINE_TOKENIZE_BYTES:
            engine_key = tokenized(key, tokenizer)
        else:
            engine_key = await asyncio.to_thread(tokenized, key, tokenizer)
        if engine_key is None:
            self.service.count_tokenizer_fallback(key.model)
            return key
        return engine_key

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise body_too_large(limit)
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise body_too_large(limit) from exc

    async def _models(self, _request: web.Request) -> web.Response:
        models, answered = await self._catalog.models()
        if answered == 0 and not models:
            return proxy_error_response(
                ProxyError(
                    503,
                    "No backend answered /v1/models.",
                    "service_unavailable",
                    "no_backend_available",
                )
            )
        return web.json_response({"object": "list", "data": models})

    async def _health(self, _request: web.Request) -> web.Response:
        in_flight = self.service.in_flight_total
        if not self.service.ready:  # a replica warming up from its peers
            return web.json_response({"status": "warming_up", "in_flight": in_flight}, status=503)
        return web.json_response({"status": "ok", "in_flight": in_flight})

    async def _not_found(self, request: web.Request) -> web.Response:
        return proxy_error_response(
            ProxyError(
                404,
                f"Unknown endpoint: {request.method} {request.path}",
                "invalid_request_error",
                "unknown_endpoint",
            )
        )
