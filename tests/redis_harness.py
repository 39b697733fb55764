"""The real ``redis-server`` the replica tests start (see the ``redis_server`` fixture):
skipped when the binary is absent, unless ``LLMLB_REQUIRE_REDIS=1`` (CI installs
Debian's redis-server and sets it, so there the tests cannot skip)."""

from __future__ import annotations

import os

import pytest
from llmlb_fast.sim.redis_server import RedisServer, find_redis_server

__all__ = ["RedisServer", "redis_binary"]


def redis_binary() -> str:
    binary = find_redis_server()
    if binary is None:
        if os.environ.get("LLMLB_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server not found and LLMLB_REQUIRE_REDIS=1")
        pytest.skip("redis-server not installed (apt install redis-server)")
    return binary
