"""Forwarding to backends: one pooled keep-alive client session, retry classification
and capped, jittered backoff."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from llmlb_fast.transports.proxy.settings import ProxySettings

# Headers that belong to one connection and are never forwarded (RFC 9110 section 7.6.1),
# plus the ones aiohttp recomputes for the new message.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "host",
        "content-length",
    }
)


class RetryableError(Exception):
    """The attempt failed before the first byte in a way another node may not."""


def backoff_delay(retry: int, settings: ProxySettings, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**retry)]."""
    ceiling = min(settings.backoff_cap_s, settings.backoff_base_s * (2**retry))
    return rng.uniform(0.0, ceiling)


def forward_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)


def response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)


class Upstream:
    """A connection-pooled HTTP client for all backends of one proxy."""

    def __init__(self, settings: ProxySettings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[tuple[str, str], URL] = {}
        self._timeout = aiohttp.ClientTimeout(
            total=settings.request_timeout_s, sock_connect=settings.connect_timeout_s
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._settings.pool_size,
                limit_per_host=0,
                keepalive_timeout=self._settings.keepalive_timeout_s,
                enable_cleanup_closed=False,
            )
            # auto_decompress off: bytes go to the client exactly as the backend sent them.
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def open(
        self, address: str, path: str, body: bytes, headers: Mapping[str, str]
    ) -> aiohttp.ClientResponse:
        """POSTs to ``address + path`` and returns once the status and headers are in.

        Raises RetryableError for connect errors, unusable addresses and 5xx statuses
        (the response is released first), so the caller can try another node.
        """
        url = self._url(address, path)
        try:
            response = await self.session.post(url, data=body, headers=headers)
        except aiohttp.ClientConnectorError as exc:
            raise RetryableError(f"cannot connect to {url}: {exc.os_error}") from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise RetryableError(f"{url} closed the connection before answering") from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise RetryableError(f"connecting to {url} timed out") from exc
        except aiohttp.InvalidURL as exc:
            raise RetryableError(f"node address {address!r} is not a URL") from exc
        if response.status >= 500:
            response.release()
            raise RetryableError(f"{url} answered {response.status}")
        return response

    def _url(self, address: str, path: str) -> URL:
        """Parsed once per backend endpoint (yarl parsing is a visible share of a POST);
        an address without a scheme (``10.0.0.5:8000``) means http."""
        key = (address, path)
        url = self._urls.get(key)
        if url is None:
            base = address if "://" in address else "http://" + address
            url = self._urls[key] = URL(base.rstrip("/") + path)
        return url

    async def get_json(self, url: str, timeout_s: float) -> object:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with self.session.get(url, timeout=timeout) as response:
            response.raise_for_status()
            return await response.json(content_type=None)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await asyncio.sleep(0)
