"""How to load one model: the settings a worker's config file, a LoadModel request and the
coordinator's catalog all share, validated by one frozen type so they can never disagree.

Resolved defaults that depend on the node (decode threads) are left unset here and filled in
by the worker that loads the model.
"""

from __future__ import annotations

import enum
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.layout import device_layer_counts, offloaded_layers
from common.net import split_host_port

ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$"
BUILTIN_PREFIX = "builtin:"
STORE_PREFIX = "store:"  # path of a model fetched from the cluster's store: store:<name>
STORE_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
SOURCE_URL_SCHEMES = ("http", "https")
DEFAULT_MODEL = "gemma-3-270m"  # the embedded model (worker.models.builtin)
RPC_MAX_SERVERS = 16  # GGML_RPC_MAX_SERVERS in ggml-rpc.h


class FlashAttention(str, enum.Enum):
    AUTO = "auto"  # llama.cpp decides per backend (its default)
    ON = "on"
    OFF = "off"


class Pooling(str, enum.Enum):
    MEAN = "mean"
    CLS = "cls"
    LAST = "last"


class ReasoningFormat(str, enum.Enum):
    """Where a reasoning model's <think> block goes (llama-server's --reasoning-format)."""

    AUTO = "auto"  # into the reply's separate reasoning text
    NONE = "none"  # left in the reply's text


class ModelSource(BaseModel):
    """Where a worker fetches a store model's file, and what the file must be.

    The worker keeps it at `<first model_dir>/store/<sha256>.gguf` and nowhere else, so no
    field here names a local path; it tries `urls` in order (peers holding it first, the
    coordinator's store last) and loads nothing before the size and sha256 match.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=STORE_NAME_PATTERN, description="the model's name in the store")
    sha256: str = Field(pattern=SHA256_PATTERN, description="the file's sha256, lowercase hex")
    size_bytes: int = Field(gt=0, description="the file's size in bytes")
    urls: tuple[str, ...] = Field(
        min_length=1, max_length=64,
        description="http(s) URLs serving the file (GET /v1/store/files/<sha256>), tried in order",
    )  # fmt: skip

    @field_validator("name")
    @classmethod
    def _no_dot_dot(cls, name: str) -> str:
        if ".." in name:
            raise ValueError(f"store name {name!r} contains '..'")
        return name

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in SOURCE_URL_SCHEMES or not parts.hostname:
                raise ValueError(f"source url {url!r} is not an http(s) URL with a host")
        return urls


class ModelConfig(BaseModel):
    """How to load one model (an entry under `models:`, or a LoadModel request)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alias: str = Field(pattern=ALIAS_PATTERN, description="name clients use to pick the model")
    path: str = Field(
        min_length=1,
        description=f"GGUF file, '{BUILTIN_PREFIX}gemma-3-270m' for the embedded model, or "
        f"'{STORE_PREFIX}NAME' for a store model fetched from `source`",
    )
    n_ctx: int = Field(4096, ge=0, le=1 << 20, description="context tokens; 0 = training context")
    n_gpu_layers: int = Field(0, ge=-1, description="layers offloaded to the GPU; -1 = all")
    n_threads: int | None = Field(
        None, ge=1, le=1024, description="decode threads; default: the worker's physical cores"
    )
    n_threads_batch: int | None = Field(None, ge=1, le=1024, description="default: n_threads")
    n_batch: int = Field(512, ge=1, le=1 << 16, description="tokens per prompt-processing step")
    flash_attn: FlashAttention = Field(FlashAttention.AUTO, description="flash attention")
    chat_format: str | None = Field(None, description="llama.cpp built-in chat template name")
    chat_template: str | None = Field(None, description="Jinja chat template overriding the GGUF")
    reasoning_format: ReasoningFormat = Field(
        ReasoningFormat.AUTO,
        description="auto: a reply's <think> block becomes its reasoning text; none: kept in text",
    )
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

    source: ModelSource | None = Field(
        None, description=f"where to fetch the file of a '{STORE_PREFIX}NAME' path"
    )

    @model_validator(mode="after")
    def _store_path_has_its_source(self) -> ModelConfig:
        is_store = self.path.startswith(STORE_PREFIX)
        if self.source is None and is_store:
            raise ValueError(f"path {self.path!r} names a store model but no source is given")
        if self.source is not None and self.path != STORE_PREFIX + self.source.name:
            raise ValueError(
                f"a model with a source has path '{STORE_PREFIX}{self.source.name}', "
                f"not {self.path!r}"
            )
        return self

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
    def is_store(self) -> bool:
        """Fetched from the cluster's store (self.source) rather than found on the node."""
        return self.source is not None

    @property
    def threads(self) -> int:
        """Decode threads; only for a config the worker has resolved (with_node_defaults)."""
        if self.n_threads is None:
            raise ValueError(f"{self.alias}: n_threads is not resolved on this node yet")
        return self.n_threads

    @property
    def threads_batch(self) -> int:
        return self.n_threads_batch or self.threads

    def with_node_defaults(self, threads: int) -> ModelConfig:
        """This config with the defaults that depend on the node filled in."""
        n_threads = self.n_threads or threads
        return self.model_copy(
            update={"n_threads": n_threads, "n_threads_batch": self.n_threads_batch or n_threads}
        )
