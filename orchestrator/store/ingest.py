"""Putting files into the store: from a local file (`llamaherd models add`) or from an
HTTP(S) mirror on the cluster network (`llamaherd models import`).

Either way the file is checked (a regular file, a complete GGUF), hashed exactly once (while
it is copied or downloaded, or once linked), and lands in the store directory under a
temporary name first, so the index only ever names whole, hashed files.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

import httpx

from common.errors import (
    AlreadyExists,
    InvalidArgument,
    InvalidModelFile,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from common.gguf import read_gguf
from common.memory import format_bytes
from orchestrator.store.index import (
    FILE_SUFFIX,
    StoredModel,
    StoreIndex,
    check_name,
    check_sha256,
    now_unix_s,
)
from orchestrator.store.summary import summarise

log = logging.getLogger(__name__)

# (bytes done, bytes in all or None when unknown): the CLI draws its progress bar from it.
Progress = Callable[[int, int | None], None]
CHUNK = 4 << 20
# Room left on the store's filesystem after a file lands (the index and its WAL grow too).
FREE_MARGIN = 64 << 20
DEFAULT_MAX_IMPORT_BYTES = 512 << 30  # larger than any GGUF a Jetson or a PC could serve
IMPORT_TIMEOUT = httpx.Timeout(30.0, read=120.0)
URL_SCHEMES = ("http", "https")


def default_name(filename: str) -> str:
    """The store name a file gets without --name: its file name less `.gguf`."""
    stem = filename[: -len(FILE_SUFFIX)] if filename.lower().endswith(FILE_SUFFIX) else filename
    try:
        return check_name(stem)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{exc.message}; pass --name NAME") from None


# ---- a local file ---------------------------------------------------------------------------
def add_file(
    index: StoreIndex,
    source: Path,
    name: str | None = None,
    *,
    replace: bool = False,
    link: bool = True,
    progress: Progress | None = None,
    clock: Callable[[], float] = now_unix_s,
) -> StoredModel:
    """Adds a local GGUF file under `name` (default: its file name less `.gguf`).

    With `link`, the store hard-links the file when it lies on the same filesystem (no
    second copy of gigabytes); the store then shares it with `source`, so a later in-place
    edit of `source` would change it too (workers verify the hash and would refuse it)."""
    name = check_name(name) if name is not None else default_name(source.name)
    _refuse_taken(index, name, replace)
    size = _regular_file_size(source)
    read_gguf(source)  # refuse a non-GGUF now, not after hashing gigabytes
    incoming = _incoming_path(index)
    try:
        if not (link and _hard_link(source, incoming)):
            _ensure_room(index.store_dir, size)
            with source.open("rb") as src, _create_private(incoming) as dst:
                digest = _copy_hashing(_chunks(src), dst, size, progress)
        else:
            with incoming.open("rb") as linked:
                digest = _copy_hashing(_chunks(linked), None, size, progress)
        return _index(index, incoming, name, digest, replace, clock, shown_as=str(source))
    finally:
        incoming.unlink(missing_ok=True)


def _regular_file_size(path: Path) -> int:
    """The size of `path` if it is a regular file (symlinks to one are followed)."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise NotFound(f"{path} does not exist") from None
    except IsADirectoryError:
        raise InvalidArgument(f"{path} is a directory, not a GGUF file") from None
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"{path} is not a regular file ({_file_kind(st.st_mode)})")
    if st.st_size == 0:
        raise InvalidModelFile(f"{path} is empty")
    return st.st_size


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )  # fmt: skip
    return next((what for test, what in kinds if test(mode)), "not a plain file")


def _hard_link(source: Path, incoming: Path) -> bool:
    """Links `source` into the store; False when it cannot be (another filesystem, or a
    file the kernel will not let us link: fs.protected_hardlinks)."""
    try:
        os.link(source.resolve(), incoming)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP):
            raise
        return False
    return True


# ---- a URL on the cluster network -----------------------------------------------------------
def check_import_url(url: str, allowed_hosts: Iterable[str]) -> str:
    """`url` if it is http(s) with a host the allow-list admits (an empty list admits any
    host); InvalidArgument or PermissionDenied naming why not. Entries are host names, IP
    addresses or networks (10.0.0.0/8)."""
    parts = urlsplit(url)
    if parts.scheme not in URL_SCHEMES:
        raise InvalidArgument(
            f"{url!r}: only http and https URLs can be imported, not "
            f"{parts.scheme or 'a bare path'} (add a local file with `llamaherd models add FILE`)"
        )
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidArgument(f"{url!r} names no host")
    allowed = [entry.strip().lower() for entry in allowed_hosts if entry.strip()]
    if allowed and not any(_host_matches(host, entry) for entry in allowed):
        raise PermissionDenied(
            f"{url!r}: host {host} is not in store_import_hosts ({', '.join(allowed)})"
        )
    return url


def _host_matches(host: str, entry: str) -> bool:
    if host == entry:
        return True
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False)
    except ValueError:  # a name, or an entry that is not a network
        return False


def import_url(
    index: StoreIndex,
    url: str,
    name: str | None = None,
    *,
    sha256: str | None = None,
    replace: bool = False,
    allowed_hosts: Iterable[str] = (),
    max_bytes: int = DEFAULT_MAX_IMPORT_BYTES,
    client: httpx.Client | None = None,
    progress: Progress | None = None,
    clock: Callable[[], float] = now_unix_s,
) -> StoredModel:
    """Downloads a GGUF from an HTTP(S) mirror into the store, hashing while it arrives;
    with `sha256`, a file with another hash is refused. Redirects are not followed (the
    allow-list judges the URL given, and a redirect could lead elsewhere)."""
    check_import_url(url, allowed_hosts)
    expected = check_sha256(sha256) if sha256 is not None else None
    path_name = unquote(urlsplit(url).path.rstrip("/").rpartition("/")[2])
    name = check_name(name) if name is not None else default_name(path_name or url)
    _refuse_taken(index, name, replace)
    incoming = _incoming_path(index)
    own_client = client is None
    http = client or httpx.Client(timeout=IMPORT_TIMEOUT)
    try:
        digest = _download(http, url, incoming, index.store_dir, max_bytes, progress)
        if expected is not None and digest != expected:
            raise InvalidArgument(
                f"{url}: sha256 mismatch: expected {expected}, got {digest}; nothing was added"
            )
        return _index(index, incoming, name, digest, replace, clock, shown_as=url)
    finally:
        incoming.unlink(missing_ok=True)
        if own_client:
            http.close()


def _download(
    http: httpx.Client,
    url: str,
    incoming: Path,
    store_dir: Path,
    max_bytes: int,
    progress: Progress | None,
) -> str:
    try:
        with http.stream("GET", url, follow_redirects=False) as response:
            if response.is_redirect:
                raise InvalidArgument(
                    f"{url} redirects to {response.headers.get('location', '?')}: import that "
                    "URL instead (redirects are not followed)"
                )
            if response.status_code != 200:
                raise Unavailable(f"{url} answered HTTP {response.status_code}, not the file")
            total = _content_length(response)
            if total is not None:
                _check_cap(url, total, max_bytes)
                _ensure_room(store_dir, total)
            with _create_private(incoming) as dst:
                digest = _copy_hashing(
                    _capped(response.iter_bytes(CHUNK), url, max_bytes), dst, total, progress
                )
            received = incoming.stat().st_size
            if total is not None and received != total:
                raise Unavailable(f"{url}: the transfer ended after {received} of {total} bytes")
            return digest
    except httpx.HTTPError as exc:
        raise Unavailable(f"cannot fetch {url}: {exc or type(exc).__name__}") from None


def _content_length(response: httpx.Response) -> int | None:
    raw = response.headers.get("content-length")
    return int(raw) if raw is not None and raw.isdigit() else None


def _check_cap(url: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ResourceExhausted(
            f"{url} is {format_bytes(size)}, more than the import cap of "
            f"{format_bytes(max_bytes)} (--max-bytes)"
        )


def _capped(chunks: Iterator[bytes], url: str, max_bytes: int) -> Iterator[bytes]:
    """The chunks, stopping with an error once more than max_bytes arrived (a server that
    stated no length, or lied about it)."""
    seen = 0
    for chunk in chunks:
        seen += len(chunk)
        _check_cap(url, seen, max_bytes)
        yield chunk


# ---- shared steps ---------------------------------------------------------------------------
def _refuse_taken(index: StoreIndex, name: str, replace: bool) -> None:
    """Refuses a taken name before any hashing (add() checks again, atomically)."""
    if not replace and index.find(name) is not None:
        raise AlreadyExists(
            f"the store already has a model named {name!r}: pass --replace, or another --name"
        )


def _incoming_path(index: StoreIndex) -> Path:
    return index.store_dir / f".incoming-{uuid.uuid4().hex}{FILE_SUFFIX}.part"


def _create_private(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(fd, "wb")


def _chunks(file: BinaryIO) -> Iterator[bytes]:
    while chunk := file.read(CHUNK):
        yield chunk


def _copy_hashing(
    chunks: Iterable[bytes], dst: BinaryIO | None, total: int | None, progress: Progress | None
) -> str:
    """Hashes the chunks (writing them to dst when given); returns the hex sha256."""
    digest = hashlib.sha256()
    done = 0
    for chunk in chunks:
        digest.update(chunk)
        if dst is not None:
            dst.write(chunk)
        done += len(chunk)
        if progress is not None:
            progress(done, total)
    return digest.hexdigest()


def _ensure_room(store_dir: Path, size: int) -> None:
    free = shutil.disk_usage(store_dir).free
    if free < size + FREE_MARGIN:
        raise ResourceExhausted(
            f"the store at {store_dir} has {format_bytes(free)} free; this file needs "
            f"{format_bytes(size)} (+{format_bytes(FREE_MARGIN)} margin)"
        )


def _index(
    index: StoreIndex,
    incoming: Path,
    name: str,
    digest: str,
    replace: bool,
    clock: Callable[[], float],
    shown_as: str,
) -> StoredModel:
    """Checks the file as it lies in the store (what workers will get), then indexes it."""
    try:
        gguf = read_gguf(incoming)
    except InvalidModelFile as exc:
        raise InvalidModelFile(exc.message.replace(str(incoming), shown_as)) from None
    model = StoredModel(name, digest, gguf.file_bytes, summarise(gguf), clock())
    replaced = index.add(model, incoming, replace=replace)
    if replaced is not None:
        log.info("store name %s now names %s (was %s)", name, digest[:12], replaced.sha256[:12])
    return model
