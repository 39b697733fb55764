"""The data path on the service: the Rust HTTP proxy and Envoy ext_proc endpoint picker
(``_core.HttpProxy``), one runtime for both.

The proxy routes, forwards, retries, migrates, relays and completes every request in
Rust on the service's core router; the picker routes each request Envoy shows it and
completes it at the response's end. No Python runs per request (except a model's
tokenizer, when one is configured). What the service must hear of (route timings and
refusals, completions for breakers and metrics, decisions for other replicas) is queued
in Rust and applied here in batches, on the service's event loop: a thread waits for
events without holding the interpreter and hands each batch to the loop. What the
service decides (draining, warm-up, canary, tokenized models, client API keys,
admission limits) is pushed to the proxy whenever it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterable

from llmlb_fast._core import HttpProxy
from llmlb_fast.service.routing import RoutingService
from llmlb_fast.transports.proxy.routing_key import engine_token_ids
from llmlb_fast.transports.proxy.settings import ProxySettings

log = logging.getLogger("llmlb.proxy")

# The event thread wakes at least this often (to notice a replica's warm-up end).
EVENT_WAIT_S = 0.05
# After a batch, events gather this long before the next (fewer, larger batches).
BATCH_INTERVAL_S = 0.002


class ProxyServer:
    """Serves ``/v1/completions``, ``/v1/chat/completions``, ``/v1/models`` and
    ``/health`` in front of the service's nodes (each node's ``address`` is the backend
    base URL), and/or Envoy's ``ExternalProcessor`` (the endpoint picker). While the
    service drains, new requests get a 503."""

    def __init__(self, service: RoutingService, settings: ProxySettings | None = None) -> None:
        self.service = service
        self.settings = settings or ProxySettings()
        self._proxy = HttpProxy(
            service.router, **self.settings.as_kwargs(), tokenizer=self._engine_tokens
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._batch_applied = threading.Event()
        self._pushed_warming: bool | None = None
        service.add_control_listener(self._push_control)
        self._push_control()

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        http: bool = True,
        ext_proc: tuple[str, int] | None = None,
    ) -> int:
        """Listens on host:port (0 = an ephemeral port) for HTTP (unless ``http`` is
        False) and on ``ext_proc`` for Envoy; returns the HTTP port (0 when off)."""
        self._loop = asyncio.get_running_loop()
        self._push_control()
        self._proxy.start(http=(host, port) if http else None, ext_proc=ext_proc)
        self._stopping.clear()
        self._events_thread = threading.Thread(
            target=self._hand_over_events, name="llmlb-proxy-events", daemon=True
        )
        self._events_thread.start()
        if http:
            log.info("proxy listening on %s:%d", host, self._proxy.port)
        if ext_proc is not None:
            log.info("ext_proc picker listening on %s:%d", ext_proc[0], self._proxy.ext_proc_port)
        return self._proxy.port or 0

    async def stop(self) -> None:
        """Stops listening; open responses get a second, then are cut. Every request's
        completion has reached the service when this returns."""
        await asyncio.to_thread(self._proxy.stop)
        self._stopping.set()
        if self._events_thread is not None:
            await asyncio.to_thread(self._events_thread.join)
            self._events_thread = None
        self.flush()

    def migrate(self, node_id: str, request_ids: Iterable[str] | None = None) -> list[str]:
        """Moves the requests of ``node_id`` that have not received a byte yet to other
        nodes (all of that node's such requests when ``request_ids`` is None); returns
        the request ids that will be re-sent."""
        ids = None if request_ids is None else list(request_ids)
        return self._proxy.migrate(node_id, ids)

    def flush(self) -> int:
        """Applies the events queued so far to the service (on the service's loop);
        returns how many there were. Tests call it before reading the service."""
        events = self._proxy.take_events()
        for event in events:
            try:
                self._apply(event)
            except Exception:
                log.exception("proxy event %r failed", event[0])
        return len(events)

    @property
    def port(self) -> int | None:
        return self._proxy.port

    @property
    def ext_proc_port(self) -> int | None:
        return self._proxy.ext_proc_port

    def _apply(self, event: tuple[object, ...]) -> None:
        service = self.service
        match event:
            case ("completed", completion, ttft_s):
                service.completed(completion, ttft_s)  # type: ignore[arg-type]
            case ("routed", policy, reason, seconds, _canary, decision, api_key):
                service.record_routed(policy, reason, seconds, decision)  # type: ignore[arg-type]
                if api_key is not None:
                    service.count_proxy_request(api_key)  # type: ignore[arg-type]
            case ("refused", transport, kind):
                service.count_route_refusal(transport, kind)  # type: ignore[arg-type]
            case ("first_token", request_id):
                service.share_first_token(request_id)  # type: ignore[arg-type]
            case ("tokenizer_fallback", model):
                service.count_tokenizer_fallback(model)  # type: ignore[arg-type]

    def _hand_over_events(self) -> None:
        """The events thread: waits for events off the interpreter, has the loop apply
        each batch, and lets the next one gather for a moment."""
        loop = self._loop
        assert loop is not None
        while not self._stopping.is_set():
            self._push_warming()
            if not self._proxy.wait_events(EVENT_WAIT_S):
                continue
            self._batch_applied.clear()
            try:
                loop.call_soon_threadsafe(self._apply_batch)
            except RuntimeError:  # the loop is closed
                return
            self._batch_applied.wait(timeout=1.0)
            time.sleep(BATCH_INTERVAL_S)

    def _apply_batch(self) -> None:
        try:
            self.flush()
        finally:
            self._batch_applied.set()

    def _push_warming(self) -> None:
        if (not self.service.ready) != self._pushed_warming:
            self._push_control()

    def _push_control(self) -> None:
        service = self.service
        admission = service.config.proxy.admission
        warming = not service.ready
        self._pushed_warming = warming
        self._proxy.set_control(
            draining=service.draining,
            warming_up=warming,
            canary=service.canary.core if service.canary is not None else None,
            tokenized_models=sorted(service.tokenizers),
            share_decisions=service.shares_decisions,
            api_keys=service.proxy_api_keys(),
            max_in_flight=admission.max_in_flight,
            queue_size=admission.queue_size,
            queue_timeout_s=admission.queue_timeout,
            ext_proc_fail_open=service.config.proxy.ext_proc.fail_open,
        )

    def _engine_tokens(
        self, model: str, prompt: str | None, messages_json: str | None, tools_json: str | None
    ) -> list[int] | None:
        """Called by the Rust proxy (on a blocking thread) for a tokenized model."""
        tokenizer = self.service.tokenizer(model)
        if tokenizer is None:
            return None
        with contextlib.suppress(ValueError):
            return engine_token_ids(tokenizer, prompt, messages_json, tools_json)
        return None
