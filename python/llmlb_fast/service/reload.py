"""Config hot reload: on a file change (polled) and on SIGHUP.

A file that fails to parse or validate is rejected: the last good config stays in
force, and the failure is logged, counted and published as an event. A rewrite with
the same content as the last attempt is ignored; SIGHUP always re-applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from llmlb_fast.config import ServiceConfig, load_config
from llmlb_fast.errors import ConfigError

log = logging.getLogger(__name__)


class ConfigWatcher:
    def __init__(
        self,
        path: str | Path,
        apply: Callable[[ServiceConfig], None],
        reject: Callable[[ConfigError], None],
        poll_interval_s: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self._apply = apply
        self._reject = reject
        self.poll_interval_s = poll_interval_s
        self._stat: tuple[int, int] | None = self._file_stat()
        self._digest: bytes | None = self._file_digest()
        self._task: asyncio.Task[None] | None = None

    def _file_stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _file_digest(self) -> bytes | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).digest()
        except OSError:
            return None

    def reload(self, force: bool = False) -> bool:
        """Loads and applies the file; returns whether a new config was applied."""
        self._stat = self._file_stat()
        digest = self._file_digest()
        if not force and digest == self._digest:
            return False
        self._digest = digest
        try:
            config = load_config(self.path)
            self._apply(config)
        except ConfigError as error:
            log.error("config reload rejected, keeping the last good config: %s", error)
            self._reject(error)
            return False
        log.info("config reloaded from %s", self.path)
        return True

    def poll(self) -> bool:
        """One check of the file; reloads when it changed."""
        if self._file_stat() == self._stat:
            return False
        return self.reload()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            self.poll()

    def start(self, handle_sighup: bool = True) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run())
        if handle_sighup:
            loop.add_signal_handler(signal.SIGHUP, self.reload, True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
