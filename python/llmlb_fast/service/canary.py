"""Canary split (R8): a stable share of requests goes through another policy.

The rule (a session's bucket from a hash of its session id, else of its request id, else
a random draw) lives in the core (``llmlb_core::canary``), so the gRPC service and the
Rust HTTP proxy split alike; this only supplies the random draw.
"""

from __future__ import annotations

import random

from llmlb_fast._core import CanarySplit as CoreCanarySplit
from llmlb_fast._core import canary_bucket

BUCKETS = 10_000


def bucket_of(key: str) -> int:
    """Stable across processes and versions (unlike ``hash()``)."""
    return canary_bucket(key)


class CanarySplit:
    def __init__(self, policy: str, percent: float, rng: random.Random | None = None) -> None:
        self.core = CoreCanarySplit(policy, percent)  # InvalidInputError is a ValueError
        self.policy = policy
        self.percent = percent
        self._rng = rng or random.Random()

    def choose(self, session_id: str = "", request_id: str = "") -> str | None:
        """The canary policy's name for a request in the canary share, else None."""
        return self.core.choose(session_id or request_id, self._rng.getrandbits(64))
