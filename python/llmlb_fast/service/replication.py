"""The routing service as one of several active-active replicas (``replicas:`` in the
config): its decisions, first tokens and completions go to the others through Redis
(:mod:`llmlb_fast.replicas`), theirs count here; node registrations, deregistrations
and breaker transitions made through one replica reach every replica.

The receiving thread applies the others' requests to the core directly (it is
thread-safe); node and breaker changes touch the service's own state, so they are
handed to the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable

from llmlb_fast._core import Node, Router
from llmlb_fast.config import KvEventsConfig, ReplicasConfig
from llmlb_fast.errors import LlmlbError
from llmlb_fast.replicas.messages import BreakerChanged, NodeRemoved, NodeUpserted
from llmlb_fast.replicas.redis_sync import RedisReplicaLink, RedisSyncSettings
from llmlb_fast.replicas.sync import NodeMessage, ReplicaSync
from llmlb_fast.service.breakers import BreakerBoard
from llmlb_fast.service.telemetry import Telemetry

# The service's own node calls, made without sharing them again.
RegisterNode = Callable[[Node, KvEventsConfig | None], object]
DeregisterNode = Callable[[str], object]

log = logging.getLogger(__name__)


def default_replica_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Replication:
    def __init__(
        self,
        config: ReplicasConfig,
        router: Router,
        telemetry: Telemetry,
        breakers: BreakerBoard,
        register_node: RegisterNode,
        deregister_node: DeregisterNode,
    ) -> None:
        self._breakers = breakers
        self._register_node = register_node
        self._deregister_node = deregister_node
        self.name = config.name or default_replica_name()
        self.sync = ReplicaSync(
            router,
            self.name,
            ttl_s=config.ttl,
            clock=time.time,  # ages and lags compare clocks of several hosts
            on_node_message=self._on_node_message,
        )
        self.link = RedisReplicaLink(
            self.sync,
            RedisSyncSettings(
                url=config.redis_url,
                cluster=config.cluster,
                batch_interval_s=config.batch_interval,
                heartbeat_interval_s=config.heartbeat_interval,
                warmup_timeout_s=config.warmup_timeout,
                history_batches=config.history_batches,
                stream_max_len=config.stream_max_len,
            ),
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        telemetry.watch_replicas(self.sync, self.link)
        breakers.on_transition = self._breaker_changed

    @property
    def warm(self) -> bool:
        return self.link.warm.is_set()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.link.start()
        log.info("replica %s syncing through %s", self.name, self.link._url())

    def stop(self) -> None:
        self.link.stop()

    # --- this replica's node changes --------------------------------------------------

    def node_registered(self, node: Node, kv_events: KvEventsConfig | None) -> None:
        self.sync.publish(
            NodeUpserted(
                node.id,
                node.address,
                node.peak_tflops,
                node.gpu_memory_bytes,
                node.max_concurrency,
                node.prefill_tokens_per_s,
                node.kv_capacity_tokens,
                node.labels,
                node.models,
                kv_events.model_dump(mode="json") if kv_events is not None else None,
            )
        )

    def node_removed(self, node_id: str) -> None:
        self.sync.publish(NodeRemoved(node_id))

    def _breaker_changed(self, node_id: str, state: str, reason: str) -> None:
        self.sync.publish(BreakerChanged(node_id, state, reason))

    # --- the others' ------------------------------------------------------------------

    def _on_node_message(self, replica: str, message: NodeMessage) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._apply_node_message, replica, message)

    def _apply_node_message(self, replica: str, message: NodeMessage) -> None:
        try:
            if isinstance(message, NodeUpserted):
                node = Node(
                    message.node_id,
                    message.address,
                    peak_tflops=message.peak_tflops,
                    gpu_memory_bytes=message.gpu_memory_bytes,
                    max_concurrency=message.max_concurrency,
                    prefill_tokens_per_s=message.prefill_tokens_per_s,
                    kv_capacity_tokens=message.kv_capacity_tokens,
                    labels=message.labels,
                    models=message.models,
                )
                kv_events = (
                    KvEventsConfig.model_validate(message.kv_events)
                    if message.kv_events is not None
                    else None
                )
                self._register_node(node, kv_events)
                log.info("node %s registered through replica %s", node.id, replica)
            elif isinstance(message, NodeRemoved):
                with contextlib.suppress(LlmlbError, KeyError):
                    self._deregister_node(message.node_id)
                    log.info("node %s deregistered through replica %s", message.node_id, replica)
            elif isinstance(message, BreakerChanged):
                self._breakers.apply_shared(
                    message.node_id, message.state, f"replica {replica}: {message.reason}"
                )
        except (LlmlbError, ValueError) as error:
            log.warning("replica %s: %s not applied: %s", replica, type(message).__name__, error)
