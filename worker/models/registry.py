"""The models a worker hosts, by alias, and their loading and unloading.

A load is checked in order, cheapest first, and refused at the first problem: alias in use,
path outside the allowed directories, missing file, not a complete GGUF, does not fit in
memory (estimated from the metadata, before llama.cpp is asked), llama.cpp refuses it.
Nothing a load does can disturb the models already serving.

The registry builds models through the factories it is given (worker.models.served): one
for models served in this process, one for split models served by a child worker. It
treats what they build alike, as ServedModels.

A store model (path `store:NAME`, with a source) is fetched first when its verified file is
not in the store dir (worker.models.fetch): the model is DOWNLOADING, with its progress,
then LOADING from the verified file. An unload while it downloads cancels the download
(its part file stays, for a later resume); a download that fails its checks every time
leaves the model FAILED with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Set
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LlamaherdError,
    ModelNotFound,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from common.estimate import ModelShape, context_for, estimate_memory, most_slots
from common.gguf import read_gguf
from common.memory import MemoryEstimate
from common.model_settings import ModelConfig
from common.status import DownloadProgress, EngineFigures, ModelState, ModelStatus
from worker.config import WorkerSettings
from worker.engine.pools import BoundedPool, default_pool
from worker.models import builtin
from worker.models.estimate import MemoryBudget
from worker.models.fetch import Fetcher, StoreDir
from worker.models.served import LocalFactory, ModelFacts, ServedModel, SplitFactory

log = logging.getLogger(__name__)
# Slots a model gets when its config leaves n_parallel at 0, memory permitting; as
# llama-server's automatic choice.
# States in which a model's engine is up and its requests run (DRAINING: only those in flight).
_SERVING = frozenset({ModelState.READY, ModelState.DRAINING})
# Longest model path accepted (Linux's PATH_MAX): longer ones fail in the OS anyway.
MAX_PATH_BYTES = 4096
# A download's progress reaches the heartbeat at most this often (ListModels: every call).
PROGRESS_REPORT_S = 1.0
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


@dataclass
class _Entry:
    config: ModelConfig
    state: ModelState
    hosted: ServedModel | None = None
    facts: ModelFacts | None = None
    error: str = ""
    lost: bool = False  # FAILED while serving (a split model's helper), not at load
    download: DownloadProgress | None = None  # while DOWNLOADING
    task: asyncio.Task[ModelStatus] | None = None  # the load, while it runs
    unloaded: bool = False  # an UnloadModel cancelled its load


class ModelRegistry:
    """The worker's models by alias. `local` builds a model in this process (blocking: it
    runs on `pool`, the worker's pool for model files); `split` starts a split model's child
    worker."""

    def __init__(
        self,
        settings: WorkerSettings,
        budget: MemoryBudget,
        local: LocalFactory,
        split: SplitFactory,
        pool: BoundedPool | None = None,
        fetcher: Fetcher | None = None,
    ) -> None:
        self._settings = settings
        self._budget = budget
        self._local = local
        self._split = split
        self._pool = pool or default_pool("models")
        self._loads: set[asyncio.Task[ModelStatus]] = set()
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._draining = ""  # why the worker stopped taking requests, once it has
        self.store = fetcher.store if fetcher else StoreDir.for_model_dirs(settings.model_dirs)
        token = settings.cluster_token.get_secret_value() if settings.cluster_token else None
        self._fetcher = fetcher or (
            Fetcher(self.store, token, settings.max_downloads, settings.download_retries)
            if self.store is not None
            else None
        )
        self._last_progress_report = 0.0

    def on_change(self, listener: Callable[[], None]) -> None:
        """Calls `listener` (on the event loop) whenever a model's state changes."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    # ---- lookups ---------------------------------------------------------------------
    @contextmanager
    def lease(self, alias: str) -> Iterator[ServedModel]:
        """The model called `alias`, kept alive (not unloaded under us) inside the block."""
        with self.get(alias).lease() as hosted:
            yield hosted

    def get(self, alias: str) -> ServedModel:
        if not alias:
            raise InvalidArgument("model is empty: name the alias of a loaded model")
        with self._lock:
            entry = self._entries.get(alias)
            if entry is None:
                ready = [a for a, e in self._entries.items() if e.state is ModelState.READY]
                raise ModelNotFound(alias, ready)
            if entry.state is ModelState.READY and entry.hosted is not None:
                return entry.hosted
            if entry.state is ModelState.FAILED and entry.lost:
                raise Unavailable(f"{entry.error}; the coordinator re-plans it")
            if entry.state is ModelState.FAILED:
                raise FailedPrecondition(f"model {alias!r} failed to load: {entry.error}")
            if entry.state is ModelState.DRAINING:
                raise Unavailable(
                    f"model {alias!r} is draining ({self._draining}); use another node"
                )
            raise Unavailable(f"model {alias!r} is {entry.state.value}; retry shortly")

    def list(self) -> list[ModelStatus]:
        with self._lock:
            return [self._info(alias, e) for alias, e in sorted(self._entries.items())]

    def info(self, alias: str) -> ModelStatus:
        with self._lock:
            return self._info(alias, self._entries[alias])

    @staticmethod
    def _info(alias: str, entry: _Entry) -> ModelStatus:
        facts, hosted = entry.facts, entry.hosted
        return ModelStatus(
            alias=alias,
            config=entry.config,
            state=entry.state,
            error=entry.error,
            architecture=facts.gguf.architecture if facts else "",
            file_bytes=facts.gguf.file_bytes if facts else 0,
            n_ctx_train=int(facts.gguf.arch_value("context_length", 0) or 0) if facts else 0,
            estimate=facts.estimate if facts else None,
            chat_template_source=hosted.template.source if hosted and hosted.template else "",
            engine=hosted.figures() if hosted else EngineFigures(),
            download=entry.download if entry.state is ModelState.DOWNLOADING else None,
        )

    # ---- loading ---------------------------------------------------------------------
    async def load(self, config: ModelConfig, trusted: bool = False) -> ModelStatus:
        """Loads a model. `trusted` (config-file models) skips the model_dirs check.

        The load runs as a task of its own: a caller that gives up (its deadline passed, it
        cancelled) does not stop it, so the model ends either loaded and registered (listed,
        unloadable) or failed with everything it took released; never half loaded."""
        with self._lock:
            existing = self._entries.get(config.alias)
            if existing is not None and existing.state is not ModelState.FAILED:
                raise AlreadyExists(
                    f"a model with alias {config.alias!r} is already {existing.state.value}; "
                    "unload it first or choose another alias"
                )
            state = ModelState.DOWNLOADING if self._needs_fetch(config) else ModelState.LOADING
            entry = self._entries[config.alias] = _Entry(config, state)
        self._changed()
        task = asyncio.create_task(
            self._complete_load(config, trusted, existing), name=f"load:{config.alias}"
        )
        entry.task = task
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)
        task.add_done_callback(_settled)
        return await asyncio.shield(task)

    async def _complete_load(
        self, config: ModelConfig, trusted: bool, existing: _Entry | None
    ) -> ModelStatus:
        try:
            if existing is not None and existing.hosted is not None:
                # Only a model lost while serving is FAILED with something to free (a split
                # model's child may remain).
                await existing.hosted.close("replaced by a new load")
            if config.is_store:
                await self._fetch(config)
            if config.is_split and not self._settings.split_child:
                hosted = await self._load_split(config, trusted)
            else:
                hosted = await self._pool.run(lambda: self._load_blocking(config, trusted))
        except BaseException:
            with self._lock:
                entry = self._entries.get(config.alias)
                # A model whose download failed stays, FAILED with the reason, in status.
                if entry is not None and entry.state is not ModelState.FAILED:
                    del self._entries[config.alias]
            self._changed()
            raise
        with self._lock:
            self._entries[config.alias] = _Entry(config, ModelState.READY, hosted, hosted.facts)
        self._changed()
        log.info("model %s ready (%s)", config.alias, hosted.facts.path)
        return self.info(config.alias)

    # ---- store models ------------------------------------------------------------------
    def _needs_fetch(self, config: ModelConfig) -> bool:
        source = config.source
        return (
            source is not None
            and self.store is not None
            and self.store.verified(source.sha256, source.size_bytes) is None
        )

    async def _fetch(self, config: ModelConfig) -> None:
        """Fetches a store model's file (DOWNLOADING, with progress), then LOADING.

        A failed download leaves the model FAILED with the reason (a refusal before any
        byte, such as no room, is returned as a refusal only); an unload during it cancels
        it and the load ends UNAVAILABLE."""
        source = config.source
        assert source is not None
        if self._fetcher is None:
            raise FailedPrecondition(
                f"store model {source.name!r}: this worker has no model_dirs to keep store "
                "files in; give it one"
            )
        alias = config.alias
        with self._lock:
            entry = self._entries[alias]
        loop = asyncio.get_running_loop()

        def progress(update: DownloadProgress) -> None:  # from the download thread
            with self._lock:
                if self._entries.get(alias) is not entry:
                    return
                entry.state, entry.download = ModelState.DOWNLOADING, update
            now = time.monotonic()
            if update.bytes_done in (0, update.bytes_total) or (
                now - self._last_progress_report >= PROGRESS_REPORT_S
            ):
                self._last_progress_report = now
                loop.call_soon_threadsafe(self._changed)

        try:
            await self._fetcher.fetch(source, progress, self._kept_files)
        except asyncio.CancelledError:
            if entry.unloaded:
                raise Unavailable(
                    f"model {alias!r} was unloaded while its file was downloading"
                ) from None
            raise
        except LlamaherdError as exc:
            if not isinstance(exc, ResourceExhausted):
                self._failed_at_fetch(entry, exc)
            raise
        with self._lock:
            entry.state, entry.download = ModelState.LOADING, None
        self._changed()

    def _failed_at_fetch(self, entry: _Entry, exc: LlamaherdError) -> None:
        """Keeps a model whose download failed as FAILED, its reason in status."""
        log.error("model %s: %s", entry.config.alias, exc.message)
        with self._lock:
            if self._entries.get(entry.config.alias) is entry:
                entry.state, entry.error, entry.download = ModelState.FAILED, exc.message, None
                entry.task = None
                entry.lost = False
        self._changed()

    def _kept_files(self) -> Set[str]:
        """Store files never deleted to make room: those of the models here (in any
        state) and those the worker's config names."""
        with self._lock:
            configs = [e.config for e in self._entries.values()]
        configs += self._settings.models
        kept = {c.source.sha256 for c in configs if c.source is not None}
        if self.store is not None:
            # A config-file model may name a store file by its path.
            kept |= {Path(c.path).stem for c in configs
                     if not c.is_builtin and Path(c.path).parent == self.store.root}  # fmt: skip
        return kept

    async def load_configured(self, configs: tuple[ModelConfig, ...]) -> None:
        """Loads the config file's models; one that fails is kept as FAILED, the rest serve."""
        for config in configs:
            try:
                await self.load(config, trusted=True)
            except LlamaherdError as exc:
                log.error("model %s failed to load: %s", config.alias, exc.message)
                with self._lock:
                    self._entries[config.alias] = _Entry(
                        config, ModelState.FAILED, error=exc.message
                    )
                self._changed()

    async def estimate(self, config: ModelConfig) -> MemoryEstimate:
        """What loading `config` would need, checked as a load checks it; loads nothing."""
        facts = await self._pool.run(lambda: self._inspect(config, False))
        return facts.estimate

    async def _load_split(self, config: ModelConfig, trusted: bool) -> ServedModel:
        facts = await self._pool.run(lambda: self._inspect(config, trusted))
        self._budget.reserve(config.alias, facts.estimate)
        try:
            return await self._split(config, facts, lambda reason: self._lost(config.alias, reason))
        except BaseException:
            self._budget.release(config.alias)
            raise

    def _lost(self, alias: str, reason: str) -> None:
        """A serving model broke (a split model's helper failed): FAILED, memory freed."""
        with self._lock:
            entry = self._entries.get(alias)
            if entry is None or entry.state not in _SERVING:
                return
            entry.state, entry.error, entry.lost = ModelState.FAILED, reason, True
        self._budget.release(alias)
        self._changed()

    def _inspect(self, config: ModelConfig, trusted: bool) -> ModelFacts:
        path = self._locate(config, trusted)
        gguf = read_gguf(path)
        shape = ModelShape.from_gguf(gguf)
        n_ctx = context_for(config, shape)
        if n_ctx is None:
            raise InvalidArgument(
                f"n_ctx is 0 (use the model's) but {path} declares no context length"
            )
        n_parallel = most_slots(config)
        while True:
            estimate = estimate_memory(
                gguf, shape, n_ctx, config.n_batch, config.embedding, n_parallel
            ).without_layers(config.layers_on_rpc(shape.n_layer))
            # Auto sizing: fewer slots rather than a refusal, down to one.
            if config.n_parallel or n_parallel == 1:
                break
            if estimate.total_bytes <= self._budget.free_bytes():
                break
            n_parallel //= 2
        return ModelFacts(path, gguf, estimate, n_ctx, n_parallel)

    def _load_blocking(self, config: ModelConfig, trusted: bool) -> ServedModel:
        facts = self._inspect(config, trusted)
        self._budget.reserve(config.alias, facts.estimate)
        try:
            return self._local(config, facts)
        except BaseException:
            self._budget.release(config.alias)
            raise

    def _locate(self, config: ModelConfig, trusted: bool) -> Path:
        """The model's file, refused unless it is a regular file in an allowed directory:
        checked before anything opens it (a FIFO would block the opening thread forever)."""
        if config.is_builtin:
            return builtin.resolve(config.path)
        if config.source is not None:
            return self._locate_store(config)
        _check_path_text(config.path)
        path = Path(os.path.expanduser(config.path))
        if not path.is_absolute():
            raise InvalidArgument(f"model path {config.path!r} must be absolute")
        try:
            real = path.resolve()
        except RuntimeError:  # Python 3.11 reports a symlink loop so
            raise InvalidArgument(f"model path {path} is a symlink loop") from None
        except OSError as exc:
            raise InvalidArgument(f"model path {path} cannot be resolved: {exc}") from None
        if not trusted and not any(real.is_relative_to(d) for d in self._settings.model_dirs):
            allowed = ", ".join(str(d) for d in self._settings.model_dirs) or "none"
            raise PermissionDenied(
                f"{path} is outside the directories this worker may load models from "
                f"({allowed}); add its directory to model_dirs in the worker's config"
            )
        try:
            mode = os.stat(real).st_mode
        except FileNotFoundError:
            raise NotFound(f"model file {path} does not exist") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InvalidArgument(f"model path {path} is a symlink loop") from None
            raise InvalidArgument(f"model path {path} cannot be read: {exc.strerror}") from None
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
            raise InvalidArgument(
                f"model path {path} is {kind}, not a regular file: a model must be a GGUF file"
            )
        return real

    def _locate_store(self, config: ModelConfig) -> Path:
        """A store model's verified file, in the store dir and nowhere else."""
        source = config.source
        assert source is not None
        path = self.store.verified(source.sha256, source.size_bytes) if self.store else None
        if path is None:
            raise NotFound(
                f"store model {source.name!r} ({source.sha256}) is not on this node yet: "
                "LoadModel fetches it"
            )
        return path

    # ---- unloading -------------------------------------------------------------------
    async def unload(self, alias: str, reason: str | None = None) -> None:
        with self._lock:
            entry = self._entries.get(alias)
            if entry is None:
                raise ModelNotFound(alias, self._entries)
            hosted = entry.hosted
            fetching = entry.task if entry.state is ModelState.DOWNLOADING else None
            if fetching is not None:
                entry.unloaded = True
            elif entry.state is ModelState.FAILED:
                # Nothing to wait for; a split model lost while serving still has a child.
                del self._entries[alias]
            elif entry.state not in _SERVING or hosted is None:
                raise Unavailable(f"model {alias!r} is {entry.state.value}; retry shortly")
            else:
                entry.state = ModelState.UNLOADING
        if fetching is not None:
            # The download stops at its next chunk and the load ends, removing the entry;
            # the part file stays for a later load to resume.
            fetching.cancel()
            await asyncio.wait([fetching])
            log.info("model %s unloaded while downloading", alias)
            return
        self._changed()
        if hosted is None:  # failed at load: holds nothing to free
            return
        reason = reason or f"model {alias!r} was unloaded"
        await asyncio.shield(hosted.close(reason))
        with self._lock:
            if self._entries.get(alias) is entry:
                del self._entries[alias]
        if not entry.lost:  # a lost model's memory was released when it was lost
            self._budget.release(alias)
        self._changed()
        log.info("model %s unloaded", alias)

    # ---- draining --------------------------------------------------------------------
    def drain(self, reason: str) -> None:
        """Stops taking requests (new ones get UNAVAILABLE, which a gateway retries on
        another node) while those already admitted run to the end; the models report
        DRAINING, so routing stops sending here with the next heartbeat."""
        with self._lock:
            self._draining = reason
            for entry in self._entries.values():
                if entry.state is ModelState.READY:
                    entry.state = ModelState.DRAINING
        self._changed()
        log.info("draining: %s", reason)

    def in_flight(self) -> int:
        """Requests the served models hold now: waiting for a slot or running."""
        with self._lock:
            hosted = [e.hosted for e in self._entries.values() if e.state in _SERVING]
        return sum(h.figures().load for h in hosted if h is not None)

    async def wait_idle(self, timeout: float, poll_s: float = 0.05) -> bool:
        """Waits until no request is in flight; False if some still are after `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.in_flight() and loop.time() < deadline:
            await asyncio.sleep(poll_s)
        return not self.in_flight()

    async def close_all(self) -> None:
        # Downloads stop (their part files stay); loads still running finish first, so that
        # what they load is closed too.
        with self._lock:
            fetching = [a for a, e in self._entries.items() if e.state is ModelState.DOWNLOADING]
        for alias in fetching:
            with contextlib.suppress(LlamaherdError):
                await self.unload(alias, "the worker is shutting down")
        await asyncio.gather(*self._loads, return_exceptions=True)
        if self._fetcher is not None:
            self._fetcher.shutdown()
        with self._lock:
            aliases = [a for a, e in self._entries.items() if e.state in _SERVING or e.lost]
        for alias in aliases:
            await self.unload(alias, "the worker is shutting down")


def _check_path_text(path: str) -> None:
    """Refuses paths the OS would refuse with an error of its own (a NUL, over PATH_MAX)."""
    if "\0" in path:
        raise InvalidArgument("model path contains a NUL byte")
    size = len(path.encode("utf-8", "surrogatepass"))
    if size > MAX_PATH_BYTES:
        raise InvalidArgument(f"model path is {size} bytes; the limit is {MAX_PATH_BYTES}")


def _settled(task: asyncio.Task[ModelStatus]) -> None:
    """Retrieves the outcome of a load whose caller may have gone: a failure is logged."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, LlamaherdError):
        log.error("loading failed", exc_info=exc)
