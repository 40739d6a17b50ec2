"""Typed, frozen settings of a worker process.

Built once at start from (lowest to highest precedence) the defaults below, a YAML/JSON
config file, LLAMAHERD_* environment variables and command-line flags, then passed down.
Each model's settings are common.model_settings.ModelConfig, the type a LoadModel request
and the coordinator's catalog use too; the worker fills in their node-dependent defaults.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import psutil
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from common.cluster_secrets import DEFAULT_NODE_KEY_DIR, JOIN_HINT, TOKEN_ENV
from common.errors import InvalidArgument
from common.model_settings import ALIAS_PATTERN, ModelConfig
from common.net import split_host_port
from common.settings import describe, layered_settings, log_level_name

ENV_PREFIX = "LLAMAHERD_"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
METRICS_PORT_OFFSET = 1000


def default_threads() -> int:
    """Physical cores: llama.cpp decodes no faster with hyper-threads and often slower."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


class WorkerSettings(BaseModel):
    """Everything a worker process needs to know, fixed for its lifetime."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="address to listen on (loopback unless set)")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    models: tuple[ModelConfig, ...] = Field(
        (), description="models loaded at start; none = the embedded default model"
    )
    model_dirs: tuple[Path, ...] = Field(
        (Path("~/.cache/llamaherd/models"),),
        description="directories LoadModel may read GGUF files from (config-file models are "
        "trusted wherever they are)",
        validate_default=True,  # the default has a ~ to expand too
    )
    memory_reserve: ByteSize = Field(
        ByteSize(512 * 1024**2),
        description="memory kept free for the OS and the worker itself, e.g. '1GiB'",
    )
    memory_limit: ByteSize | None = Field(
        None, description="cap on what models may use in total; default: all RAM minus reserve"
    )
    shutdown_grace_s: float = Field(
        5.0, ge=0, le=600, description="seconds in-flight requests get to finish on shutdown"
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    coordinator: str | None = Field(
        None, description="HOST:PORT of a coordinator to register with and heartbeat to"
    )
    advertise_address: str | None = Field(
        None,
        description="HOST:PORT the coordinator's gateways use to reach this worker "
        "(default: host:port, or this machine's address when host is 0.0.0.0)",
    )
    node_id: str | None = Field(
        None, pattern=ALIAS_PATTERN, description="stable node name (default: HOSTNAME:PORT)"
    )
    labels: tuple[str, ...] = Field(
        (), description="labels placement can match, e.g. jetson, orin-agx, gpu"
    )
    heartbeat_interval_s: float = Field(
        1.0, gt=0, le=60, description="seconds between reports to the coordinator"
    )
    # ---- cluster membership (issue 14) --------------------------------------------------
    cluster_token: SecretStr | None = Field(
        None,
        description=f"the cluster's join token ({TOKEN_ENV}; never on a command line): "
        "sent to the coordinator, and required on every Worker API call but health",
    )
    cluster_token_file: Path | None = Field(
        None, description="file holding the join token (a copy of the coordinator's)"
    )
    node_key_dir: Path = Field(
        DEFAULT_NODE_KEY_DIR,
        description="where this worker keeps its node key (one 0600 file per node id), "
        "which binds its node id at the coordinator",
        validate_default=True,
    )
    insecure: bool = Field(
        False,
        description="allow listening beyond loopback without a join token: anyone who "
        "reaches the port can then load models and use the node",
    )
    tls_ca: Path | None = Field(
        None, description="mutual TLS: the cluster CA's certificate (llamaherd certs init)"
    )
    tls_cert: Path | None = Field(
        None, description="mutual TLS: this node's certificate (llamaherd certs issue NODE)"
    )
    tls_key: Path | None = Field(None, description="mutual TLS: this node's key (0600)")
    coordinator_lost_exit_s: float = Field(
        300.0, ge=0,
        description="give up on a coordinator unreachable (or refusing this node) that long: "
        "drain and exit; 0 = retry forever",
    )  # fmt: skip
    telemetry_interval_s: float = Field(
        1.0, ge=0.1, le=60,
        description="seconds between telemetry samples (each goes to the coordinator at once)",
    )  # fmt: skip
    metrics: bool = Field(True, description="serve Prometheus metrics over HTTP at /metrics")
    metrics_port: int | None = Field(
        None, ge=0, le=65535,
        description="port of /metrics, on the worker's host; default: the gRPC port + 1000 "
        "(a free one when the gRPC port is 0); 0 = a free port",
    )  # fmt: skip
    reference_speed: bool = Field(
        True,
        description="measure the reference model's decode rate at start so the coordinator "
        "can rank nodes by speed (a few seconds, once per llama.cpp build and hardware)",
    )
    # ---- limits on what one request may make the worker do (issue 14) ----------------
    max_prompt_bytes: ByteSize = Field(
        ByteSize(4 * 1024**2),
        description="largest text tokenized for one request: a prompt, a rendered chat, a "
        "Tokenize text or one embedding input",
    )
    max_grammar_bytes: ByteSize = Field(
        ByteSize(16 * 1024),
        description="largest GBNF grammar a request may constrain generation with, given or "
        "converted from a JSON schema (llama.cpp's per-token cost grows with it)",
    )
    max_schema_bytes: ByteSize = Field(
        ByteSize(64 * 1024), description="largest JSON schema a request may send"
    )
    max_json_depth: int = Field(
        64, ge=1, le=10_000, description="deepest nesting of a request's JSON schema"
    )
    max_repetition: int = Field(
        2000, ge=1,
        description="largest repetition bound in a schema (minLength, maxLength, minItems, "
        "maxItems, minProperties, maxProperties) or a grammar ({m,n})",
    )  # fmt: skip
    max_template_iterations: int = Field(
        100_000, ge=1,
        description="loop iterations (and range() length) one chat template render may run",
    )  # fmt: skip
    max_sample_ms: float = Field(
        250.0, gt=0,
        description="longest one token's sampling may take with a request's grammar; a "
        "grammar over it is refused (checked before it runs) or its request ended",
    )  # fmt: skip
    prepare_timeout_s: float = Field(
        10.0, gt=0, le=600,
        description="longest the preparation of one request (template, grammar, tokenizing) "
        "may take",
    )  # fmt: skip
    request_threads: int = Field(
        2, ge=1, le=64, description="threads preparing requests (templates, grammars, tokenizing)"
    )
    request_queue: int = Field(
        64, ge=0, description="requests that may wait for a preparation thread; more: refused"
    )
    load_threads: int = Field(
        2, ge=1, le=16, description="threads loading and inspecting model files"
    )
    max_leases: int = Field(
        8, ge=0, le=256,
        description="RPC servers (split-model leases) this node lends at most at once",
    )  # fmt: skip
    rpc_guard: Literal["auto", "forwarder"] = Field(
        "auto",
        description="how a lent ggml RPC server admits only its head: auto = a kernel socket "
        "filter on ggml's listener where it works (Linux, IPv4), else the forwarder; "
        "forwarder = always a filtering TCP relay in front of ggml (slower)",
    )
    max_downloads: int = Field(
        2, ge=1, le=16,
        description="store model files fetched at once; more loads wait their turn "
        "(DOWNLOADING with 0 bytes)",
    )  # fmt: skip
    download_retries: int = Field(
        2, ge=0, le=10,
        description="further tries of a store download whose file fails its size or sha256 "
        "check (or whose sources all fail) before the model is FAILED",
    )  # fmt: skip
    split_child: bool = Field(
        False,
        description="internal: this process is the child a worker starts to host one split "
        "model (models with rpc_servers load here rather than in a further child)",
    )

    @field_validator("node_key_dir", "cluster_token_file", "tls_ca", "tls_cert", "tls_key")
    @classmethod
    def _expand_path(cls, path: Path | None) -> Path | None:
        return None if path is None else Path(os.path.expanduser(path))

    @model_validator(mode="after")
    def _token_where_needed(self) -> WorkerSettings:
        has_token = self.cluster_token is not None or self.cluster_token_file is not None
        if self.coordinator and not has_token:
            raise ValueError(f"coordinator: the coordinator requires the join token: {JOIN_HINT}")
        if self.host not in LOOPBACK_HOSTS and not has_token and not self.insecure:
            raise ValueError(
                f"host: listening on {self.host} beyond loopback needs the join token, so "
                f"that only the cluster can call this worker: {JOIN_HINT} (or --insecure to "
                "serve anyone who reaches the port)"
            )
        return self

    @field_validator("model_dirs")
    @classmethod
    def _expand_dirs(cls, dirs: tuple[Path, ...]) -> tuple[Path, ...]:
        return tuple(Path(os.path.expanduser(d)).resolve() for d in dirs)

    @field_validator("coordinator", "advertise_address")
    @classmethod
    def _host_port(cls, address: str | None) -> str | None:
        if address is not None:
            split_host_port(address)
        return address

    @property
    def metrics_listen_port(self) -> int:
        """The /metrics port before binding: explicit, else next to the gRPC port."""
        if self.metrics_port is not None:
            return self.metrics_port
        return 0 if self.port == 0 else self.port + METRICS_PORT_OFFSET

    @model_validator(mode="after")
    def _metrics_port_in_range(self) -> WorkerSettings:
        if self.metrics and self.metrics_port is None and self.port + METRICS_PORT_OFFSET > 65535:
            raise ValueError(
                f"metrics_port: the default (port + {METRICS_PORT_OFFSET}) is beyond 65535; "
                "set metrics_port"
            )
        return self

    @field_validator("labels")
    @classmethod
    def _label_names(cls, labels: tuple[str, ...]) -> tuple[str, ...]:
        for label in labels:
            if not re.fullmatch(ALIAS_PATTERN, label):
                raise ValueError(f"label {label!r} must match {ALIAS_PATTERN}")
        return tuple(sorted(set(labels)))

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, level: str) -> str:
        return log_level_name(level)

    @field_validator("models")
    @classmethod
    def _unique_aliases(cls, models: tuple[ModelConfig, ...]) -> tuple[ModelConfig, ...]:
        seen: set[str] = set()
        for model in models:
            if model.alias in seen:
                raise ValueError(f"two models share the alias {model.alias!r}")
            seen.add(model.alias)
        return tuple(model.with_node_defaults(default_threads()) for model in models)


def build_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> WorkerSettings:
    """Layers defaults < config file < environment < flags and validates the result."""
    return layered_settings(WorkerSettings, ENV_PREFIX, config_file, environ, overrides)


def parse_model_config(data: Mapping[str, Any]) -> ModelConfig:
    """Validates a model description from a client; refusals name the offending field."""
    try:
        config = ModelConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise InvalidArgument(f"invalid model spec: {describe(exc, sep='; ')}") from exc
    return config.with_node_defaults(default_threads())
