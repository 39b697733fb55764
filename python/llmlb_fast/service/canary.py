"""Canary split (R8): a stable share of requests goes through another policy.

A request's bucket comes from a hash of its session id (so a session stays on one
side), else of its request id, else a random draw. The core does the routing: this
only picks which policy name to pass to ``Router.route``.
"""

from __future__ import annotations

import hashlib
import random

BUCKETS = 10_000


def bucket_of(key: str) -> int:
    """Stable across processes and versions (unlike ``hash()``)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % BUCKETS


class CanarySplit:
    def __init__(self, policy: str, percent: float, rng: random.Random | None = None) -> None:
        if not 0.0 <= percent <= 100.0:
            raise ValueError(f"canary percent must be in [0, 100], got {percent}")
        self.policy = policy
        self.percent = percent
        self._threshold = round(percent * BUCKETS / 100.0)
        self._rng = rng or random.Random()

    def choose(self, session_id: str = "", request_id: str = "") -> str | None:
        """The canary policy's name for a request in the canary share, else None."""
        key = session_id or request_id
        bucket = bucket_of(key) if key else self._rng.randrange(BUCKETS)
        return self.policy if bucket < self._threshold else None
