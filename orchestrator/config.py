"""Typed, frozen settings of the coordinator: its ports, routing, timings and model catalog.

Built once from defaults < config file < LLAMAHERD_COORDINATOR_* variables < flags (the same
layering as a worker's) and handed to every part of the control plane.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from common.cluster_secrets import DEFAULT_TOKEN_FILE, TOKEN_ENV, TlsFiles, ensure_token_file
from common.model_settings import (
    BUILTIN_PREFIX,
    DEFAULT_MODEL,
    STORE_NAME_PATTERN,
    STORE_PREFIX,
    ModelConfig,
    ModelSource,
)
from common.settings import layered_settings, log_level_name
from orchestrator.routing.policies import DEFAULT_POLICY, POLICY_NAMES

ENV_PREFIX = "LLAMAHERD_COORDINATOR_"


class CatalogEntry(ModelConfig):
    """A model the cluster should serve: how to load it (ModelConfig's settings, under the
    same names and checks as in a worker's config), how many replicas, on which nodes.

    The file is either a `path` as the workers see it, or `model: NAME`, a model in the
    coordinator's store (llamaherd models add): its path is then `store:NAME`, and placement
    resolves the name against the store and sends the workers where to fetch the file
    (ModelConfig.source), so nodes that lack the file can serve it too.

    Settings an entry leaves unset are not sent (`load_settings`), so each worker applies
    its own defaults (its core count for n_threads, say) rather than the coordinator's.
    The split settings (rpc_servers, tensor_split) are the split planner's to choose.
    """

    model: str | None = Field(
        None, pattern=STORE_NAME_PATTERN,
        description="a model in the coordinator's store, by name (instead of path)",
    )  # fmt: skip

    @model_validator(mode="before")
    @classmethod
    def _path_or_store_name(cls, data: Any) -> Any:
        """Exactly one of `path` and `model`; `model: NAME` becomes the path `store:NAME`."""
        if not isinstance(data, Mapping):
            return data  # pydantic reports the type
        alias = data.get("alias", "a catalog entry")
        path, name = data.get("path"), data.get("model")
        if path is not None and name is not None:
            raise ValueError(
                f"{alias}: give either path (a file on the workers) or model (a store name), "
                "not both"
            )
        if name is not None:
            if not isinstance(name, str) or ".." in name:
                raise ValueError(f"{alias}: model must be a store name without '..'")
            return {**data, "path": STORE_PREFIX + name}
        if path is None:
            raise ValueError(
                f"{alias}: give path (a GGUF file on the workers) or model (a store name, "
                "see llamaherd models list)"
            )
        if isinstance(path, str) and path.startswith(STORE_PREFIX):
            raise ValueError(
                f"{alias}: write model: {path[len(STORE_PREFIX) :]} for a store model, not "
                f"path: {path}"
            )
        return data

    @model_validator(mode="after")
    def _store_path_has_its_source(self) -> CatalogEntry:
        """Replaces ModelConfig's check of the same name: a catalog entry never carries a
        source (placement resolves its store name each round), and `source` is refused."""
        if self.source is not None:
            raise ValueError(
                f"{self.alias}: source is chosen by placement from the store; name the model "
                "with model: NAME"
            )
        return self

    @property
    def store_name(self) -> str | None:
        """The store model this entry names, None for an entry with a path."""
        return self.model

    replicas: int = Field(1, ge=0, le=1024, description="ready copies wanted across nodes")
    labels: tuple[str, ...] = Field((), description="only nodes carrying all these labels")
    split_nodes: int = Field(
        0, ge=0, le=16,
        description="spread one replica's layers over nodes (llama.cpp RPC): 0 = only when "
        "no single node can hold it, 1 = never, N >= 2 = always over exactly N nodes",
    )  # fmt: skip

    @model_validator(mode="after")
    def _one_split_replica(self) -> CatalogEntry:
        if self.split_nodes >= 2 and self.replicas > 1:
            raise ValueError(
                f"{self.alias}: split_nodes {self.split_nodes} spreads one replica over "
                f"several nodes; set replicas to 0 or 1, not {self.replicas}"
            )
        if self.split_nodes >= 2 and "n_gpu_layers" in self.model_fields_set:
            raise ValueError(
                f"{self.alias}: the split plan chooses n_gpu_layers when split_nodes is "
                f"{self.split_nodes}; leave it unset"
            )
        return self

    @model_validator(mode="after")
    def _split_settings_are_planned(self) -> CatalogEntry:
        planned = sorted(_PLANNED & self.model_fields_set)
        if planned:
            raise ValueError(
                f"{self.alias}: {', '.join(planned)} are chosen by the split planner from "
                "the nodes it picks; leave them unset (see split_nodes)"
            )
        return self

    def load_fields(self) -> dict[str, Any]:
        """The model settings this entry sets: what a LoadModel request for it carries."""
        return self.model_dump(include=_MODEL_SETTINGS, exclude_unset=True)

    def load_settings(self, source: ModelSource | None = None) -> ModelConfig:
        """The entry's model settings as the workers take them, only the ones it sets;
        a store entry's with `source`, where to fetch its file (required for one)."""
        fields = self.load_fields()
        if self.model is not None:
            if source is None or source.name != self.model:
                raise ValueError(f"{self.alias}: store model {self.model} needs its source")
            fields["source"] = source
        return ModelConfig.model_validate(fields)


_MODEL_SETTINGS = set(ModelConfig.model_fields)
_PLANNED = frozenset({"rpc_servers", "tensor_split"})


def default_catalog(replicas: int = 1) -> tuple[CatalogEntry, ...]:
    return (
        CatalogEntry(alias=DEFAULT_MODEL, path=BUILTIN_PREFIX + DEFAULT_MODEL, replicas=replicas),
    )


class CoordinatorSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="address the worker registry listens on")
    registry_port: int = Field(50050, ge=0, le=65535, description="port workers heartbeat to")
    gateway_host: str = Field(
        "127.0.0.1",
        description="address the gateways listen on; ray-node: each on its own Ray node's "
        "address (a coordinator host that joined with ray start --address)",
    )
    http_port: int = Field(8000, ge=0, le=65535, description="OpenAI-compatible HTTP API")
    grpc_port: int = Field(8001, ge=0, le=65535, description="gRPC Inference API")
    gateways_per_node: int = Field(
        1, ge=1, le=64, description="gateway processes on each Ray node (they share the ports)"
    )
    routing_policy: str = Field(DEFAULT_POLICY, description=", ".join(POLICY_NAMES))
    retries: int = Field(
        2, ge=0, le=10,
        description="times one request is sent again when its worker fails: retried elsewhere "
        "before streaming, restarted (non-streaming HTTP) or continued on another replica "
        "(a stream in flight, a migration)",
    )  # fmt: skip
    stall_timeout_s: float = Field(
        30.0, ge=0, le=3600,
        description="a started stream that sends nothing this long is moved to another "
        "replica (0: never); a hung worker is caught sooner by its silent heartbeat",
    )  # fmt: skip
    http_body_timeout_s: float = Field(
        20.0, gt=0, le=3600, description="time a client has to send a request's whole body"
    )
    http_max_connections: int = Field(
        1024, ge=1, le=1_000_000,
        description="concurrent HTTP connections per gateway; more are answered 503",
    )  # fmt: skip
    heartbeat_interval_s: float = Field(1.0, gt=0, le=60, description="expected worker reports")
    down_after_s: float = Field(
        3.0, gt=0, le=600, description="silence after which a worker leaves routing"
    )
    forget_after_s: float = Field(
        300.0, gt=0, description="silence after which a down worker is dropped from status"
    )
    placement_interval_s: float = Field(
        2.0, gt=0, le=600, description="seconds between catalog reconciliations"
    )
    assumed_link_bytes_per_second: float = Field(
        12_500_000.0, gt=0,
        description="placement's guess of a node's download rate for a store model (bytes/s; "
        "default 100 Mbit/s) until the node has reported a measured one",
    )  # fmt: skip
    download_timeout_s: float = Field(
        3600.0, gt=0,
        description="a store model still downloading after this long is unloaded there and "
        "placed elsewhere, with the reason in status",
    )  # fmt: skip
    store_fetches_per_file: int = Field(
        1, ge=0, le=1024,
        description="while no node holds a store file yet, how many nodes may fetch it from "
        "the store at once; the others wait and fetch from them (0 = no limit)",
    )  # fmt: skip
    power_budget_w: float | None = Field(
        None, gt=0,
        description="the cluster's power budget in watts (default: none): placement starts no "
        "replica that would take the draw the nodes report past it, and the gateways answer "
        "new requests 429 while the draw is over it (again below 95 percent); nodes that report no "
        "power are listed as unmeasured, not counted",
    )  # fmt: skip
    link_rtts: tuple[str, ...] = Field(
        (),
        description="the round trip a node's own link adds, as NODE_OR_LABEL=MS (e.g. wifi=4 "
        "for the nodes labelled wifi): between two nodes the split planner assumes the sum of "
        "theirs, a token costs about one per helper, and it prefers nearer nodes; a node "
        "named by several counts the largest, one named by none 0",
    )
    split_min_tokens_per_second: float = Field(
        0.0, ge=0,
        description="a split the planner estimates below this many tokens/s (from the nodes' "
        "reference speeds and link_rtts) is not made (0 = any)",
    )  # fmt: skip
    dashboard: bool = Field(
        True,
        description="serve the cluster dashboard on the HTTP port (/dashboard/; its data at "
        "/v1/dashboard/state and /v1/dashboard/stream, which need the API key when one is set)",
    )
    dashboard_interval_s: float = Field(
        1.0, ge=0.2, le=10, description="seconds between the dashboard's live updates"
    )
    dashboard_max_streams: int = Field(
        32, ge=1, le=10_000,
        description="dashboard streams one gateway serves at once; more are answered 429",
    )  # fmt: skip
    api_key: SecretStr | None = Field(
        None,
        description="require 'Authorization: Bearer <key>' on both APIs (better set through "
        "LLAMAHERD_COORDINATOR_API_KEY than on the command line)",
    )
    cluster_token: SecretStr | None = Field(
        None,
        description="the cluster's join token, required from every worker (set it through "
        f"{TOKEN_ENV}, never on a command line; default: the token file's)",
    )
    cluster_token_file: Path = Field(
        DEFAULT_TOKEN_FILE,
        description="where the join token is kept; created (0600) with a fresh token when "
        f"missing and {TOKEN_ENV} is unset",
    )
    tls_ca: Path | None = Field(
        None, description="mutual TLS: the cluster CA's certificate (llamaherd certs init)"
    )
    tls_cert: Path | None = Field(
        None,
        description="mutual TLS: the coordinator's certificate (llamaherd certs issue coordinator)",
    )
    tls_key: Path | None = Field(None, description="mutual TLS: the coordinator's key (0600)")
    ray_address: str | None = Field(
        None, description="Ray cluster to join (e.g. auto or HOST:6379); default: start one"
    )
    state_dir: Path = Field(
        Path("~/.cache/llamaherd/coordinator"),
        description="where llamaherd coordinator records the Ray head it started (ray.json, "
        "0600), so that a restart after a crash adopts the head and the actors still serving",
    )
    store_dir: Path = Field(
        Path("~/.cache/llamaherd/store"),
        description="the model store: GGUF files named by sha256 and their index "
        "(index.sqlite3), created 0700; llamaherd models add/import/list/rm act on it",
        validate_default=True,  # ~ expanded in the default too: placement opens it as given
    )
    store_port: int = Field(
        8002, ge=0, le=65535,
        description="port of the store's file service on `host` (workers fetch store models "
        "from it with the join token; 0 = a free port)",
    )  # fmt: skip
    store_import_hosts: tuple[str, ...] = Field(
        (),
        description="hosts (names, addresses or networks such as 10.0.0.0/8) that llamaherd "
        "models import may fetch from; empty = any http(s) host",
    )
    models: tuple[CatalogEntry, ...] = Field(
        default_factory=default_catalog,
        description="the model catalog; default: the embedded Gemma model, one replica",
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")

    @field_validator("routing_policy")
    @classmethod
    def _known_policy(cls, name: str) -> str:
        if name not in POLICY_NAMES:
            raise ValueError(f"routing_policy must be one of {', '.join(POLICY_NAMES)}")
        return name

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, level: str) -> str:
        return log_level_name(level)

    @field_validator("link_rtts")
    @classmethod
    def _link_rtts(cls, items: tuple[str, ...]) -> tuple[str, ...]:
        for item in items:
            _link_rtt(item)
        return items

    def link_rtt_ms(self) -> dict[str, float]:
        """link_rtts as {node id or label: milliseconds}."""
        return dict(_link_rtt(item) for item in self.link_rtts)

    @field_validator(
        "cluster_token_file", "tls_ca", "tls_cert", "tls_key", "state_dir", "store_dir"
    )
    @classmethod
    def _expand_path(cls, path: Path | None) -> Path | None:
        return None if path is None else Path(os.path.expanduser(path))

    def tls(self) -> TlsFiles | None:
        """The mutual-TLS files (read now), None when TLS is off."""
        return TlsFiles.load(self.tls_ca, self.tls_cert, self.tls_key)

    @field_validator("models")
    @classmethod
    def _unique_aliases(cls, models: tuple[CatalogEntry, ...]) -> tuple[CatalogEntry, ...]:
        aliases = [m.alias for m in models]
        duplicated = sorted({a for a in aliases if aliases.count(a) > 1})
        if duplicated:
            raise ValueError(f"the catalog lists {', '.join(duplicated)} more than once")
        return models

    @model_validator(mode="after")
    def _down_after_heartbeats(self) -> CoordinatorSettings:
        if self.down_after_s <= self.heartbeat_interval_s:
            raise ValueError(
                f"down_after_s ({self.down_after_s}) must exceed heartbeat_interval_s "
                f"({self.heartbeat_interval_s}), or healthy workers would flap"
            )
        return self


def _link_rtt(item: str) -> tuple[str, float]:
    """One link_rtts item, NODE_OR_LABEL=MS."""
    name, _, value = item.partition("=")
    try:
        ms = float(value)
    except ValueError:
        ms = -1.0
    if not name.strip() or not 0 <= ms <= 60_000:
        raise ValueError(f"link_rtts: {item!r} is not NODE_OR_LABEL=MS with MS from 0 to 60000")
    return name.strip(), ms


def build_coordinator_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> CoordinatorSettings:
    """Layers the settings; the join token may also come from LLAMAHERD_CLUSTER_TOKEN, the
    variable workers read, so one environment file can serve both."""
    env = dict(os.environ if environ is None else environ)
    if TOKEN_ENV in env:
        env.setdefault(ENV_PREFIX + "CLUSTER_TOKEN", env[TOKEN_ENV])
    return layered_settings(CoordinatorSettings, ENV_PREFIX, config_file, env, overrides)


def with_cluster_token(settings: CoordinatorSettings) -> CoordinatorSettings:
    """The settings with their join token: the one given, else the token file's, created
    with a fresh token when missing. The coordinator never runs without one."""
    if settings.cluster_token is not None and settings.cluster_token.get_secret_value():
        return settings
    token = ensure_token_file(settings.cluster_token_file)
    return settings.model_copy(update={"cluster_token": token})
