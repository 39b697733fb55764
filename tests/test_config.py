"""The YAML config schema: defaults, durations, errors naming the key path."""

from __future__ import annotations

from pathlib import Path

import pytest
from llmlb_fast import POLICIES, Node, RouterConfig
from llmlb_fast.config import destructive_changes, load_config, parse_config, parse_config_text
from llmlb_fast.errors import ConfigError

FULL = """
policy: prefix_aware
weights: {load: 1.0, prefix: 0.8, gpu: 0.3}
scheduling: {prefix_cache_size: 10000}
gpu_monitor_interval: 100ms
load_balance_window: 30s
timeouts: {request: 2m, metrics_ttl: 5, drain: 1.5}
breaker:
  failure_threshold: 4
  cooldown: 10s
  overload: {window: 5s, kv_cache_usage: 0.97, gpu_memory_usage: null, num_requests_waiting: 64}
canary: {policy: round_robin, percent: 5}
server:
  listen: 0.0.0.0:50051
  auth_token: abc
  max_message_bytes: 1048576
  metrics_port: 9100
alerts: {webhook_url: "http://127.0.0.1:9/hook"}
nodes:
  - {id: gpu-0, address: "10.0.0.1:8000", peak_tflops: 989, kv_capacity_tokens: 400000}
  - {id: gpu-1, address: "10.0.0.2:8000", labels: {zone: b}}
"""


def test_full_config_converts_to_core_types() -> None:
    config = parse_config_text(FULL)
    assert config.gpu_monitor_interval == pytest.approx(0.1)
    assert config.timeouts.request == 120.0
    router = config.router_config()
    assert router.policy == "prefix_aware"
    assert router.prefix_cache_size == 10_000
    assert router.load_balance_window_s == 30.0
    assert router.request_ttl_s == 120.0
    assert router.weights["prefix"] == pytest.approx(0.8)
    nodes = config.router_nodes()
    assert [n.id for n in nodes] == ["gpu-0", "gpu-1"]
    assert nodes[0].kv_capacity_tokens == 400_000
    assert nodes[1].labels == {"zone": "b"}
    assert config.breaker.overload.gpu_memory_usage is None


def test_defaults() -> None:
    config = parse_config({})
    assert config.policy == "llmlb"
    assert config.gpu_monitor_interval == 0.1
    assert config.load_balance_window == 30.0
    assert config.canary is None
    assert config.server.listen == "127.0.0.1:50051"
    assert config.breaker.failure_threshold == 5
    assert parse_config_text("{}").nodes == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("scheduling: {prefix_cache_sise: 10}", "scheduling.prefix_cache_sise: Extra inputs"),
        ("nodes: [{id: a, adress: x}]", "nodes.0.adress"),
        ("breaker: {cooldown: soon}", "breaker.cooldown"),
        ("breaker: {failure_threshold: -1}", "breaker.failure_threshold"),
        ("canary: {policy: fastest, percent: 5}", "canary.policy"),
        ("canary: {policy: random, percent: 150}", "canary.percent"),
        ("server: {max_message_bytes: big}", "server.max_message_bytes"),
        ("policy: fastest", "unknown policy"),
        ("nodes: [{id: a}, {id: a}]", "duplicate node id"),
        ("- just a list", "top level must be a mapping"),
        ("policy: [unclosed", "not valid YAML"),
        ("scheduling: {balance_rel_threshold: 0.5}", "(given as scheduling.balance_rel_threshold)"),
        ("policies: {fastest: {}}", "policies: Value error, unknown policy 'fastest'"),
        ("policies: {llmlb: {speed: 1}}", "llmlb: unknown parameters ['speed']"),
        ("policies: {random: {seed: 1}}", "random's parameters: none"),
        ("policies: {llmlb: {load: fast}}", "policies.llmlb.load"),
        ("policies: {llmlb: {load: -1}}", "policies.llmlb.load must be a finite number >= 0"),
        ("weights: {load: 1, prefix: 2, speed: 3}", "weights.speed: Extra inputs"),
        ("replicas: {name: a}", "replicas.redis_url: Field required"),
        ("replicas: {redis_url: 'http://x'}", "expected a redis://, rediss:// or unix:// URL"),
        ("replicas: {redis_url: 'redis://x', name: 'a b'}", "replicas.name"),
        ("replicas: {redis_url: 'redis://x', ttl: 1, heartbeat_interval: 0.8}", "at most half"),
    ],
)
def test_errors_name_the_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match="invalid config") as info:
        parse_config_text(text)
    assert expected in str(info.value)


def test_load_config_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(FULL)
    assert load_config(path).policy == "prefix_aware"
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_node_models_default_to_any_and_must_be_names() -> None:
    config = parse_config(
        {"nodes": [{"id": "a", "models": ["llama-3-70b", "qwen-2-7b"]}, {"id": "b"}]}
    )
    assert [node.models for node in config.router_nodes()] == [["llama-3-70b", "qwen-2-7b"], []]
    with pytest.raises(ConfigError, match=r"nodes\.0\.models\.1: String should have at least 1"):
        parse_config({"nodes": [{"id": "a", "models": ["m", ""]}]})
    with pytest.raises(ConfigError, match=r"nodes\.0\.models: Input should be a valid list"):
        parse_config({"nodes": [{"id": "a", "models": "m"}]})


def test_proxy_section_defaults_and_errors() -> None:
    from llmlb_fast.transports.proxy.settings import proxy_settings

    default = parse_config({}).proxy
    assert (default.enabled, default.listen, default.ext_proc.enabled) == (
        False,
        "127.0.0.1:8080",
        False,
    )
    config = parse_config_text(
        "proxy: {enabled: true, listen: '0.0.0.0:9000', request_timeout: 30s,"
        " max_attempts: 2, max_body_bytes: 1024, ext_proc: {enabled: true}}"
    ).proxy
    settings = proxy_settings(config)
    assert (settings.request_timeout_s, settings.max_attempts, settings.max_body_bytes) == (
        30.0,
        2,
        1024,
    )
    assert config.ext_proc.enabled
    cases = {
        "proxy: {listen: 'nohost'}": "proxy.listen",
        "proxy: {max_attempts: 0}": "proxy.max_attempts",
        "proxy: {retries: 3}": "proxy.retries: Extra inputs",
        "proxy: {ext_proc: {enabled: true, port: 1}}": "proxy.ext_proc.port",
        "proxy: {backoff_base: 1, backoff_cap: 0.5}": "backoff_cap must be at least",
        "proxy: {api_keys: [{name: a, key: short}]}": "at least 16 characters",
        "proxy: {api_keys: [{name: a}]}": "exactly one of key, key_file, key_env",
        "proxy: {api_keys: [{name: a, key_env: LLMLB_NO_SUCH_VARIABLE}]}": "at least 16",
        "proxy: {api_keys: [{name: a, key_file: /nonexistent/key}]}": "key_file",
        "proxy: {api_keys: [{name: 'a b', key: sk-0123456789abcdef}]}": "name",
        "proxy: {api_keys: [{name: a, key: sk-0123456789abcdef}, "
        "{name: a, key: sk-0123456789abcdeg}]}": "names must be unique",
        "proxy: {api_keys: [{name: a, key: sk-0123456789abcdef, rate: 0}]}": "rate",
        "proxy: {admission: {max_in_flight: 0}}": "proxy.admission.max_in_flight",
        "proxy: {admission: {queue_size: -1}}": "proxy.admission.queue_size",
    }
    for text, expected in cases.items():
        with pytest.raises(ConfigError, match=expected):
            parse_config_text(text)


def test_unchanged_config_has_the_cores_defaults() -> None:
    """One home for defaults: the YAML schema, the binding and the core agree."""
    from_yaml = parse_config({}).router_config()
    core = RouterConfig()
    assert from_yaml.to_dict() == core.to_dict()
    assert from_yaml == core
    assert set(core.policies) == set(POLICIES)
    [node] = parse_config({"nodes": [{"id": "a"}]}).router_nodes()
    assert node.peak_tflops == Node("a").peak_tflops


def test_policy_parameters_nested_and_in_their_older_spellings() -> None:
    nested = parse_config_text(
        """
        policy: prefix_aware
        policies:
          prefix_aware: {balance_abs_threshold: 32, balance_rel_threshold: 2}
          llmlb: {load: 1.0, gpu: 0.3}
          gpu_aware: {pressure_scale: 3}
        """
    ).router_config()
    older = parse_config_text(
        """
        policy: prefix_aware
        weights: {load: 1.0, gpu: 0.3}
        scheduling: {balance_abs_threshold: 32, balance_rel_threshold: 2}
        policies: {gpu_aware: {pressure_scale: 3}}
        """
    ).router_config()
    assert nested == older
    assert nested.policies["prefix_aware"] == {
        "balance_abs_threshold": 32.0,
        "balance_rel_threshold": 2.0,
    }
    assert nested.policies["llmlb"] == {"load": 1.0, "prefix": 1.0, "gpu": 0.3, "memory": 1.0}
    assert nested.policies["gpu_aware"] == {"pressure_scale": 3.0}


def test_both_spellings_must_agree() -> None:
    agreeing = parse_config_text(
        "weights: {load: 1.0}\npolicies: {llmlb: {load: 1.0, prefix: 0.5}}"
    ).router_config()
    assert agreeing.weights == {"load": 1.0, "prefix": 0.5, "gpu": 0.5, "memory": 1.0}
    cases = {
        "weights: {load: 1.0}\npolicies: {llmlb: {load: 2.0}}": (
            "weights.load (1) conflicts with policies.llmlb.load (2); give one"
        ),
        "scheduling: {balance_rel_threshold: 3}\n"
        "policies: {prefix_aware: {balance_rel_threshold: 2}}": (
            "scheduling.balance_rel_threshold (3) conflicts with"
            " policies.prefix_aware.balance_rel_threshold (2)"
        ),
    }
    for text, expected in cases.items():
        with pytest.raises(ConfigError, match="invalid config") as info:
            parse_config_text(text)
        assert expected in str(info.value)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "null\n", "~"])
def test_a_document_without_settings_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="holds no settings"):
        parse_config_text(text, "llmlb.yaml")


def test_duplicate_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="duplicate key 'policy'"):
        parse_config_text("policy: llmlb\npolicy: round_robin\n")
    with pytest.raises(ConfigError, match="duplicate key 'load'"):
        parse_config_text("policies: {llmlb: {load: 1, load: 2}}")


def test_a_reload_that_wipes_nodes_or_auth_needs_an_opt_in() -> None:
    guarded = parse_config_text("server: {auth_token: s3cret}\nnodes: [{id: a, address: 'a:1'}]")
    no_nodes = parse_config_text("server: {auth_token: s3cret}")
    no_auth = parse_config_text("nodes: [{id: a, address: 'a:1'}]")
    assert destructive_changes(guarded, no_nodes) == ["it removes all 1 configured nodes"]
    assert destructive_changes(guarded, no_auth) == ["it drops server.auth_token"]
    opted_in = parse_config_text("server: {allow_destructive_reload: true}")
    assert destructive_changes(guarded, opted_in) == []
    assert destructive_changes(no_nodes, guarded) == []


def test_replicas_settings_and_defaults() -> None:
    config = parse_config_text("replicas: {redis_url: 'redis://10.0.0.5:6379/1', ttl: 2s}")
    assert config.replicas is not None
    assert config.replicas.ttl == 2.0
    assert config.replicas.batch_interval == 0.005
    assert config.replicas.cluster == "default" and config.replicas.name is None
    assert parse_config_text("{}").replicas is None
