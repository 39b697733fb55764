"""Tokenizer-aware routing: prompts tokenized as the engine tokenizes them (a tokenizer
trained here, a ChatML template), through the config, the service and the HTTP proxy."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
import yaml
from llmlb_fast import ConfigError, Node, Router, RouterConfig, hash_token_blocks
from llmlb_fast.config import ServiceConfig, load_config, parse_config
from llmlb_fast.tokenizer import ChatTemplate, ModelTokenizer, TemplateError
from llmlb_fast.transports.proxy import ProxyServer
from proxy_backends import MODEL, Backend
from service_harness import RecordingService
from tokenizer_fixture import CHAT_TEMPLATE, make_tokenizer

SYSTEM = "You are the assistant of a book shop; answer the customer politely. " * 12


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture
def tokenizer(tokenizer_json: Path) -> ModelTokenizer:
    return ModelTokenizer.from_files(tokenizer_json, CHAT_TEMPLATE, bos_token="<s>")


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def test_chat_is_the_rendered_template_encoded_without_added_special_tokens(
    tokenizer: ModelTokenizer,
) -> None:
    messages = chat("Where is my order?")
    template = tokenizer.chat_template
    assert template is not None
    text = template.render(messages)
    assert text.startswith("<s><|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    ids = tokenizer.encode_chat(messages)
    assert ids == tokenizer.tokenizer.encode(text, add_special_tokens=False).ids
    assert ids.count(tokenizer.tokenizer.token_to_id("<s>")) == 1  # the template's BOS only
    # A completions prompt gets the tokenizer's own BOS.
    assert tokenizer.encode_text("order")[0] == tokenizer.tokenizer.token_to_id("<s>")


def test_templates_run_sandboxed_and_may_refuse(tokenizer: ModelTokenizer) -> None:
    with pytest.raises(TemplateError, match="unknown role"):
        tokenizer.encode_chat([{"role": "robot", "content": "hi"}])
    sneaky = ChatTemplate.from_text("{{ messages.__class__.__mro__ }}")
    with pytest.raises(TemplateError):
        sneaky.render([{"role": "user", "content": "hi"}])
    with pytest.raises(ConfigError, match="chat template"):
        ChatTemplate.from_text("{% for %}")


def test_config_loads_tokenizers_beside_the_file(tmp_path: Path, tokenizer_json: Path) -> None:
    (tmp_path / "tok.json").write_bytes(tokenizer_json.read_bytes())
    (tmp_path / "chat.jinja").write_text(CHAT_TEMPLATE.read_text())
    path = tmp_path / "llmlb.yaml"
    entry = {"tokenizer": "tok.json", "chat_template": "chat.jinja", "bos_token": "<s>"}
    path.write_text(yaml.safe_dump({"tokenizers": {MODEL: entry}}))
    config = load_config(path)
    assert config.tokenizers[MODEL].tokenizer == tmp_path / "tok.json"
    service = RecordingService(Router(RouterConfig(), [Node("a")]), config)
    assert service.tokenizer(MODEL) is not None
    assert service.tokenizer("other-model") is None


def test_a_broken_tokenizer_fails_the_load_and_a_reload_keeps_the_old_one(
    tmp_path: Path, tokenizer_json: Path
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    bad = parse_config({"tokenizers": {MODEL: {"tokenizer": str(broken)}}})
    with pytest.raises(ConfigError, match=f"tokenizers.{MODEL}"):
        RecordingService(Router(RouterConfig(), [Node("a")]), bad)
    good = parse_config(
        {"nodes": [{"id": "a"}], "tokenizers": {MODEL: {"tokenizer": str(tokenizer_json)}}}
    )
    service = RecordingService(Router(RouterConfig(), [Node("a")]), good)
    kept = service.tokenizer(MODEL)
    broken_reload = parse_config(
        {"nodes": [{"id": "a"}], "tokenizers": {MODEL: {"tokenizer": str(broken)}}}
    )
    with pytest.raises(ConfigError):
        service.apply_config(broken_reload)
    assert service.tokenizer(MODEL) is kept
    assert service.config == good


async def _proxy_routes_by_engine_tokens(tokenizer_json: Path) -> None:
    backends = [Backend("a"), Backend("b")]
    for backend in backends:
        await backend.start()
    settings = {"tokenizer": str(tokenizer_json), "chat_template": str(CHAT_TEMPLATE)}
    config = ServiceConfig.model_validate({"tokenizers": {MODEL: {**settings, "bos_token": "<s>"}}})
    router = Router(
        RouterConfig(policy="prefix_aware"), [Node(b.name, b.address) for b in backends]
    )
    service = RecordingService(router, config)
    proxy = ProxyServer(service)
    port = await proxy.start()
    try:
        async with aiohttp.ClientSession() as client:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            for question in ("Where is my order?", "Do you ship to Canada?"):
                body = {"model": MODEL, "messages": chat(question), "max_tokens": 8}
                async with client.post(url, json=body) as response:
                    assert response.status == 200
                    await response.read()
            # An unknown role: the template refuses, the request routes by text.
            body = {"model": MODEL, "messages": [{"role": "robot", "content": "beep"}]}
            async with client.post(url, json=body) as response:
                assert response.status == 200
                await response.read()
        proxy.flush()  # the proxy's records reach the service in batches
        first, second = service.completions[0], service.completions[1]
        assert first.node_id == second.node_id  # the shared system prompt's blocks
        tok = ModelTokenizer.from_files(tokenizer_json, CHAT_TEMPLATE, bos_token="<s>")
        ids = tok.encode_chat(chat("Where is my order?"))
        credit = router.prefix_credit(token_ids=ids, model=MODEL)[first.node_id]
        assert credit.blocks == len(ids) // 16  # the engine's token chain, not text
        assert len(hash_token_blocks(ids, model=MODEL)) == credit.blocks
        fallbacks = service.telemetry.registry.get_sample_value(
            "llmlb_tokenizer_fallbacks_total", {"model": MODEL}
        )
        assert fallbacks == 1.0
    finally:
        await proxy.stop()
        for backend in backends:
            await backend.stop()


def test_the_proxy_routes_a_tokenized_model_by_the_engine_tokens(tokenizer_json: Path) -> None:
    asyncio.run(_proxy_routes_by_engine_tokens(tokenizer_json))
