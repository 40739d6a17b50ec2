"""Store model files on a worker: where they live, how they arrive, and which may go.

A store model's file lives at `<first model_dir>/store/<sha256>.gguf` and nowhere else; it
arrives as `<sha256>.gguf.part`, fetched from the source's URLs in order (peers first, the
coordinator's store last) with the cluster join token, resumed from the part's size after
a cut, hashed and written back to disk as it arrives (the fsync before the rename then
has little left to flush), and renamed into place only once its size and sha256 match.
A file that fails the check is deleted and fetched again, a bounded number of times. So
llama.cpp is never given a file that has not been verified on this node.

The store dir keeps a small index (index.json): per verified file, its store name, size,
modification time when verified (a file changed since is verified again before use) and
when a model last used it, for the least-recently-used eviction that makes room for a
fetch. Eviction deletes only verified `<sha256>.gguf` files of this dir that no model
holds and the worker's config does not name.

Downloads run on a pool of their own (max_downloads threads: writing and hashing block),
so they never hold up the event loop or the pool that loads models.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from common.errors import FailedPrecondition, LlamaherdError, ResourceExhausted, Unavailable
from common.memory import format_bytes
from common.model_settings import ModelSource
from common.status import DownloadProgress, StoredFile
from worker.engine.pools import BoundedPool

log = logging.getLogger(__name__)

STORE_DIR_NAME = "store"
PART_SUFFIX = ".part"
INDEX_NAME = "index.json"
FILES_PATH = "/v1/store/files/"
# What a fetch keeps free beyond the file: the filesystem's own bookkeeping and the logs
# and caches that share it (the coordinator's placement counts the same margin).
DISK_MARGIN_BYTES = 64 << 20
CHUNK_BYTES = 1 << 20
# The kernel is asked to write a download to disk every this many bytes, so the fsync
# before the rename finds little left (it cost ~25% of a LAN fetch's rate when it flushed
# the whole file at the end).
WRITEBACK_BYTES = 8 << 20
MAX_PIECES = 256  # pieces per write: writev takes at most IOV_MAX (1024 on Linux)
RATE_WINDOW_S = 3.0  # the rate is measured over this many recent seconds
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0  # a source silent for this long is given up for the next
# Resumes of one source within one attempt, each after a cut that followed some progress:
# a flaky link still finishes, a source that cuts at once does not loop.
MAX_RESUMES = 100
_STORE_FILE = re.compile(r"^([0-9a-f]{64})\.gguf$")

ProgressCallback = Callable[[DownloadProgress], None]


# ---- eviction: a pure decision ----------------------------------------------------------
@dataclass(frozen=True)
class StoreEntry:
    """A verified file of the store dir."""

    sha256: str
    size_bytes: int
    last_used: float  # Unix time a model last used it (or it was verified)
    name: str = ""


def plan_eviction(
    files: Sequence[StoreEntry], needed: int, free: int, keep: Set[str]
) -> list[StoreEntry] | None:
    """The files to delete so that `free` reaches `needed`: least recently used first, only
    as many as needed, none in `keep`. [] when there is room already; None when deleting
    every file not kept would still not make enough."""
    if free >= needed:
        return []
    chosen = []
    for entry in sorted(files, key=lambda e: (e.last_used, e.sha256)):
        if entry.sha256 in keep:
            continue
        chosen.append(entry)
        free += entry.size_bytes
        if free >= needed:
            return chosen
    return None


# ---- the store dir ----------------------------------------------------------------------
class StoreDir:
    """`<first model_dir>/store`: verified files by sha256, their index, and their room.

    Thread-safe: downloads, loads, the heartbeat and the peer file server all use it."""

    def __init__(
        self,
        root: Path,
        clock: Callable[[], float] = time.time,
        disk_free: Callable[[Path], int] = lambda folder: shutil.disk_usage(folder).free,
    ) -> None:
        self.root = root
        self._clock = clock
        self._disk_free = disk_free
        self._lock = threading.RLock()

    @classmethod
    def for_model_dirs(cls, model_dirs: Sequence[Path]) -> StoreDir | None:
        """The store dir under the first model dir; None for a worker with no model dir."""
        return cls(model_dirs[0] / STORE_DIR_NAME) if model_dirs else None

    def path(self, sha256: str) -> Path:
        return self.root / f"{sha256}.gguf"

    def part(self, sha256: str) -> Path:
        return self.root / f"{sha256}.gguf{PART_SUFFIX}"

    def ensure(self) -> None:
        """Creates the dir; refuses one that is a symlink (it could lead out of model_dirs)."""
        with contextlib.suppress(FileExistsError):
            self.root.mkdir(parents=True, mode=0o755)
        mode = os.lstat(self.root).st_mode
        if not stat.S_ISDIR(mode):
            raise FailedPrecondition(
                f"store dir {self.root} is not a directory (a symlink or a file): remove it, "
                "the worker creates the dir itself"
            )

    # ---- what is here ------------------------------------------------------------------
    def verified(self, sha256: str, size_bytes: int | None = None) -> Path | None:
        """The file's path when it is here, a regular file (not a symlink), verified by
        this worker and unchanged since (same size and modification time); else None."""
        with self._lock:
            record = self._read_index().get(sha256)
        return self._matches(sha256, record, size_bytes)

    def _matches(self, sha256: str, record: object, size_bytes: int | None) -> Path | None:
        path = self.path(sha256)
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or not isinstance(record, dict):
            return None
        if size_bytes is not None and st.st_size != size_bytes:
            return None
        if record.get("size") != st.st_size or record.get("mtime_ns") != st.st_mtime_ns:
            return None
        return path

    def entries(self) -> list[StoreEntry]:
        """The verified files, with their names and when they were last used."""
        with self._lock:
            index = self._read_index()
        found = []
        for sha256, size in self._files():
            record = index.get(sha256)
            if not isinstance(record, dict) or self._matches(sha256, record, size) is None:
                continue
            found.append(
                StoreEntry(sha256, size, float(record.get("used", 0)), str(record.get("name", "")))
            )
        return found

    def stored_files(self) -> tuple[StoredFile, ...]:
        """The verified files as the heartbeat reports them (and the peer server serves)."""
        return tuple(StoredFile(e.sha256, e.size_bytes, e.name) for e in self.entries())

    def free_bytes(self) -> int:
        """Free bytes on the store dir's filesystem (its nearest existing parent's)."""
        folder = self.root
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        return self._disk_free(folder)

    def _files(self) -> Iterator[tuple[str, int]]:
        """`<sha256>.gguf` regular files directly in the dir (never symlinks), with sizes."""
        try:
            with os.scandir(self.root) as listing:
                for item in listing:
                    match = _STORE_FILE.match(item.name)
                    if match and item.is_file(follow_symlinks=False):
                        yield match.group(1), item.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            return

    # ---- changes -----------------------------------------------------------------------
    def record_verified(self, sha256: str, name: str) -> None:
        """Notes that the file now at path(sha256) matched its sha256."""
        st = os.lstat(self.path(sha256))
        with self._lock:
            index = self._read_index()
            index[sha256] = {
                "name": name, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "used": self._clock(),
            }  # fmt: skip
            self._write_index(index)

    def touch(self, sha256: str, name: str) -> None:
        """Notes that a model uses the file now (least recently used goes first)."""
        with self._lock:
            index = self._read_index()
            record = index.get(sha256)
            if isinstance(record, dict):
                record["used"] = self._clock()
                record["name"] = name or record.get("name", "")
                self._write_index(index)

    def remove(self, sha256: str) -> None:
        with self._lock:
            self.path(sha256).unlink(missing_ok=True)
            index = self._read_index()
            if index.pop(sha256, None) is not None:
                self._write_index(index)

    def make_room(self, needed: int, keep: Set[str], reserved: int = 0) -> int:
        """Deletes least recently used verified files not in `keep` until `needed` bytes
        are free beyond `reserved` (promised to downloads under way); returns the free
        bytes then. Raises ResourceExhausted, deleting nothing, when that cannot be done."""
        with self._lock:
            free = self.free_bytes() - reserved
            entries = self.entries()
            plan = plan_eviction(entries, needed, free, keep)
            if plan is None:
                freeable = sum(e.size_bytes for e in entries if e.sha256 not in keep)
                raise ResourceExhausted(
                    f"not enough disk space in {self.root}: needs {needed} bytes "
                    f"({format_bytes(needed)}), {max(free, 0)} bytes free "
                    f"({format_bytes(max(free, 0))}) and {freeable} more in store files "
                    "no model uses; free space there or give the worker another model_dir"
                )
            for entry in plan:
                log.info(
                    "deleting store file %s (%s, %s, unused) to make room",
                    entry.sha256, entry.name or "unnamed", format_bytes(entry.size_bytes),
                )  # fmt: skip
                self.remove(entry.sha256)
            return self.free_bytes() - reserved

    # ---- the index ---------------------------------------------------------------------
    def _read_index(self) -> dict[str, Any]:
        try:
            data = json.loads((self.root / INDEX_NAME).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Lost bookkeeping only costs a re-verification of the files, never a wrong load.
            log.warning("store index %s unreadable (%s); files will be verified again",
                        self.root / INDEX_NAME, exc)  # fmt: skip
            return {}
        return data if isinstance(data, dict) else {}

    def _write_index(self, index: dict[str, Any]) -> None:
        self.ensure()
        tmp = self.root / f".{INDEX_NAME}.tmp"
        tmp.write_text(json.dumps(index, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.root / INDEX_NAME)


# ---- progress -----------------------------------------------------------------------------
class _Meter:
    """A download's progress: bytes, recent rate and ETA, published at every chunk (the
    registry decides how often a heartbeat carries it)."""

    def __init__(self, total: int, publish: ProgressCallback, clock: Callable[[], float]) -> None:
        self.total = total
        self.done = 0
        self.source = ""
        self.attempt = 1
        self._publish = publish
        self._clock = clock
        self._samples: deque[tuple[float, int]] = deque()

    def restart(self, done: int) -> None:
        """A new transfer from `done` bytes: the rate is measured afresh."""
        self.done = done
        self._samples.clear()
        self.publish()

    def advance(self, n: int) -> None:
        self.done += n
        self.publish()

    def publish(self) -> None:
        now = self._clock()
        self._samples.append((now, self.done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_S:
            self._samples.popleft()
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        rate = (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        self._publish(
            DownloadProgress(
                bytes_done=self.done, bytes_total=self.total, bytes_per_second=rate,
                eta_s=eta, source=self.source, attempt=self.attempt,
            )
        )  # fmt: skip


# ---- durable writing -----------------------------------------------------------------------
SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writeback of the range's dirty pages, no wait


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    """Linux's sync_file_range(2) through ctypes (the os module lacks it), or None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux/glibc: fdatasync does the same job
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int

    def start_writeback(fd: int, offset: int, nbytes: int) -> None:
        if function(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return start_writeback


def _fdatasync_writeback(fd: int, offset: int, nbytes: int) -> None:
    os.fdatasync(fd)


WritebackFunction = Callable[[int, int, int], None]
_START_WRITEBACK: WritebackFunction = _load_sync_file_range() or _fdatasync_writeback


def _batches(pieces: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    """The pieces as they came off the socket, grouped until a group holds `size` bytes
    (the last may hold less). Not httpx's own `iter_raw(chunk_size)`: that copies every
    byte two or three times to cut even chunks, a cost a LAN transfer's rate shows."""
    batch: list[bytes] = []
    held = 0
    for piece in pieces:
        batch.append(piece)
        held += len(piece)
        if held >= size or len(batch) >= MAX_PIECES:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


class _DurableAppend:
    """Appends to a part file and has the kernel write it to disk while it grows, so that
    the fsync before the rename (durability: the verified file must survive a power cut
    once it is in place) has little left to do instead of flushing the whole file at the
    end. Every `writeback_bytes` appended, a thread of its own starts the writeback of the
    new range (sync_file_range, or fdatasync where that is missing), off the transfer's
    thread; `sync()` then fsyncs, which is what makes the file durable."""

    def __init__(
        self, path: Path, writeback_bytes: int, start_writeback: WritebackFunction
    ) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._every = writeback_bytes
        self._start_writeback = start_writeback
        self._written = self._requested = self._flushed = os.fstat(self._fd).st_size
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._flusher, name=f"writeback-{path.name[:16]}", daemon=True
        )
        self._thread.start()

    def write(self, pieces: Sequence[bytes]) -> None:
        """Appends the pieces with one system call (unbuffered: no copy of our own)."""
        total = sum(len(piece) for piece in pieces)
        done = os.writev(self._fd, pieces)
        if done < total:  # a short write (rare): the rest, piece by piece
            rest = memoryview(b"".join(pieces))[done:]
            while rest:
                rest = rest[os.write(self._fd, rest) :]
        self._written += total
        if self._written - self._requested >= self._every:
            self._requested = self._written
            self._wake.set()

    def sync(self) -> None:
        """Everything written is on disk when this returns."""
        self._stop_flusher()
        os.fsync(self._fd)

    def close(self) -> None:
        self._stop_flusher()
        os.close(self._fd)

    def __enter__(self) -> _DurableAppend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stop_flusher(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def _flusher(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            end = self._requested
            try:
                self._start_writeback(self._fd, self._flushed, end - self._flushed)
            except OSError as exc:
                # Only an early start is lost: sync() still flushes it all and reports
                # any error that matters.
                log.warning("early writeback of a download failed (%s); fsync at the end", exc)
                return
            self._flushed = end


# ---- fetching -----------------------------------------------------------------------------
class _Cancelled(Exception):
    """The load was cancelled (an UnloadModel): stop, keep the part for a later resume."""


class _SourceFailed(Exception):
    """One URL could not serve the file (now); the next one is tried."""


@dataclass
class _Part:
    """The part file and the hash of the bytes it holds so far."""

    path: Path
    hasher: Any  # hashlib's sha256 object
    size: int = 0

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)
        self.hasher, self.size = hashlib.sha256(), 0


def source_host(url: str) -> str:
    """host:port of a URL, as progress names the source (no user info, no path)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Fetcher:
    """Fetches store files into `store`: at most `max_downloads` at once, each file by one
    download at a time, `retries` further attempts after a failed check."""

    def __init__(
        self,
        store: StoreDir,
        token: str | None,
        max_downloads: int = 2,
        retries: int = 2,
        *,
        margin_bytes: int = DISK_MARGIN_BYTES,
        retry_delay_s: float = 1.0,
        chunk_bytes: int = CHUNK_BYTES,
        writeback_bytes: int = WRITEBACK_BYTES,
        start_writeback: WritebackFunction = _START_WRITEBACK,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._chunk = chunk_bytes
        self._writeback = writeback_bytes
        self._start_writeback = start_writeback
        self.store = store
        self._token = token
        self._retries = retries
        self._margin = margin_bytes
        self._retry_delay_s = retry_delay_s
        self._clock = clock
        self._transport = transport
        self._slots = asyncio.Semaphore(max_downloads)
        self._pool = BoundedPool("downloads", max_downloads, 0)
        self._files: dict[str, asyncio.Lock] = {}
        self._reserved: dict[str, int] = {}  # disk promised to downloads under way
        self._reserved_lock = threading.Lock()

    async def fetch(
        self, source: ModelSource, progress: ProgressCallback, keep: Callable[[], Set[str]]
    ) -> Path:
        """The verified file of `source`, fetched first when it is not here.

        `progress` is called (from any thread) as the download advances, first with 0
        bytes while it waits for a download slot; `keep` names the files that must not be
        deleted to make room (loaded, being loaded or pinned by the config). Cancelling
        stops the transfer and keeps its part file for a later resume."""
        path = self.store.verified(source.sha256, source.size_bytes)
        if path is not None:
            self.store.touch(source.sha256, source.name)
            return path
        progress(DownloadProgress(bytes_total=source.size_bytes))
        lock = self._files.setdefault(source.sha256, asyncio.Lock())
        async with lock, self._slots:  # one download per file; max_downloads in all
            path = self.store.verified(source.sha256, source.size_bytes)
            if path is not None:
                self.store.touch(source.sha256, source.name)
                return path
            cancel = threading.Event()
            work = asyncio.ensure_future(
                self._pool.run(lambda: self._download(source, progress, keep, cancel))
            )
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                cancel.set()
                # The thread stops at its next chunk; wait for it, so that the part file
                # is no longer written once the caller learns the load is gone.
                await asyncio.wait([work])
                raise

    # ---- on the download thread ----------------------------------------------------------
    def _download(
        self,
        source: ModelSource,
        progress: ProgressCallback,
        keep: Callable[[], Set[str]],
        cancel: threading.Event,
    ) -> Path:
        self.store.ensure()
        part = _Part(self.store.part(source.sha256), hashlib.sha256())
        meter = _Meter(source.size_bytes, progress, self._clock)
        try:
            path = self.verify_in_place(source)
            if path is not None:
                return path
            self._reserve_room(source, part.path, keep)
            self._resume_hash(part, source.size_bytes, cancel)
            return self._attempts(source, part, meter, cancel)
        except _Cancelled:
            log.info("download of %s cancelled at %d bytes; part kept", source.name, part.size)
            raise Unavailable(f"the load of store model {source.name!r} was cancelled") from None
        finally:
            with self._reserved_lock:
                self._reserved.pop(source.sha256, None)

    def _reserve_room(self, source: ModelSource, part: Path, keep: Callable[[], Set[str]]) -> None:
        """Checks for room (file + margin, less what the part holds) before any byte is
        fetched, deleting unused store files if need be; refuses with the numbers."""
        try:
            have = min(part.stat().st_size, source.size_bytes)
        except FileNotFoundError:
            have = 0
        needed = source.size_bytes - have + self._margin
        with self._reserved_lock:
            reserved = sum(self._reserved.values())
            try:
                # The kept files as of now: a load that started since the fetch did counts.
                self.store.make_room(needed, {*keep(), source.sha256}, reserved)
            except ResourceExhausted as exc:
                raise ResourceExhausted(
                    f"cannot fetch store model {source.name!r} ({source.size_bytes} bytes, "
                    f"{format_bytes(source.size_bytes)}, + {format_bytes(self._margin)} "
                    f"margin): {exc.message}"
                ) from None
            self._reserved[source.sha256] = needed

    @staticmethod
    def _resume_hash(part: _Part, size: int, cancel: threading.Event) -> None:
        """Hashes what an earlier download left in the part file, to continue from there."""
        try:
            have = part.path.stat().st_size
        except FileNotFoundError:
            return
        if have > size:
            part.reset()
            return
        with part.path.open("rb") as held:
            while chunk := held.read(CHUNK_BYTES):
                if cancel.is_set():
                    raise _Cancelled
                part.hasher.update(chunk)
                part.size += len(chunk)
        log.info("resuming %s from %d bytes", part.path.name, part.size)

    def _attempts(
        self, source: ModelSource, part: _Part, meter: _Meter, cancel: threading.Event
    ) -> Path:
        problems: list[str] = []
        mismatches = 0
        for attempt in range(1, self._retries + 2):
            meter.attempt = attempt
            problem = self._transfer_from_any(source, part, meter, cancel)
            if problem is None:
                problem = self._check(source, part)
                if problem is None:
                    return self._install(source, part)
                mismatches += 1
                part.reset()
            problems.append(f"attempt {attempt}: {problem}")
            log.warning("download of %s: %s", source.name, problems[-1])
            if attempt <= self._retries and cancel.wait(self._retry_delay_s * attempt):
                raise _Cancelled
        summary = "; ".join(problems)
        if mismatches:
            raise FailedPrecondition(
                f"store model {source.name!r} failed its check {mismatches} times, the last "
                f"file deleted: {summary}"
            )
        raise Unavailable(f"store model {source.name!r} could not be fetched: {summary}")

    def _transfer_from_any(
        self, source: ModelSource, part: _Part, meter: _Meter, cancel: threading.Event
    ) -> str | None:
        """Fetches the rest of the file from the first URL that serves it: None once the
        part holds size_bytes, else why no URL could."""
        failures = []
        for url in source.urls:
            meter.source = source_host(url)
            for _ in range(MAX_RESUMES):
                before = part.size
                try:
                    self._transfer(url, source, part, meter, cancel)
                except _SourceFailed as exc:
                    if part.size > before and part.size < source.size_bytes:
                        log.info("%s cut at %d bytes (%s); resuming", meter.source, part.size, exc)
                        continue
                    failures.append(f"{meter.source}: {exc}")
                    break
                if part.size >= source.size_bytes:
                    return None
                failures.append(f"{meter.source}: the body ended at {part.size} bytes")
                break
            if part.size >= source.size_bytes:
                return None
        return "; ".join(failures) or "no source URL"

    def _transfer(
        self, url: str, source: ModelSource, part: _Part, meter: _Meter, cancel: threading.Event
    ) -> None:
        headers = {"Accept-Encoding": "identity"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if part.size:
            headers["Range"] = f"bytes={part.size}-"
        timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        try:
            with (
                httpx.Client(timeout=timeout, transport=self._transport) as client,
                client.stream("GET", url, headers=headers) as reply,
            ):
                self._accept(reply, part)
                length = reply.headers.get("content-length")
                if (
                    length is not None
                    and length.isdigit()
                    and int(length) != (source.size_bytes - part.size)
                ):
                    raise _SourceFailed(
                        f"offers {length} bytes from offset {part.size} of a "
                        f"{source.size_bytes}-byte file"
                    )
                meter.restart(part.size)
                with _DurableAppend(part.path, self._writeback, self._start_writeback) as out:
                    for batch in _batches(reply.iter_raw(), self._chunk):
                        if cancel.is_set():
                            raise _Cancelled
                        n = sum(len(piece) for piece in batch)
                        if part.size + n > source.size_bytes:
                            raise _SourceFailed(f"sent more than {source.size_bytes} bytes")
                        out.write(batch)
                        for piece in batch:
                            part.hasher.update(piece)
                        part.size += n
                        meter.advance(n)
                    out.sync()  # on disk before it is checked, renamed and reported
                meter.publish()
        except httpx.HTTPError as exc:
            raise _SourceFailed(f"{type(exc).__name__}: {exc}") from None
        except OSError as exc:
            kind = ResourceExhausted if exc.errno == errno.ENOSPC else LlamaherdError
            raise kind(f"cannot write {part.path}: {exc.strerror}") from exc

    @staticmethod
    def _accept(reply: httpx.Response, part: _Part) -> None:
        """Checks the reply fits the part: a range from where it ends, or the whole file."""
        if reply.status_code == 206 and part.size:
            expected = f"bytes {part.size}-"
            if not reply.headers.get("content-range", "").startswith(expected):
                raise _SourceFailed(
                    f"answered a range other than {part.size}- "
                    f"({reply.headers.get('content-range', 'no Content-Range')})"
                )
            return
        if reply.status_code == 200:
            if part.size:
                log.info("%s ignores Range; fetching the whole file again", reply.url.host)
                part.reset()
            return
        if 300 <= reply.status_code < 400:
            # Not followed: the source list is what placement chose, nothing else.
            raise _SourceFailed(f"HTTP {reply.status_code} redirect (not followed)")
        if reply.status_code == 416:
            part.reset()  # what we hold does not fit the file there: start afresh
        reply.read()
        detail = reply.text[:200].strip()
        raise _SourceFailed(f"HTTP {reply.status_code}" + (f": {detail}" if detail else ""))

    @staticmethod
    def _check(source: ModelSource, part: _Part) -> str | None:
        if part.size != source.size_bytes:
            return f"size {part.size} bytes, expected {source.size_bytes}"
        got = part.hasher.hexdigest()
        if got != source.sha256:
            return f"sha256 {got} does not match {source.sha256}"
        return None

    def _install(self, source: ModelSource, part: _Part) -> Path:
        """Renames the verified part into place (atomic) and records it."""
        final = self.store.path(source.sha256)
        os.replace(part.path, final)
        directory = os.open(self.store.root, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename survives a power cut
        finally:
            os.close(directory)
        self.store.record_verified(source.sha256, source.name)
        log.info("store model %s verified (%s)", source.name, final)
        return final

    def verify_in_place(self, source: ModelSource) -> Path | None:
        """A file already at path(sha256) that this worker has not verified (copied there
        by hand, or changed since): hashed now, recorded when it matches, deleted when not."""
        path = self.store.path(source.sha256)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size != source.size_bytes:
            path.unlink(missing_ok=True)
            return None
        digest = hashlib.sha256()
        with path.open("rb") as held:
            while chunk := held.read(CHUNK_BYTES):
                digest.update(chunk)
        if digest.hexdigest() != source.sha256:
            log.warning("store file %s does not match its name; deleted", path)
            path.unlink(missing_ok=True)
            return None
        self.store.record_verified(source.sha256, source.name)
        return path

    def shutdown(self) -> None:
        self._pool.shutdown()
