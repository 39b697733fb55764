"""Config hot reload on a running server: file rewrites during traffic, SIGHUP,
invalid files rejected with the last good config kept."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from grpc_harness import merged, route_and_complete, running_server, write_config
from test_breaker_grpc import EventWatcher

from grpc_server.llmlb.v1 import router_pb2 as pb

FAST_POLL = {"listen": "127.0.0.1:0", "metrics_port": None, "reload_poll_interval": 0.05}


def test_rewrite_during_traffic_applies_and_keeps_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "llmlb.yaml"

    async def scenario() -> None:
        async with running_server({"server": FAST_POLL}, config_path=path) as s:
            watcher = await EventWatcher(s).start()
            held = await s.stub.Route(pb.RouteRequest(request_id="held", text="long request"))
            stop = asyncio.Event()
            errors: list[BaseException] = []

            async def traffic() -> int:
                n = 0
                while not stop.is_set():
                    try:
                        await route_and_complete(s.stub, f"traffic {n}")
                    except BaseException as error:
                        errors.append(error)
                    n += 1
                return n

            task = asyncio.create_task(traffic())
            new = merged({
                "server": FAST_POLL,
                "policy": "least_request",
                "nodes": [{"id": "a", "address": "10.0.0.1:8000"},
                          {"id": "b", "address": "10.0.0.2:8000"},
                          {"id": "c", "address": "10.0.0.3:8000"}],
            })  # fmt: skip
            write_config(path, new)
            reloaded = await watcher.wait_for(pb.EVENT_KIND_CONFIG_RELOADED)
            assert "applied" in reloaded.reason
            await asyncio.sleep(0.1)
            stop.set()
            assert await task > 0
            assert errors == []
            routed = await s.stub.Route(pb.RouteRequest(text="after"))
            assert routed.policy == "least_request"
            nodes = {n.node.id: n for n in (await s.stub.ListNodes(pb.ListNodesRequest())).nodes}
            assert set(nodes) == {"a", "b", "c"}
            assert nodes[held.node_id].in_flight >= 1  # the held request is still counted
            await s.stub.Complete(pb.CompleteRequest(request_id="held", outcome=pb.OUTCOME_OK))
            await s.stub.Complete(
                pb.CompleteRequest(request_id=routed.request_id, outcome=pb.OUTCOME_OK)
            )
            # Dropping a node from the file removes it and names its in-flight requests.
            on_c = None
            for i in range(6):
                r = await s.stub.Route(pb.RouteRequest(request_id=f"c{i}", text=f"c{i}"))
                if r.node_id == "c":
                    on_c = r.request_id
                    break
            assert on_c is not None
            write_config(path, merged({"server": FAST_POLL, "policy": "least_request"}))
            reloaded = await watcher.wait_for(pb.EVENT_KIND_CONFIG_RELOADED)
            assert on_c in reloaded.in_flight_request_ids
            watcher.cancel()

    asyncio.run(scenario())


def test_invalid_file_is_rejected_and_old_config_kept(tmp_path: Path) -> None:
    path = tmp_path / "llmlb.yaml"

    async def scenario() -> None:
        async with running_server({"server": FAST_POLL}, config_path=path) as s:
            watcher = await EventWatcher(s).start()
            good = s.server.service.config
            path.write_text("policy: llmlb\nscheduling:\n  prefix_cache_sise: 10\n")
            rejected = await watcher.wait_for(pb.EVENT_KIND_CONFIG_REJECTED)
            assert "scheduling.prefix_cache_sise" in rejected.reason
            path.write_text("policy: [unclosed\n")
            rejected = await watcher.wait_for(pb.EVENT_KIND_CONFIG_REJECTED)
            assert "YAML" in rejected.reason
            write_config(path, merged({"server": FAST_POLL, "policy": "no_such_policy"}))
            rejected = await watcher.wait_for(pb.EVENT_KIND_CONFIG_REJECTED)
            assert "no_such_policy" in rejected.reason
            path.write_text("")  # truncate-then-write, caught between the two
            rejected = await watcher.wait_for(pb.EVENT_KIND_CONFIG_REJECTED)
            assert "holds no settings" in rejected.reason
            write_config(path, {"server": FAST_POLL})  # every node gone
            rejected = await watcher.wait_for(pb.EVENT_KIND_CONFIG_REJECTED)
            assert "removes all 2 configured nodes" in rejected.reason
            assert s.server.service.config is good
            assert len((await s.stub.ListNodes(pb.ListNodesRequest())).nodes) == 2
            routed = await route_and_complete(s.stub, "still routing")
            assert routed.policy == "llmlb"
            rejections = s.server.service.telemetry.config_reloads.labels("rejected")._value.get()
            assert rejections == 5
            watcher.cancel()

    asyncio.run(scenario())


def test_sighup_reloads(tmp_path: Path) -> None:
    path = tmp_path / "llmlb.yaml"
    slow_poll = {**FAST_POLL, "reload_poll_interval": 3600}

    async def scenario() -> None:
        async with running_server({"server": slow_poll}, config_path=path) as s:
            watcher = await EventWatcher(s).start()
            write_config(path, merged({"server": slow_poll, "policy": "round_robin"}))
            os.kill(os.getpid(), signal.SIGHUP)
            await watcher.wait_for(pb.EVENT_KIND_CONFIG_RELOADED)
            assert (await route_and_complete(s.stub, "x")).policy == "round_robin"
            watcher.cancel()

    asyncio.run(scenario())
