"""A routing service over a given core router, for transport tests that drive the proxy or
the ext_proc picker without the whole server."""

from __future__ import annotations

from collections.abc import Sequence

from llmlb_fast import Completion, Node, Router, RouterConfig
from llmlb_fast.config import ServiceConfig
from llmlb_fast.service.routing import RoutingService


class RecordingService(RoutingService):
    """Keeps every completion the service made, in order (what the tests assert on)."""

    def __init__(self, router: Router, config: ServiceConfig | None = None) -> None:
        super().__init__(config or ServiceConfig(), router)
        self.completions: list[Completion] = []

    def completed(self, completion: Completion, ttft_s: float | None = None) -> None:
        # Every transport's completions pass here (the Rust proxy's in batches).
        super().completed(completion, ttft_s)
        self.completions.append(completion)

    @property
    def timed_out_nodes(self) -> list[str]:
        return [c.node_id for c in self.completions if c.outcome == "timeout"]

    def route_errors(self, transport: str, error: str) -> float:
        value = self.telemetry.registry.get_sample_value(
            "llmlb_route_errors_total", {"transport": transport, "error": error}
        )
        return value or 0.0


def recording_service(nodes: Sequence[Node], policy: str = "llmlb") -> RecordingService:
    return RecordingService(Router(RouterConfig(policy=policy), list(nodes)))
