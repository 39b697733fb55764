"""Alert webhook: breaker events are POSTed as JSON to a configured URL.

Posting runs in a worker thread so a slow receiver never stalls routing; failures are
logged and counted, never retried (the event stream and metrics keep the record).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import urllib.request

from llmlb_fast.service.events import BREAKER_CLOSED, BREAKER_HALF_OPENED, BREAKER_OPENED, Event

log = logging.getLogger(__name__)
ALERT_KINDS = frozenset({BREAKER_OPENED, BREAKER_HALF_OPENED, BREAKER_CLOSED})


class WebhookAlerter:
    def __init__(self, url: str | None, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.sent = 0
        self.failed = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def on_event(self, event: Event) -> None:
        if self.url is None or event.kind not in ALERT_KINDS:
            return
        task = asyncio.get_running_loop().create_task(self._post(self.url, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, url: str, event: Event) -> None:
        body = json.dumps(dataclasses.asdict(event)).encode("utf-8")
        try:
            await asyncio.to_thread(self._post_blocking, url, body)
            self.sent += 1
        except OSError as error:
            self.failed += 1
            log.warning("alert webhook %s failed: %s", url, error)

    def _post_blocking(self, url: str, body: bytes) -> None:
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            response.read()

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
