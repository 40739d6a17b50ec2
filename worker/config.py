"""Typed, frozen settings of a worker process and of each model it hosts.

Built once at start from (lowest to highest precedence) the defaults below, a YAML/JSON
config file, LLAMAHERD_* environment variables and command-line flags, then passed down.
The same ModelConfig validates a config-file entry and a LoadModel request, so the two can
never disagree about what a valid model is.
"""

from __future__ import annotations

import enum
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import psutil
import yaml
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from worker.errors import InvalidArgument
from worker.split.layout import device_layer_counts, offloaded_layers

ENV_PREFIX = "LLAMAHERD_"
ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$"
BUILTIN_PREFIX = "builtin:"
METRICS_PORT_OFFSET = 1000
RPC_MAX_SERVERS = 16  # GGML_RPC_MAX_SERVERS in ggml-rpc.h


class FlashAttention(str, enum.Enum):
    AUTO = "auto"  # llama.cpp decides per backend (its default)
    ON = "on"
    OFF = "off"


class Pooling(str, enum.Enum):
    MEAN = "mean"
    CLS = "cls"
    LAST = "last"


def default_threads() -> int:
    """Physical cores: llama.cpp decodes no faster with hyper-threads and often slower."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


class ModelConfig(BaseModel):
    """How to load one model (an entry under `models:`, or a LoadModel request)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alias: str = Field(pattern=ALIAS_PATTERN, description="name clients use to pick the model")
    path: str = Field(
        min_length=1,
        description=f"GGUF file, or '{BUILTIN_PREFIX}gemma-3-270m' for the embedded model",
    )
    n_ctx: int = Field(4096, ge=0, le=1 << 20, description="context tokens; 0 = training context")
    n_gpu_layers: int = Field(0, ge=-1, description="layers offloaded to the GPU; -1 = all")
    n_threads: int = Field(default_factory=default_threads, ge=1, le=1024)
    n_threads_batch: int | None = Field(None, ge=1, le=1024, description="default: n_threads")
    n_batch: int = Field(512, ge=1, le=1 << 16, description="tokens per prompt-processing step")
    flash_attn: FlashAttention = Field(FlashAttention.AUTO, description="flash attention")
    chat_format: str | None = Field(None, description="llama.cpp built-in chat template name")
    chat_template: str | None = Field(None, description="Jinja chat template overriding the GGUF")
    embedding: bool = Field(False, description="serve embeddings instead of generation")
    pooling: Pooling = Field(Pooling.MEAN, description="embedding pooling")
    n_parallel: int = Field(
        0, ge=0, le=64,
        description="sequence slots decoded together (continuous batching), each with n_ctx "
        "tokens of KV cache; 0 = as many as memory allows, up to 4",
    )  # fmt: skip
    max_queue: int = Field(
        64, ge=0, le=1 << 20, description="requests waiting for a free slot, per model"
    )
    rpc_servers: tuple[str, ...] = Field(
        (), max_length=RPC_MAX_SERVERS,
        description="HOST:PORT of ggml RPC servers lent by other nodes; the model's last "
        "n_gpu_layers layers are split over them (it then runs in a child process)",
    )  # fmt: skip
    tensor_split: tuple[float, ...] = Field(
        (), max_length=RPC_MAX_SERVERS + 16,
        description="share of the offloaded layers per device, RPC servers first "
        "(llama.cpp's --tensor-split)",
    )  # fmt: skip

    @model_validator(mode="after")
    def _a_token_per_slot(self) -> ModelConfig:
        if self.n_parallel > self.n_batch:
            raise ValueError(
                f"n_parallel ({self.n_parallel}) cannot exceed n_batch ({self.n_batch}): "
                "every decode step carries one token for each slot"
            )
        return self

    @field_validator("rpc_servers")
    @classmethod
    def _endpoints(cls, servers: tuple[str, ...]) -> tuple[str, ...]:
        for server in servers:
            try:
                split_host_port(server)
            except ValueError as exc:
                raise ValueError(f"rpc_servers entry: {exc}") from None
        if len(set(servers)) != len(servers):
            raise ValueError("rpc_servers lists a server twice")
        return servers

    @field_validator("tensor_split")
    @classmethod
    def _shares(cls, shares: tuple[float, ...]) -> tuple[float, ...]:
        if any(not (s >= 0 and s < float("inf")) for s in shares):
            raise ValueError("tensor_split shares must be finite and not negative")
        if shares and sum(shares) <= 0:
            raise ValueError("tensor_split must give some device a positive share")
        return shares

    @property
    def is_split(self) -> bool:
        return bool(self.rpc_servers)

    def layers_on_rpc(self, n_layer: int) -> int:
        """How many of the model's `n_layer` layers live on other nodes' RPC devices.

        llama.cpp offloads the last n_gpu_layers layers and spreads them over its devices in
        tensor_split proportions, RPC devices first; with no shares given, all of them count
        as remote (a head without a GPU of its own, the usual edge case).
        """
        if not self.is_split:
            return 0
        offloaded = offloaded_layers(self.n_gpu_layers, n_layer)
        if not self.tensor_split:
            return offloaded
        return sum(device_layer_counts(offloaded, self.tensor_split)[: len(self.rpc_servers)])

    @property
    def is_builtin(self) -> bool:
        return self.path.startswith(BUILTIN_PREFIX)

    @property
    def threads_batch(self) -> int:
        return self.n_threads_batch or self.n_threads


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
    split_child: bool = Field(
        False,
        description="internal: this process is the child a worker starts to host one split "
        "model (models with rpc_servers load here rather than in a further child)",
    )

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
        return models


def log_level_name(level: str) -> str:
    upper = level.upper()
    if upper not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError(f"log_level must be DEBUG, INFO, WARNING or ERROR, not {level!r}")
    return upper


def split_host_port(address: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' into its parts; ValueError names what is wrong."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not HOST:PORT (e.g. 127.0.0.1:50050)")
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class ConfigError(Exception):
    """The worker cannot start with this configuration; the message says what to fix."""


def read_config_file(path: Path) -> dict[str, Any]:
    """Reads a YAML or JSON config file; relative model paths are taken from its folder."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML/JSON: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings at the top level")
    base = path.resolve().parent
    for entry in data.get("models") or []:
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            entry["path"] = _resolve_model_path(entry["path"], base)
    return data


def _resolve_model_path(raw: str, base: Path) -> str:
    if raw.startswith(BUILTIN_PREFIX):
        return raw
    expanded = Path(os.path.expanduser(raw))
    return str(expanded if expanded.is_absolute() else base / expanded)


def env_overrides(
    fields: Mapping[str, Any], environ: Mapping[str, str], prefix: str = ENV_PREFIX
) -> dict[str, str]:
    """<prefix><FIELD> for each of `fields` that the environment sets."""
    found: dict[str, str] = {}
    for name in fields:
        value = environ.get(prefix + name.upper())
        if value is not None:
            found[name] = value
    return found


def build_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> WorkerSettings:
    """Layers defaults < config file < environment < flags and validates the result."""
    return layered_settings(WorkerSettings, ENV_PREFIX, config_file, environ, overrides)


SettingsT = TypeVar("SettingsT", bound=BaseModel)


def layered_settings(
    model: type[SettingsT],
    env_prefix: str,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> SettingsT:
    """Any process's settings: defaults < config file < <env_prefix><FIELD> < flags.

    Only scalar fields come from the environment; lists (models, labels) from the file or
    repeatable flags.
    """
    data: dict[str, Any] = read_config_file(config_file) if config_file else {}
    scalar_fields = {
        n: f for n, f in model.model_fields.items() if typing.get_origin(f.annotation) is not tuple
    }
    env = os.environ if environ is None else environ
    data.update(env_overrides(scalar_fields, env, env_prefix))
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        source = f" (config file {config_file})" if config_file else ""
        raise ConfigError(f"invalid settings{source}:\n{describe(exc)}") from exc


def parse_model_config(data: Mapping[str, Any]) -> ModelConfig:
    """Validates a model description from a client; refusals name the offending field."""
    try:
        return ModelConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise InvalidArgument(f"invalid model spec: {describe(exc, sep='; ')}") from exc


def describe(exc: ValidationError, sep: str = "\n") -> str:
    """pydantic's errors as `field.path: message` lines."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{where}: {err['msg']}")
    return sep.join(parts)
