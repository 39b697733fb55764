"""The service's YAML config: schema, defaults, and conversion to the core's types.

The schema checks shape (unknown keys and wrong types are errors naming the key's
path); the core's ``RouterConfig`` checks the routing values, and its defaults are the
routing settings' defaults here. Durations are seconds, given as a number or a string
with a unit (``"100ms"``, ``"5s"``, ``"2m"``).

Policy parameters live under ``policies``, per policy, only those you change::

    policy: prefix_aware
    policies:
      prefix_aware: {balance_abs_threshold: 16, balance_rel_threshold: 2}
      llmlb: {load: 0.25, prefix: 1.0, gpu: 0.5}

The older spellings ``weights: {load, prefix, gpu}`` (``policies.llmlb``) and
``scheduling.balance_abs_threshold`` / ``balance_rel_threshold``
(``policies.prefix_aware``) still work; giving both spellings of one parameter with
different values is an error.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from llmlb_fast._core import POLICIES, Node, RouterConfig, check_node_address
from llmlb_fast.errors import ConfigError, LlmlbError

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _parse_duration(value: object) -> object:
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"not a duration: {value!r} (use seconds or e.g. '100ms', '5s')")
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


Seconds = Annotated[float, BeforeValidator(_parse_duration), Field(gt=0)]
_ZMQ_ENDPOINT = re.compile(
    r"^(tcp://(\[[0-9a-fA-F:.]+\]|[^*:/\s\[\]]+):[0-9]{1,5}|ipc://\S+|inproc://\S+)$"
)
ModelName = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KvEventsConfig(_Strict):
    """Where a node's engine publishes its KV-cache events (vLLM's or SGLang's ZMQ
    publisher): with it, the node's prefix credit is what its engine says it holds."""

    # The engine's PUB socket, e.g. tcp://10.0.0.5:5557 (vLLM's `endpoint`, as the
    # router reaches it: tcp://*:5557 on the engine is tcp://<engine host>:5557 here).
    endpoint: str = Field(min_length=1)
    topic: str = ""
    # vLLM's ROUTER socket that resends missed batches; None: gaps are not repaired.
    replay_endpoint: str | None = Field(default=None, min_length=1)
    # Model (and so chain seed) of the node's blocks; None: the node's single model.
    model: str | None = None
    # vLLM publishes rank r of a data-parallel engine on the endpoint's port + r.
    data_parallel_size: int = Field(default=1, ge=1, le=64)

    @field_validator("endpoint", "replay_endpoint")
    @classmethod
    def _zmq_endpoint(cls, endpoint: str | None) -> str | None:
        if endpoint is not None and not _ZMQ_ENDPOINT.match(endpoint):
            raise ValueError(
                f"{endpoint!r} is not a ZMQ endpoint to connect to "
                "(tcp://host:port, ipc://path or inproc://name)"
            )
        return endpoint


class NodeConfig(_Strict):
    id: str = Field(min_length=1)
    address: str = ""
    peak_tflops: float = Field(default=Node("default").peak_tflops, gt=0)  # the core's
    gpu_memory_bytes: int | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, gt=0)
    prefill_tokens_per_s: float | None = Field(default=None, gt=0)
    kv_capacity_tokens: int | None = Field(default=None, gt=0)
    labels: dict[str, str] = Field(default_factory=dict)
    # Models the node serves; empty: any model.
    models: list[ModelName] = Field(default_factory=list)
    kv_events: KvEventsConfig | None = None

    @model_validator(mode="after")
    def _address(self) -> NodeConfig:
        # Empty: a node only the in-process API routes to (no transport connects to it).
        if self.address:
            try:
                check_node_address(self.id, self.address)
            except LlmlbError as error:
                raise ValueError(str(error)) from None
        return self

    def to_node(self) -> Node:
        return Node(
            self.id,
            self.address,
            peak_tflops=self.peak_tflops,
            gpu_memory_bytes=self.gpu_memory_bytes,
            max_concurrency=self.max_concurrency,
            prefill_tokens_per_s=self.prefill_tokens_per_s,
            kv_capacity_tokens=self.kv_capacity_tokens,
            labels=self.labels,
            models=self.models,
        )


class TokenizerConfig(_Strict):
    """How a model's engine tokenizes (``tokenizers.<model>``): its ``tokenizer.json`` and
    chat template. Relative paths are read from the config file's directory."""

    tokenizer: Path
    chat_template: Path | None = None
    # What the template's bos_token / eos_token variables render as.
    bos_token: str = ""
    eos_token: str = ""

    @field_validator("tokenizer", "chat_template")
    @classmethod
    def _beside_the_config(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        base = (info.context or {}).get("base_dir")
        if path is None or path.is_absolute() or base is None:
            return path
        return Path(base) / path


CORE_DEFAULTS = RouterConfig()
"""The core's defaults, the one home of every routing setting's default."""

PolicyParams = dict[str, dict[str, float]]
"""``{policy: {parameter: value}}``."""


class WeightsConfig(_Strict):
    """The older spelling of ``policies.llmlb``."""

    load: float | None = None
    prefix: float | None = None
    gpu: float | None = None


class SchedulingConfig(_Strict):
    prefix_cache_size: int = Field(default=CORE_DEFAULTS.prefix_cache_size, gt=0)
    # How long a prompt routed to a node with live KV events counts as cached there
    # before its engine confirms it (a guess lives one to two of these).
    prefix_guess_ttl: Seconds = CORE_DEFAULTS.prefix_guess_ttl_s
    # What a block an engine offloaded below GPU memory counts for (KV events' medium).
    offloaded_prefix_weight: float = Field(
        default=CORE_DEFAULTS.offloaded_prefix_weight, ge=0, le=1
    )
    token_block_size: int = Field(default=CORE_DEFAULTS.token_block_size, gt=0)
    char_block_size: int = Field(default=CORE_DEFAULTS.char_block_size, gt=0)
    chars_per_token: float = Field(default=CORE_DEFAULTS.chars_per_token, gt=0)
    memory_saturation_threshold: float = Field(
        default=CORE_DEFAULTS.memory_saturation_threshold, gt=0, le=1
    )
    # Output tokens expected of a request without max_tokens, and the most expected
    # of any (they size the KV room a request needs).
    default_output_tokens: int = Field(default=CORE_DEFAULTS.default_output_tokens, ge=0)
    max_output_tokens: int = Field(default=CORE_DEFAULTS.max_output_tokens, ge=0)
    seed: int = Field(default=CORE_DEFAULTS.seed, ge=0)
    # The older spellings of policies.prefix_aware.balance_{abs,rel}_threshold.
    balance_abs_threshold: float | None = None
    balance_rel_threshold: float | None = None


class TimeoutsConfig(_Strict):
    # A routed request never completed is released after this long.
    request: Seconds = CORE_DEFAULTS.request_ttl_s
    # Metrics older than this are ignored by the policies.
    metrics_ttl: Seconds = CORE_DEFAULTS.metrics_ttl_s
    # Graceful shutdown: how long to wait for in-flight RPCs.
    drain: Seconds = 10.0


class OverloadConfig(_Strict):
    """A node over any set threshold for ``window`` seconds trips its breaker."""

    window: Seconds = 10.0
    # Off by default: a busy engine keeps its KV cache nearly full of running requests,
    # so high KV use says nothing about health (the router weighs the room instead).
    kv_cache_usage: float | None = Field(default=None, gt=0, le=1)
    gpu_memory_usage: float | None = Field(default=0.99, gt=0, le=1)
    num_requests_waiting: float | None = Field(default=None, gt=0)


class BreakerConfig(_Strict):
    enabled: bool = True
    failure_threshold: int = Field(default=5, gt=0)
    cooldown: Seconds = 30.0
    # Requests a half-open node takes at once while it proves itself (the first outcome
    # closes or reopens it).
    half_open_probes: int = Field(default=1, ge=1, le=1000)
    overload: OverloadConfig = Field(default_factory=OverloadConfig)


class CanaryConfig(_Strict):
    policy: str
    percent: float = Field(ge=0, le=100)

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, policy: str) -> str:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
        return policy


class TlsConfig(_Strict):
    cert_file: Path
    key_file: Path


class _NamedSecret(_Strict):
    """A named credential: the secret itself, a file holding it (a mounted Kubernetes
    secret) or an environment variable; at least 16 characters."""

    # What metrics and logs call its holder.
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    key: str | None = Field(default=None, min_length=16, repr=False)
    key_file: str | None = None
    key_env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> _NamedSecret:
        sources = [v for v in (self.key, self.key_file, self.key_env) if v is not None]
        if len(sources) != 1:
            raise ValueError("give exactly one of key, key_file, key_env")
        self.secret()  # a key file or variable that is missing fails the load
        return self

    def secret(self) -> str:
        if self.key is not None:
            return self.key
        if self.key_file is not None:
            try:
                text = Path(self.key_file).read_text(encoding="utf-8").strip()
            except OSError as error:
                raise ValueError(f"key_file: {error}") from None
        else:
            text = os.environ.get(str(self.key_env), "").strip()
        if len(text) < 16:
            raise ValueError("the key must be at least 16 characters")
        return text


class ApiKeyConfig(_NamedSecret):
    """One client key of the HTTP proxy (``Authorization: Bearer KEY``); its name labels
    ``llmlb_proxy_requests_total{api_key}``."""

    # Requests per second this key may send (a token bucket; None: unlimited), and how
    # many at once after a quiet spell (default: one second's worth, at least 1).
    rate: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, ge=1)

    @property
    def burst_size(self) -> float:
        if self.burst is not None:
            return float(self.burst)
        return max(1.0, self.rate or 1.0)


class TokenConfig(_NamedSecret):
    """One bearer token of the gRPC API (``authorization: Bearer KEY`` metadata)."""


class AuthConfig(_Strict):
    """Who may call the gRPC API (hot reloadable). Data plane (Route, FirstToken,
    Complete, RouteStream): any route or admin token, once route tokens are set. Admin
    (registration, metrics, ListNodes, WatchEvents): admin tokens only, once any is set
    (``server.auth_token`` counts as one). Reflection: any token, once any is set.
    Health stays open (probes)."""

    route_tokens: list[TokenConfig] = Field(default_factory=list)
    admin_tokens: list[TokenConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> AuthConfig:
        names = [t.name for t in [*self.route_tokens, *self.admin_tokens]]
        if len(set(names)) != len(names):
            raise ValueError("token names must be unique")
        return self


class ServerConfig(_Strict):
    """Read at start only: changing these needs a restart."""

    listen: str = "127.0.0.1:50051"
    tls: TlsConfig | None = None
    # An admin bearer token (the first release's; ``auth`` names several, reloadable).
    auth_token: str | None = Field(default=None, min_length=1)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    max_message_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    metrics_listen: str = "127.0.0.1"
    # 0 picks a free port; None disables the /metrics endpoint.
    metrics_port: int | None = Field(default=9100, ge=0, le=65535)
    # How often the config file is checked for changes.
    reload_poll_interval: Seconds = 1.0
    # A reload that would remove every node or drop auth_token is refused unless the
    # new file sets this (a truncated or half-written file must not wipe the cluster).
    allow_destructive_reload: bool = False


def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` -> ``("127.0.0.1", 8080)``; ``[::1]:8080`` for IPv6."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"not HOST:PORT: {listen!r}")
    return host.strip("[]"), int(port)


class ExtProcConfig(_Strict):
    """The Envoy ext_proc endpoint picker (Rust, tonic), on its own port."""

    enabled: bool = False
    # Plaintext gRPC (h2c), what Envoy's ext_proc filter connects to.
    listen: str = "127.0.0.1:9002"
    # With no node able to take a request: answer without a destination, so that
    # Envoy's own load balancing takes it (a fallback route), instead of a 503.
    # Reloadable.
    fail_open: bool = False

    @field_validator("listen")
    @classmethod
    def _host_port(cls, listen: str) -> str:
        split_listen(listen)
        return listen


class AdmissionConfig(_Strict):
    """How many proxied requests run at once; the rest wait in a bounded queue, then 429."""

    # None: no cap (the nodes' own max_concurrency still applies).
    max_in_flight: int | None = Field(default=None, ge=1)
    queue_size: int = Field(default=1024, ge=0)
    queue_timeout: Seconds = 5.0


class ProxyConfig(_Strict):
    """The traffic controller. Read at start only (a restart applies changes), except
    ``api_keys``, ``admission`` and ``ext_proc.fail_open``, which a reload replaces."""

    # The OpenAI-compatible HTTP proxy; nodes' ``address`` is the backend base URL.
    enabled: bool = False
    listen: str = "127.0.0.1:8080"
    # Per attempt: connect, first byte and the rest of the response.
    request_timeout: Seconds = 600.0
    connect_timeout: Seconds = 2.0
    # Attempts per request (1 = no retry): connect errors and 5xx before the first byte.
    max_attempts: int = Field(default=3, ge=1)
    backoff_base: float = Field(default=0.005, ge=0)
    backoff_cap: float = Field(default=0.2, ge=0)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    # How long a /v1/models answer of the backends is reused.
    models_ttl: Seconds = 5.0
    # Client keys; none: the proxy answers anyone who can reach it.
    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    ext_proc: ExtProcConfig = Field(default_factory=ExtProcConfig)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, listen: str) -> str:
        split_listen(listen)
        return listen

    @model_validator(mode="after")
    def _backoff_order(self) -> ProxyConfig:
        if self.backoff_cap < self.backoff_base:
            raise ValueError("backoff_cap must be at least backoff_base")
        names = [key.name for key in self.api_keys]
        if len(set(names)) != len(names):
            raise ValueError("api_keys names must be unique")
        return self


class ReplicasConfig(_Strict):
    """Active-active replicas sharing decisions through Redis (read at start only)."""

    # redis:// or rediss:// (TLS); a password goes in the URL (redis://:secret@host).
    redis_url: str = Field(min_length=1)
    # Unique among the replicas; default: host name and process id.
    name: str | None = Field(default=None, min_length=1, pattern=r"^[^\s\x1f]+$")
    # Replicas of one cluster share keys; several clusters may share one Redis.
    cluster: str = Field(default="default", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    # At most one batch per interval (a busy replica's messages share batches).
    batch_interval: Seconds = 0.005
    heartbeat_interval: Seconds = 0.5
    # A replica silent this long is gone: its requests stop counting elsewhere.
    ttl: Seconds = 3.0
    # The longest a joining replica stays NOT_SERVING waiting for its peers' snapshots.
    warmup_timeout: Seconds = 5.0
    history_batches: int = Field(default=20_000, ge=0)
    stream_max_len: int = Field(default=100_000, gt=0)

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str) -> str:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected a redis://, rediss:// or unix:// URL")
        return url

    @model_validator(mode="after")
    def _heartbeat_within_ttl(self) -> ReplicasConfig:
        if self.heartbeat_interval * 2 > self.ttl:
            raise ValueError("heartbeat_interval must be at most half of ttl")
        return self


class AlertsConfig(_Strict):
    webhook_url: str | None = None
    timeout: Seconds = 2.0


class ServiceConfig(_Strict):
    policy: str = CORE_DEFAULTS.policy
    # Per-policy parameters, only those that differ from the core's defaults.
    policies: PolicyParams = Field(default_factory=dict)
    # The older spelling of policies.llmlb.
    weights: WeightsConfig | None = None
    scheduling: SchedulingConfig = Field(default_factory=SchedulingConfig)
    gpu_monitor_interval: Seconds = 0.1
    load_balance_window: Seconds = CORE_DEFAULTS.load_balance_window_s
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    canary: CanaryConfig | None = None
    server: ServerConfig = Field(default_factory=ServerConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    nodes: list[NodeConfig] = Field(default_factory=list)
    replicas: ReplicasConfig | None = None
    # Models whose requests are routed by the engine's tokens (else by text blocks).
    tokenizers: dict[ModelName, TokenizerConfig] = Field(default_factory=dict)

    @field_validator("policies")
    @classmethod
    def _known_parameters(cls, policies: PolicyParams) -> PolicyParams:
        known = CORE_DEFAULTS.policies
        for policy, params in policies.items():
            if policy not in known:
                raise ValueError(f"unknown policy {policy!r}; known: {', '.join(known)}")
            unknown = sorted(set(params) - set(known[policy]))
            if unknown:
                names = ", ".join(known[policy]) or "none"
                raise ValueError(
                    f"{policy}: unknown parameters {unknown}; {policy}'s parameters: {names}"
                )
        return policies

    @model_validator(mode="after")
    def _spellings_agree(self) -> ServiceConfig:
        self.policy_params()
        return self

    @model_validator(mode="after")
    def _unique_node_ids(self) -> ServiceConfig:
        seen: set[str] = set()
        for index, node in enumerate(self.nodes):
            if node.id in seen:
                raise ValueError(f"nodes.{index}.id: duplicate node id {node.id!r}")
            seen.add(node.id)
        return self

    def _older_spellings(self) -> list[tuple[str, str, str, float | None]]:
        """``(key, policy, parameter, value)`` of every older policy-parameter key."""
        s, w = self.scheduling, self.weights or WeightsConfig()
        return [
            (
                "scheduling.balance_abs_threshold",
                "prefix_aware",
                "balance_abs_threshold",
                s.balance_abs_threshold,
            ),
            (
                "scheduling.balance_rel_threshold",
                "prefix_aware",
                "balance_rel_threshold",
                s.balance_rel_threshold,
            ),
            ("weights.load", "llmlb", "load", w.load),
            ("weights.prefix", "llmlb", "prefix", w.prefix),
            ("weights.gpu", "llmlb", "gpu", w.gpu),
        ]

    def name_older_key(self, message: str) -> str:
        """The core's message about a policy parameter, with the older key it was given as."""
        for key, policy, param, value in self._older_spellings():
            if value is not None and f"policies.{policy}.{param} " in message:
                return f"{message} (given as {key})"
        return message

    def policy_params(self) -> PolicyParams:
        """``policies`` with the older keys merged in; ValueError when two disagree."""
        merged = {policy: dict(params) for policy, params in self.policies.items()}
        for key, policy, param, value in self._older_spellings():
            if value is None:
                continue
            params = merged.setdefault(policy, {})
            if params.get(param, value) != value:
                raise ValueError(
                    f"{key} ({value:g}) conflicts with policies.{policy}.{param} "
                    f"({params[param]:g}); give one"
                )
            params[param] = value
        return merged

    def router_config(self) -> RouterConfig:
        """The core's config; raises ConfigError when the core refuses a value."""
        s = self.scheduling
        return RouterConfig(
            policy=self.policy,
            token_block_size=s.token_block_size,
            char_block_size=s.char_block_size,
            chars_per_token=s.chars_per_token,
            prefix_cache_size=s.prefix_cache_size,
            prefix_guess_ttl_s=s.prefix_guess_ttl,
            offloaded_prefix_weight=s.offloaded_prefix_weight,
            metrics_ttl_s=self.timeouts.metrics_ttl,
            request_ttl_s=self.timeouts.request,
            load_balance_window_s=self.load_balance_window,
            memory_saturation_threshold=s.memory_saturation_threshold,
            default_output_tokens=s.default_output_tokens,
            max_output_tokens=s.max_output_tokens,
            policies=self.policy_params(),
            seed=s.seed,
        )

    def router_nodes(self) -> list[Node]:
        return [node.to_node() for node in self.nodes]


def _format_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{path}: {item['msg']}")
    return f"invalid config {source}: " + "; ".join(lines)


def parse_config(data: Any, source: str = "<dict>") -> ServiceConfig:
    """Validates a parsed document; every problem is reported with its key path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: the top level must be a mapping")
    source_path = Path(source)
    base_dir = source_path.parent if source_path.is_file() else None
    try:
        config = ServiceConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None
    try:
        config.router_config()
    except ValueError as error:
        message = str(error).removeprefix("invalid config: ")
        raise ConfigError(f"invalid config {source}: {config.name_older_key(message)}") from None
    return config


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names one key twice (the last
    would silently win)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _unique_mapping,
)


def parse_config_text(text: str, source: str = "<text>") -> ServiceConfig:
    """Parses a config document. An empty, comment-only or ``null`` document is an
    error, not "all defaults": it is what a truncated file looks like mid-write."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as error:
        raise ConfigError(f"invalid config {source}: not valid YAML: {error}") from None
    if data is None:
        raise ConfigError(
            f"invalid config {source}: the file holds no settings (empty, comments only or "
            "null); write {} for all defaults"
        )
    return parse_config(data, source)


def destructive_changes(old: ServiceConfig, new: ServiceConfig) -> list[str]:
    """What a reload from ``old`` to ``new`` would wipe: every configured node, or a
    kind of gRPC token (the API would open to anyone). Empty when ``new`` allows it
    (``server.allow_destructive_reload``)."""
    if new.server.allow_destructive_reload:
        return []
    changes = []
    if old.nodes and not new.nodes:
        changes.append(f"it removes all {len(old.nodes)} configured nodes")
    if old.server.auth_token is not None and new.server.auth_token is None:
        changes.append("it drops server.auth_token")
    for kind in ("route_tokens", "admin_tokens"):
        if getattr(old.server.auth, kind) and not getattr(new.server.auth, kind):
            changes.append(f"it drops every server.auth.{kind}")
    return changes


def load_config(path: str | Path) -> ServiceConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror or error}") from None
    return parse_config_text(text, str(path))
