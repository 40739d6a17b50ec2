"""Typed, frozen settings of the coordinator: its ports, routing, timings and model catalog.

Built once from defaults < config file < LLAMAHERD_COORDINATOR_* variables < flags (the same
layering as a worker's) and handed to every part of the control plane.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from common.model_settings import (
    ALIAS_PATTERN,
    BUILTIN_PREFIX,
    DEFAULT_MODEL,
    FlashAttention,
    ModelConfig,
    Pooling,
)
from common.settings import layered_settings, log_level_name
from orchestrator.routing.policies import DEFAULT_POLICY, POLICY_NAMES

ENV_PREFIX = "LLAMAHERD_COORDINATOR_"


class CatalogEntry(BaseModel):
    """A model the cluster should serve: what to load, how many replicas, on which nodes.

    Load settings left unset are not sent, so each worker applies its own defaults (its
    core count for n_threads, say) rather than the coordinator's.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    alias: str = Field(pattern=ALIAS_PATTERN)
    path: str = Field(min_length=1, description="GGUF path on the workers, or builtin:<name>")
    replicas: int = Field(1, ge=0, le=1024, description="ready copies wanted across nodes")
    labels: tuple[str, ...] = Field((), description="only nodes carrying all these labels")
    split_nodes: int = Field(
        0, ge=0, le=16,
        description="spread one replica's layers over nodes (llama.cpp RPC): 0 = only when "
        "no single node can hold it, 1 = never, N >= 2 = always over exactly N nodes",
    )  # fmt: skip
    n_ctx: int | None = None
    n_gpu_layers: int | None = None
    n_threads: int | None = None
    n_threads_batch: int | None = None
    n_batch: int | None = None
    flash_attn: FlashAttention | None = None
    chat_format: str | None = None
    chat_template: str | None = None
    embedding: bool | None = None
    pooling: Pooling | None = None
    max_queue: int | None = None
    n_parallel: int | None = None

    @model_validator(mode="after")
    def _one_split_replica(self) -> CatalogEntry:
        if self.split_nodes >= 2 and self.replicas > 1:
            raise ValueError(
                f"{self.alias}: split_nodes {self.split_nodes} spreads one replica over "
                f"several nodes; set replicas to 0 or 1, not {self.replicas}"
            )
        if self.split_nodes >= 2 and self.n_gpu_layers is not None:
            raise ValueError(
                f"{self.alias}: the split plan chooses n_gpu_layers when split_nodes is "
                f"{self.split_nodes}; leave it unset"
            )
        return self

    @model_validator(mode="after")
    def _valid_for_workers(self) -> CatalogEntry:
        # The workers validate with ModelConfig; checking here turns a typo into a start-up
        # error instead of a placement loop that fails on every node.
        ModelConfig.model_validate(self.load_fields())
        return self

    def load_fields(self) -> dict[str, Any]:
        """The ModelSpec fields a LoadModel request for this entry carries."""
        skip = {"replicas", "labels", "split_nodes"}
        return {k: v for k, v in self.model_dump().items() if k not in skip and v is not None}


def default_catalog(replicas: int = 1) -> tuple[CatalogEntry, ...]:
    return (
        CatalogEntry(alias=DEFAULT_MODEL, path=BUILTIN_PREFIX + DEFAULT_MODEL, replicas=replicas),
    )


class CoordinatorSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="address the worker registry listens on")
    registry_port: int = Field(50050, ge=0, le=65535, description="port workers heartbeat to")
    gateway_host: str = Field("127.0.0.1", description="address the gateways listen on")
    http_port: int = Field(8000, ge=0, le=65535, description="OpenAI-compatible HTTP API")
    grpc_port: int = Field(8001, ge=0, le=65535, description="gRPC Inference API")
    gateways_per_node: int = Field(
        1, ge=1, le=64, description="gateway processes on each Ray node (they share the ports)"
    )
    routing_policy: str = Field(DEFAULT_POLICY, description=", ".join(POLICY_NAMES))
    retries: int = Field(
        2, ge=0, le=10, description="other replicas tried when a worker fails before streaming"
    )
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
    api_key: SecretStr | None = Field(
        None,
        description="require 'Authorization: Bearer <key>' on both APIs (better set through "
        "LLAMAHERD_COORDINATOR_API_KEY than on the command line)",
    )
    ray_address: str | None = Field(
        None, description="Ray cluster to join (e.g. auto or HOST:6379); default: start one"
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


def build_coordinator_settings(
    config_file: Path | None = None,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> CoordinatorSettings:
    return layered_settings(CoordinatorSettings, ENV_PREFIX, config_file, environ, overrides)
