"""``/v1/models``: the union of the models configured on the router's nodes and what the
backends list, cached for a few seconds."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from llmlb_fast.service.routing import RoutingService
from llmlb_fast.transports.proxy.settings import ProxySettings
from llmlb_fast.transports.proxy.upstream import Upstream

log = logging.getLogger("llmlb.proxy")


def configured_model(model_id: str) -> dict[str, Any]:
    """The entry of a model named in a node's config that no backend listed."""
    return {"id": model_id, "object": "model", "owned_by": "llmlb"}


class ModelCatalog:
    def __init__(
        self, service: RoutingService, upstream: Upstream, settings: ProxySettings
    ) -> None:
        self._service = service
        self._upstream = upstream
        self._settings = settings
        self._models: list[dict[str, Any]] = []
        self._ids: frozenset[str] = frozenset()
        self._answered = 0
        self._fetched_at: float | None = None
        self._refresh: asyncio.Task[None] | None = None

    async def models(self) -> tuple[list[dict[str, Any]], int]:
        """The merged model objects and how many backends answered (configured models
        are listed even when none did)."""
        if self._is_stale():
            await self._refreshed()
        return self._models, self._answered

    async def knows(self, model: str) -> bool | None:
        """True or False when at least one backend answered; None when none did (the
        catalogue is unknown, so the request is let through and the router decides from
        the nodes' configured models)."""
        if self._fetched_at is None:
            await self._refreshed()
        elif self._is_stale():
            self._start_refresh()  # serve the last answer meanwhile; keeps the hot path fast
        if self._answered == 0:
            return None
        return model in self._ids

    def _is_stale(self) -> bool:
        return (
            self._fetched_at is None
            or time.monotonic() - self._fetched_at > self._settings.models_ttl_s
        )

    def _start_refresh(self) -> asyncio.Task[None]:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._fetch_all())
        return self._refresh

    async def _refreshed(self) -> None:
        await asyncio.shield(self._start_refresh())

    async def _fetch_all(self) -> None:
        nodes = [status.node for status in self._service.nodes()]
        addresses = sorted({node.address for node in nodes if node.address})
        answers = await asyncio.gather(*(self._fetch(a) for a in addresses))
        merged: dict[str, dict[str, Any]] = {}
        answered = 0
        for answer in answers:
            if answer is None:
                continue
            answered += 1
            for model in answer:
                merged.setdefault(model["id"], model)
        for node in nodes:
            for model_id in node.models:
                merged.setdefault(model_id, configured_model(model_id))
        self._models = list(merged.values())
        self._ids = frozenset(merged)
        self._answered = answered
        self._fetched_at = time.monotonic()

    async def _fetch(self, address: str) -> list[dict[str, Any]] | None:
        url = address.rstrip("/") + "/v1/models"
        try:
            document = await self._upstream.get_json(url, self._settings.models_fetch_timeout_s)
        except Exception as exc:
            log.info("no model list from %s: %s", url, exc)
            return None
        if not isinstance(document, dict) or not isinstance(document.get("data"), list):
            log.info("malformed model list from %s", url)
            return None
        return [m for m in document["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)]

    async def close(self) -> None:
        if self._refresh is not None and not self._refresh.done():
            self._refresh.cancel()
            await asyncio.gather(self._refresh, return_exceptions=True)
