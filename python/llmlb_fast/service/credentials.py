"""The gRPC API's bearer tokens, by kind, and the rule of which kind may call what
(``server.auth``; the transports' interceptor asks it on every call)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import grpc

from llmlb_fast.config import ServiceConfig

ROUTER_PREFIX = "/llmlb.v1.Router/"
DATA_PLANE = frozenset({"Route", "FirstToken", "Complete", "RouteStream"})
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIX = "/grpc.reflection."


@dataclass(frozen=True)
class GrpcCredentials:
    """The gRPC API's tokens, by kind (empty: that kind is not required)."""

    route: tuple[bytes, ...] = ()
    admin: tuple[bytes, ...] = ()

    @classmethod
    def of(cls, config: ServiceConfig) -> GrpcCredentials:
        """Raises ValueError when a token file or variable is missing."""
        auth = config.server.auth
        admin = [t.secret() for t in auth.admin_tokens]
        if config.server.auth_token is not None:
            admin.append(config.server.auth_token)
        return cls(
            route=tuple(t.secret().encode() for t in auth.route_tokens),
            admin=tuple(token.encode() for token in admin),
        )

    def refusal(self, method: str, authorization: str | None) -> tuple[grpc.StatusCode, str] | None:
        """None when ``authorization`` may call ``method``; else the status and why."""
        if method.startswith(HEALTH_PREFIX):
            return None
        name = method.removeprefix(ROUTER_PREFIX)
        if method.startswith(REFLECTION_PREFIX):
            required, accepted, kind = bool(self.route or self.admin), self.route + self.admin, ""
        elif name in DATA_PLANE:
            required, accepted, kind = bool(self.route), self.route + self.admin, "route"
        else:
            required, accepted, kind = bool(self.admin), self.admin, "admin"
        if not required:
            return None
        given = (authorization or "").encode()
        # Every token compared in full: the time taken says nothing of which matched.
        matched = [hmac.compare_digest(given, b"Bearer " + token) for token in accepted]
        if any(matched):
            return None
        call = f"{kind} call" if kind else "call"
        if not given:
            return (
                grpc.StatusCode.UNAUTHENTICATED,
                f"{call} refused: missing 'authorization: Bearer <token>'",
            )
        others = self.route if kind == "admin" else ()
        if any(hmac.compare_digest(given, b"Bearer " + t) for t in others):
            return grpc.StatusCode.PERMISSION_DENIED, f"{call} refused: a route token cannot"
        return grpc.StatusCode.UNAUTHENTICATED, f"{call} refused: wrong bearer token"
