"""Live mode: a simulated node as a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
from llmlb_fast.sim.node_server import SimNode, text_to_tokens
from llmlb_fast.sim.profiles import PROFILES

from grpc_server.llmlb.v1 import router_pb2 as pb

SYSTEM = "You are the assistant of a bookshop. Answer politely and concisely. " * 20


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def stream_chat(session: aiohttp.ClientSession, url: str, question: str) -> list[dict]:
    body = {
        "model": "llama-3-70b",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        "max_tokens": 40,
        "stream": True,
    }
    chunks = []
    async with session.post(f"{url}/v1/chat/completions", json=body) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        async for raw in response.content:
            line = raw.decode().strip()
            if not line:
                continue
            assert line.startswith("data: ")
            payload = line.removeprefix("data: ")
            if payload == "[DONE]":
                chunks.append({"done": True})
                break
            chunks.append(json.loads(payload))
    return chunks


async def scenario() -> None:
    reports: list[tuple[str, dict[str, float]]] = []
    node = SimNode(
        PROFILES["h100x4"],
        node_id="n0",
        dilation=20.0,
        report_interval_s=1.0,
        on_metrics=lambda node_id, figures: reports.append((node_id, figures)),
    )
    await node.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{node.url}/health") as r:
                assert r.status == 200
            async with session.get(f"{node.url}/v1/models") as r:
                assert (await r.json())["data"][0]["id"] == "llama-3-70b"

            chunks = await stream_chat(session, node.url, "Where is my order?")
            assert chunks[-1] == {"done": True}
            text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
            assert text.split() == ["tok"] * 40
            assert len(chunks) >= 3  # streamed in pieces, not one blob
            assert chunks[-2]["choices"][0]["finish_reason"] == "length"

            # Same system prompt again: its blocks are cached on this node.
            await stream_chat(session, node.url, "Do you ship to Canada?")
            async with session.get(f"{node.url}/metrics") as r:
                scraped = await r.text()
            queries = metric(scraped, "vllm:prefix_cache_queries_total")
            hits = metric(scraped, "vllm:prefix_cache_hits_total")
            prompt = len(text_to_tokens(f"<|system|>{SYSTEM}<|user|>Where is my order?"))
            assert queries >= 2 * prompt - 16
            assert hits >= (len(text_to_tokens(SYSTEM)) // 16 - 1) * 16
            assert metric(scraped, "vllm:time_to_first_token_seconds_count") == 2
            assert metric(scraped, "vllm:num_requests_running") == 0
            assert "vllm:kv_cache_usage_perc" in scraped

            async with session.post(f"{node.url}/v1/completions", json={"prompt": 5}) as r:
                assert r.status == 400
                assert "prompt" in (await r.json())["error"]["message"]
            body = {"prompt": "Hello there", "max_tokens": 3}
            async with session.post(f"{node.url}/v1/completions", json=body) as r:
                done = await r.json()
                assert done["usage"]["completion_tokens"] == 3
        await asyncio.sleep(0.1)  # two report intervals at 20x
        assert reports and reports[-1][0] == "n0"
        assert reports[-1][1]["kv_capacity_tokens"] == PROFILES["h100x4"].kv_capacity_tokens
    finally:
        await node.stop()


def test_stream_a_completion_and_scrape_metrics() -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=60))


async def kv_events_scenario() -> None:
    from llmlb_fast import Node, Router, RouterConfig
    from llmlb_fast.kv_events import KvEventIngest, KvEventSource
    from llmlb_fast.sim.node_server import chat_to_tokens

    node = SimNode(PROFILES["h100x4"], node_id="n0", dilation=20.0, kv_events=True)
    await node.start()
    router = Router(RouterConfig(), [Node("n0", node.url, models=["llama-3-70b"])])
    ingest = KvEventIngest(router)
    try:
        publisher = node.kv_publisher
        assert publisher is not None
        ingest.start()
        source = KvEventSource(
            "n0", publisher.endpoint, "kv-events", publisher.replay_endpoint, "llama-3-70b"
        )
        ingest.set_sources([source])
        async with aiohttp.ClientSession() as session:
            await stream_chat(session, node.url, "Where is my order?")
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}]
        prompt = chat_to_tokens(messages)
        system_blocks = len(chat_to_tokens([{"role": "system", "content": SYSTEM}])) // 16

        def credited() -> int:
            return router.prefix_credit(token_ids=prompt, model="llama-3-70b")["n0"].blocks

        for _ in range(200):  # the engine's events reach the router's index
            if credited() >= system_blocks:
                break
            await asyncio.sleep(0.01)
        assert credited() >= system_blocks
        assert router.nodes()[0].kv_events_state == "live"
        assert ingest.stats["n0"].errors["skipped_event"] == 0
    finally:
        await asyncio.to_thread(ingest.stop)
        await node.stop()


def test_a_simulated_node_publishes_vllm_kv_events_over_zmq() -> None:
    asyncio.run(kv_events_scenario())


async def live_kv_events_scenario(tmp_path: Path) -> None:
    """What ``llmlb bench --live --live-kv-events`` sets up: nodes that tokenize with a
    locally trained BPE and publish their KV events, a service whose proxy tokenizes
    alike and follows the events; a shared system prompt is credited from the events."""
    from grpc_harness import running_server
    from llmlb_fast.sim.cluster import SimCluster
    from llmlb_fast.sim.live_benchmark import add_kv_events
    from llmlb_fast.sim.load_generator import WORDS
    from llmlb_fast.sim.peer_routers import serve_config
    from llmlb_fast.sim.sim_tokenizer import BOS, write_model_files
    from llmlb_fast.tokenizer import ModelTokenizer

    files = write_model_files(tmp_path, WORDS)
    tokenizer = ModelTokenizer.from_files(*files, bos_token=BOS)
    cluster = SimCluster(
        [PROFILES["h100x4"]] * 2, dilation=20.0, kv_events=True, tokenizer=tokenizer
    )
    await cluster.start()
    try:
        config = serve_config("prefix_aware", cluster.specs())
        add_kv_events(config, cluster, "llama-3-70b", files)
        config["proxy"]["listen"] = "127.0.0.1:0"
        async with running_server(config) as running:
            proxy_port = running.server.proxy_port
            assert proxy_port
            async with aiohttp.ClientSession() as session:
                await stream_chat(session, f"http://127.0.0.1:{proxy_port}", "Where is my order?")
            for _ in range(200):
                listed = await running.stub.ListNodes(pb.ListNodesRequest())
                if sum(n.kv_engine_blocks for n in listed.nodes) > 0:
                    break
                await asyncio.sleep(0.01)
            assert {n.kv_events_state for n in listed.nodes} == {"live"}
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "x"}]
            ids = tokenizer.encode_chat(messages)
            routed = await running.stub.Route(
                pb.RouteRequest(model="llama-3-70b", token_ids=pb.TokenIds(ids=ids))
            )
            system_blocks = len(tokenizer.encode_chat(messages[:1])) // 16 - 1
            assert routed.matched_blocks >= system_blocks > 0
    finally:
        await cluster.stop()


def test_live_nodes_and_the_proxy_tokenize_alike_and_events_credit_them(tmp_path: Path) -> None:
    asyncio.run(live_kv_events_scenario(tmp_path))
