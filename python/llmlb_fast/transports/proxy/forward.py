"""The request loop of the proxy: route, send, retry or migrate before the first byte,
then pass the response through and complete the request in the router exactly once."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from llmlb_fast._core import RouteDecision
from llmlb_fast.errors import LlmlbError, NoAvailableNodeError
from llmlb_fast.service.routing import PROXY, RoutingService
from llmlb_fast.transports.http_errors import (
    ProxyError,
    no_backend,
    route_error,
    upstream_failed,
    upstream_timeout,
)
from llmlb_fast.transports.proxy.metering import ResponseMeter
from llmlb_fast.transports.proxy.migration import MovableRequests
from llmlb_fast.transports.proxy.routing_key import RoutingKey
from llmlb_fast.transports.proxy.settings import ProxySettings
from llmlb_fast.transports.proxy.upstream import (
    RetryableError,
    Upstream,
    backoff_delay,
    forward_headers,
    response_headers,
)

log = logging.getLogger("llmlb.proxy")

NODE_HEADER = "x-llmlb-node"
REQUEST_ID_HEADER = "x-llmlb-request-id"
# A migrated request may move at most this many times (a cascade of trips).
MAX_MIGRATIONS = 3


class Migrated(Exception):
    """The attempt was cancelled by ``migrate``; route the request again."""


class Forwarder:
    def __init__(
        self,
        service: RoutingService,
        upstream: Upstream,
        settings: ProxySettings,
        movable: MovableRequests,
    ) -> None:
        self._service = service
        self._upstream = upstream
        self._settings = settings
        self._movable = movable
        self._rng = random.Random()

    async def forward(
        self, request: web.Request, path: str, raw: bytes, key: RoutingKey
    ) -> web.StreamResponse:
        headers = forward_headers(request.headers)
        session_id = request.headers.get("x-session-id", "")
        failed: set[str] = set()
        retries = migrations = 0
        while True:
            decision = self._route(key, session_id, failed)
            sent_at = time.perf_counter()
            try:
                response, first = await self._first_byte(decision, path, raw, headers)
            except RetryableError as exc:
                self._complete(decision, "error")
                failed.add(decision.node_id)
                retries += 1
                if retries >= self._settings.max_attempts:
                    raise upstream_failed(f"All {retries} attempts failed; last: {exc}") from exc
                log.info("retrying %s after: %s", decision.request_id, exc)
                await asyncio.sleep(backoff_delay(retries - 1, self._settings, self._rng))
                continue
            except Migrated:
                self._complete(decision, "error")
                failed.add(decision.node_id)
                migrations += 1
                if migrations > MAX_MIGRATIONS:
                    raise no_backend("The request was migrated too many times.") from None
                continue
            except asyncio.TimeoutError:
                self._complete(decision, "timeout")
                raise upstream_timeout(self._settings.request_timeout_s) from None
            except BaseException:
                # Client gone (handler cancelled) or a bug: release the slot, then propagate.
                self._complete(decision, "ok")
                raise
            # A streamed response's first bytes carry its first token.
            self._service.first_token(decision.request_id)
            return await self._relay(request, decision, response, first, sent_at)

    def _route(self, key: RoutingKey, session_id: str, failed: set[str]) -> RouteDecision:
        """Routes to a node this request has not failed on; once it has failed on every
        node that can take it, any node again (a transient fault may be gone by now)."""
        try:
            try:
                return self._route_once(key, session_id, failed)
            except NoAvailableNodeError:
                if not failed:
                    raise
                return self._route_once(key, session_id, set())
        except (LlmlbError, ValueError, TypeError, OverflowError) as exc:
            raise route_error(exc, key.model) from exc

    def _route_once(self, key: RoutingKey, session_id: str, exclude: set[str]) -> RouteDecision:
        return self._service.route(
            PROXY,
            key.prompt,
            token_ids=key.token_ids,
            session_id=session_id,
            expected_output_tokens=key.expected_output_tokens,
            model=key.model,
            exclude=sorted(exclude) if exclude else None,
        ).decision

    async def _first_byte(
        self, decision: RouteDecision, path: str, raw: bytes, headers: Mapping[str, str]
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        """The attempt up to its first body byte. ``migrate`` may cancel this task
        meanwhile; that cancellation is turned into :class:`Migrated` (a task per
        attempt would also work, but costs ~10% of the proxy's throughput)."""
        task = asyncio.current_task()
        assert task is not None
        self._movable.add(decision.request_id, decision.node_id, task)
        try:
            return await self._open(decision.address, path, raw, headers)
        except asyncio.CancelledError:
            if not self._movable.take_migrated(decision.request_id):
                raise
            uncancel(task)
            raise Migrated from None
        finally:
            self._movable.discard(decision.request_id)

    async def _open(
        self, address: str, path: str, raw: bytes, headers: Mapping[str, str]
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        response = await self._upstream.open(address, path, raw, headers)
        try:
            if response.content_length is not None:
                first = await response.read()
            else:
                first = await response.content.readany()
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
            response.release()
            raise RetryableError(f"{address} failed before the first byte: {exc}") from exc
        except BaseException:
            response.release()
            raise
        return response, first

    async def _relay(
        self,
        request: web.Request,
        decision: RouteDecision,
        upstream: aiohttp.ClientResponse,
        first: bytes,
        sent_at: float,
    ) -> web.StreamResponse:
        headers = response_headers(upstream.headers)
        headers[NODE_HEADER] = decision.node_id
        headers[REQUEST_ID_HEADER] = decision.request_id
        if upstream.content_length is not None:
            return self._relay_whole(decision, upstream, first, headers)
        meter = ResponseMeter()
        client = web.StreamResponse(status=upstream.status, headers=headers)
        outcome = "ok"
        try:
            meter.feed_stream(first)
            await client.prepare(request)
            await client.write(first)
            async for chunk in upstream.content.iter_any():
                meter.feed_stream(chunk)
                await client.write(chunk)
            meter.finish_stream()
            await client.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            # Client disconnected (aiohttp's write error is also a ClientError, so this
            # comes first): the node did nothing wrong.
            raise
        except asyncio.TimeoutError:
            outcome = "timeout"
            abort(request)
        except aiohttp.ClientError as exc:
            # The backend failed after bytes reached the client: too late to retry;
            # cut the client connection so it sees a truncated stream, not a clean end.
            log.warning("backend %s failed mid-response: %s", decision.node_id, exc)
            outcome = "error"
            abort(request)
        finally:
            upstream.release()
            ttft = None if meter.first_byte_at is None else meter.first_byte_at - sent_at
            self._complete(decision, outcome, ttft, meter)
        return client

    def _relay_whole(
        self,
        decision: RouteDecision,
        upstream: aiohttp.ClientResponse,
        body: bytes,
        headers: CIMultiDict[str],
    ) -> web.Response:
        """A body already read in full: one web.Response, which aiohttp sends with its
        headers in a single write (a StreamResponse costs a second syscall and segment)."""
        upstream.release()
        meter = ResponseMeter()
        meter.feed_whole(body)
        self._complete(decision, "ok", None, meter)
        return web.Response(status=upstream.status, headers=headers, body=body)

    def _complete(
        self,
        decision: RouteDecision,
        outcome: str,
        ttft_s: float | None = None,
        meter: ResponseMeter | None = None,
    ) -> None:
        tokens_in = decision.prompt_tokens
        tokens_out = 0
        if meter is not None:
            tokens_out = meter.tokens_out
            if meter.prompt_tokens is not None:
                tokens_in = meter.prompt_tokens
        self._service.complete(
            decision.request_id, outcome, ttft_s=ttft_s, tokens_in=tokens_in, tokens_out=tokens_out
        )


def uncancel(task: asyncio.Task[object]) -> None:
    """Python 3.11+ counts cancellations; a handled one must be taken back."""
    undo = getattr(task, "uncancel", None)
    if undo is not None:
        undo()


def abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


def proxy_error_response(error: ProxyError) -> web.Response:
    return web.Response(status=error.status, body=error.body(), content_type="application/json")
