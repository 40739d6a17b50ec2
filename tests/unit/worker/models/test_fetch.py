"""Fetching store files: verified, resumed, retried, bounded, and the room they need.

The HTTP sources are httpx's MockTransport (the library boundary) serving real bytes with
ranges and injected faults (a cut, a flipped byte, a server that ignores Range), or a
peer's real file server (worker.node.metrics.StoreFiles) through httpx's WSGITransport.
Files are written to a temporary store dir; the free disk space is the one figure faked
(the OS's disk usage: a capacity minus what the dir holds).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from common.errors import FailedPrecondition, ResourceExhausted, Unavailable
from common.model_settings import ModelSource
from common.status import DownloadProgress
from worker.models.fetch import Fetcher, StoreDir, StoreEntry, plan_eviction
from worker.node.metrics import StoreFiles

TOKEN = "join-token"
CHUNK = 4096
DATA = bytes(range(256)) * 160  # 40 KiB: ten chunks
SHA = hashlib.sha256(DATA).hexdigest()


def source(data: bytes = DATA, *urls: str, name: str = "tiny") -> ModelSource:
    return ModelSource(
        name=name, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data),
        urls=urls or ("http://peer:9100/v1/store/files/x",),
    )  # fmt: skip


class FileServer:
    """An HTTP source of `data`: ranges unless `ranges` is off; `cut_at` ends the body
    with a read error at that offset once; `flips` serves that many copies with one byte
    flipped; `pause` blocks the body after its first chunk until set."""

    def __init__(
        self,
        data: bytes = DATA,
        *,
        ranges: bool = True,
        cut_at: int | None = None,
        flips: int = 0,
        status: int = 200,
        pause: threading.Event | None = None,
    ) -> None:
        self.data = data
        self.ranges = ranges
        self.cut_at = cut_at
        self.flips = flips
        self.status = status
        self.pause = pause
        self.requests: list[httpx.Request] = []
        self.served = 0

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.status != 200:
            return httpx.Response(self.status, text="no such file here")
        first = 0
        header = request.headers.get("range")
        if header and self.ranges:
            first = int(header.removeprefix("bytes=").rstrip("-"))
        body = bytearray(self.data)
        if self.flips and first == 0:
            self.flips -= 1
            body[len(body) // 2] ^= 0x01
        headers = {"content-length": str(len(body) - first)}
        status = 200
        if first:
            status = 206
            headers["content-range"] = f"bytes {first}-{len(body) - 1}/{len(body)}"
        return httpx.Response(status, headers=headers, content=self._body(bytes(body), first))

    def _body(self, body: bytes, first: int) -> Iterator[bytes]:
        for offset in range(first, len(body), CHUNK):
            cut, self.cut_at = self.cut_at, self.cut_at
            if cut is not None and offset >= cut:
                self.cut_at = None
                raise httpx.ReadError("connection reset by peer")
            chunk = body[offset : offset + CHUNK]
            self.served += len(chunk)
            yield chunk
            if self.pause is not None and not self.pause.is_set():
                self.pause.wait(5)


def store_dir(tmp_path: Path, capacity: int = 1 << 30) -> StoreDir:
    """A store dir on a disk of `capacity` bytes (free: capacity less what the dir holds)."""
    root = tmp_path / "models" / "store"

    def free(_: Path) -> int:
        held = sum(p.stat().st_size for p in root.iterdir()) if root.exists() else 0
        return capacity - held

    return StoreDir(root, disk_free=free)


def fetcher(store: StoreDir, server: FileServer | httpx.BaseTransport, **kw: object) -> Fetcher:
    transport = server.transport if isinstance(server, FileServer) else server
    options: dict[str, object] = {"retry_delay_s": 0.0, "chunk_bytes": CHUNK, "margin_bytes": 0}
    return Fetcher(store, TOKEN, transport=transport, **(options | kw))  # type: ignore[arg-type]


def fetch(
    f: Fetcher, src: ModelSource, keep: set[str] | None = None
) -> tuple[Path, list[DownloadProgress]]:
    seen: list[DownloadProgress] = []
    path = asyncio.run(f.fetch(src, seen.append, lambda: keep or set()))
    return path, seen


# ---- eviction --------------------------------------------------------------------------------
def entry(sha: str, size: int, used: float) -> StoreEntry:
    return StoreEntry(sha * 64, size, used)


def test_eviction_takes_the_least_recently_used_first_and_only_as_many_as_needed() -> None:
    files = [entry("a", 10, 3.0), entry("b", 10, 1.0), entry("c", 10, 2.0)]
    assert [e.sha256[0] for e in plan_eviction(files, 20, 10, set()) or []] == ["b"]
    assert [e.sha256[0] for e in plan_eviction(files, 30, 10, set()) or []] == ["b", "c"]
    assert plan_eviction(files, 10, 10, set()) == []


def test_eviction_never_takes_a_kept_file_and_says_when_room_cannot_be_made() -> None:
    files = [entry("a", 10, 3.0), entry("b", 10, 1.0)]
    assert [e.sha256[0] for e in plan_eviction(files, 10, 0, {"b" * 64}) or []] == ["a"]
    assert plan_eviction(files, 15, 0, {"b" * 64}) is None


# ---- fetching --------------------------------------------------------------------------------
def test_a_file_is_fetched_verified_and_renamed_with_progress(tmp_path: Path) -> None:
    store, server = store_dir(tmp_path), FileServer()
    path, seen = fetch(fetcher(store, server), source())
    assert path == store.root / f"{SHA}.gguf" and path.read_bytes() == DATA
    assert not store.part(SHA).exists()
    assert server.requests[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert "range" not in server.requests[0].headers
    assert seen[0] == DownloadProgress(bytes_total=len(DATA))  # waiting for its turn
    assert seen[-1].bytes_done == len(DATA) and seen[-1].source == "peer:9100"
    assert seen[-1].attempt == 1
    assert [(f.sha256, f.size_bytes, f.name) for f in store.stored_files()] == [
        (SHA, len(DATA), "tiny")
    ]


def test_a_verified_file_is_not_fetched_again(tmp_path: Path) -> None:
    store, server = store_dir(tmp_path), FileServer()
    fetch(fetcher(store, server), source())
    _, seen = fetch(fetcher(store, server), source())
    assert len(server.requests) == 1 and seen == []


def test_a_part_left_by_an_earlier_download_is_resumed_after_rehashing(tmp_path: Path) -> None:
    store, server = store_dir(tmp_path), FileServer()
    store.ensure()
    store.part(SHA).write_bytes(DATA[:12345])
    path, seen = fetch(fetcher(store, server), source())
    assert path.read_bytes() == DATA
    assert server.requests[0].headers["range"] == "bytes=12345-"
    assert server.served == len(DATA) - 12345
    assert seen[1].bytes_done == 12345  # progress starts where the part ended


def test_a_cut_transfer_resumes_from_the_cut_not_from_zero(tmp_path: Path) -> None:
    store, server = store_dir(tmp_path), FileServer(cut_at=5 * CHUNK)
    path, seen = fetch(fetcher(store, server), source())
    assert path.read_bytes() == DATA
    assert server.served == len(DATA)  # not a byte twice
    assert [r.headers.get("range") for r in server.requests] == [None, f"bytes={5 * CHUNK}-"]
    assert {p.attempt for p in seen} == {0, 1}  # a resume is not a new attempt


def test_a_server_that_ignores_range_restarts_the_file(tmp_path: Path) -> None:
    store, server = store_dir(tmp_path), FileServer(ranges=False)
    store.ensure()
    store.part(SHA).write_bytes(b"x" * 100)  # not even the right bytes: all replaced
    path, _ = fetch(fetcher(store, server), source())
    assert path.read_bytes() == DATA and server.served == len(DATA)


def test_the_kernel_writes_the_part_back_while_it_arrives_not_only_at_the_end(
    tmp_path: Path,
) -> None:
    # The fsync before the rename cost ~25% of a LAN fetch's rate when it had the whole
    # file to flush: writeback now starts every writeback_bytes, during the transfer.
    wrote_back = threading.Event()
    store, server = store_dir(tmp_path), FileServer(pause=wrote_back)
    store.ensure()
    store.part(SHA).write_bytes(DATA[:100])  # a resume: writeback starts where it ends
    ranges: list[tuple[int, int, int]] = []

    def record(fd: int, offset: int, nbytes: int) -> None:
        ranges.append((offset, nbytes, os.fstat(fd).st_size))
        wrote_back.set()  # the server sends the rest only once writeback has started

    f = fetcher(store, server, writeback_bytes=CHUNK, start_writeback=record)
    path, _ = fetch(f, source())
    assert path.read_bytes() == DATA
    assert server.served == len(DATA) - 100  # the body was held until writeback started
    assert ranges[0][0] == 100 and ranges[0][1] >= CHUNK
    for (offset, nbytes, size), (next_offset, _, _) in itertools.pairwise(ranges):
        assert next_offset == offset + nbytes and offset + nbytes <= size
    assert ranges[0][2] < len(DATA)  # the first started before the body had ended


def test_a_failed_early_writeback_leaves_the_fetch_to_its_final_fsync(tmp_path: Path) -> None:
    calls: list[int] = []
    tried = threading.Event()

    def refuse(fd: int, offset: int, nbytes: int) -> None:
        calls.append(offset)
        tried.set()
        raise OSError(errno.EINVAL, "Invalid argument")

    store = store_dir(tmp_path)
    f = fetcher(store, FileServer(pause=tried), writeback_bytes=CHUNK, start_writeback=refuse)
    path, _ = fetch(f, source())
    assert path.read_bytes() == DATA and calls == [0]  # given up after the first error


def test_a_flipped_byte_is_caught_deleted_and_fetched_again(tmp_path: Path) -> None:
    store, server = store_dir(tmp_path), FileServer(flips=1)
    path, seen = fetch(fetcher(store, server), source())
    assert path.read_bytes() == DATA
    assert len(server.requests) == 2 and seen[-1].attempt == 2


def test_a_file_that_never_matches_fails_after_the_retries_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    store, server = store_dir(tmp_path), FileServer(flips=10)
    with pytest.raises(FailedPrecondition, match="failed its check 3 times") as caught:
        fetch(fetcher(store, server, retries=2), source())
    assert "does not match" in caught.value.message
    assert len(server.requests) == 3
    assert not store.path(SHA).exists() and not store.part(SHA).exists()


def test_sources_are_tried_in_order(tmp_path: Path) -> None:
    store, good = store_dir(tmp_path), FileServer()
    missing = FileServer(status=404)

    def route(request: httpx.Request) -> httpx.Response:
        return (missing if request.url.host == "peer" else good).handle(request)

    src = source(DATA, "http://peer:9100/f", "http://store:8002/f")
    path, seen = fetch(fetcher(store, httpx.MockTransport(route)), src)
    assert path.read_bytes() == DATA and len(missing.requests) == 1
    assert seen[-1].source == "store:8002"


def test_no_source_reachable_is_unavailable_with_each_reason(tmp_path: Path) -> None:
    store = store_dir(tmp_path)
    src = source(DATA, "http://peer:9100/f", "http://store:8002/f")
    with pytest.raises(Unavailable, match=r"peer:9100: HTTP 401.*store:8002: HTTP 401"):
        fetch(fetcher(store, FileServer(status=401), retries=0), src)


def test_a_fetch_without_room_is_refused_with_the_numbers_before_any_byte(
    tmp_path: Path,
) -> None:
    store, server = store_dir(tmp_path, capacity=30_000), FileServer()
    with pytest.raises(ResourceExhausted) as caught:
        fetch(fetcher(store, server, margin_bytes=1000), source())
    message = caught.value.message
    assert f"needs {len(DATA) + 1000} bytes" in message and "30000 bytes free" in message
    assert str(store.root) in message and server.requests == []


def test_room_is_made_from_unused_files_least_recently_used_first(tmp_path: Path) -> None:
    clock = iter(range(100))
    store = store_dir(tmp_path, capacity=3 * len(DATA) + 4096)  # and the index
    store = StoreDir(store.root, clock=lambda: float(next(clock)), disk_free=store._disk_free)
    older, newer, pinned = (bytes([n]) * len(DATA) for n in (1, 2, 3))
    for blob in (older, pinned, newer):
        fetch(fetcher(store, FileServer(blob)), source(blob))
    kept = {hashlib.sha256(pinned).hexdigest()}
    fetch(fetcher(store, FileServer()), source(), keep=kept)
    held = {f.sha256 for f in store.stored_files()}
    assert held == {SHA, hashlib.sha256(newer).hexdigest(), *kept}


def test_cancelling_keeps_the_part_and_a_later_fetch_resumes(tmp_path: Path) -> None:
    store, pause = store_dir(tmp_path), threading.Event()
    server = FileServer(pause=pause)
    f = fetcher(store, server)

    async def cancel_mid_way() -> None:
        task = asyncio.create_task(f.fetch(source(), lambda _: None, set))
        while server.served == 0:
            await asyncio.sleep(0.01)
        task.cancel()
        pause.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_mid_way())
    held = store.part(SHA).stat().st_size
    assert 0 < held < len(DATA) and not store.path(SHA).exists()
    path, _ = fetch(fetcher(store, server), source())
    assert path.read_bytes() == DATA
    assert server.requests[-1].headers["range"] == f"bytes={held}-"


def test_downloads_beyond_max_downloads_wait_for_a_slot(tmp_path: Path) -> None:
    store, pause = store_dir(tmp_path), threading.Event()
    blobs = [bytes([n]) * len(DATA) for n in range(3)]
    servers = {hashlib.sha256(b).hexdigest(): FileServer(b, pause=pause) for b in blobs}

    def route(request: httpx.Request) -> httpx.Response:
        return servers[request.url.path.rsplit("/", 1)[-1]].handle(request)

    f = fetcher(store, httpx.MockTransport(route), max_downloads=2)

    async def three_at_once() -> None:
        srcs = [source(b, f"http://p:1/{hashlib.sha256(b).hexdigest()}") for b in blobs]
        tasks = [asyncio.create_task(f.fetch(s, lambda _: None, set)) for s in srcs]
        deadline = time.monotonic() + 5
        while sum(bool(s.requests) for s in servers.values()) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert sum(bool(s.requests) for s in servers.values()) == 2  # the third waits
        pause.set()
        await asyncio.gather(*tasks)

    asyncio.run(three_at_once())
    assert all(len(s.requests) == 1 for s in servers.values())


def test_an_unverified_file_in_place_is_hashed_before_use(tmp_path: Path) -> None:
    store, server = store_dir(tmp_path), FileServer()
    store.ensure()
    store.path(SHA).write_bytes(DATA)  # copied by hand: not in the index
    assert store.verified(SHA) is None and store.stored_files() == ()
    path, _ = fetch(fetcher(store, server), source())
    assert path.read_bytes() == DATA and server.requests == []
    store.path(SHA).write_bytes(DATA[::-1])  # changed since it was verified
    assert store.verified(SHA) is None
    path, _ = fetch(fetcher(store, server), source())
    assert path.read_bytes() == DATA and len(server.requests) == 1


def test_a_store_dir_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "store").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FailedPrecondition, match="not a directory"):
        fetch(fetcher(store_dir(tmp_path), FileServer()), source())


# ---- a peer's file server ---------------------------------------------------------------------
def peer_with_file(tmp_path: Path) -> StoreDir:
    peer = store_dir(tmp_path / "peer")
    fetch(fetcher(peer, FileServer()), source())
    return peer


def test_a_peer_serves_its_verified_file_to_a_fetching_worker(tmp_path: Path) -> None:
    peer = peer_with_file(tmp_path)
    transport = httpx.WSGITransport(app=StoreFiles(peer, TOKEN))
    mine = store_dir(tmp_path / "mine")
    mine.ensure()
    mine.part(SHA).write_bytes(DATA[:1000])  # and resumes from a peer too
    path, _ = fetch(
        fetcher(mine, transport), source(DATA, f"http://peer:9100/v1/store/files/{SHA}")
    )
    assert path.read_bytes() == DATA


@pytest.mark.parametrize(
    ("headers", "path", "status"),
    [
        ({}, SHA, 401),
        ({"authorization": "Bearer wrong"}, SHA, 401),
        ({"authorization": f"Basic {TOKEN}"}, SHA, 401),
        ({"authorization": f"Bearer {TOKEN}"}, "0" * 64, 404),
        ({"authorization": f"Bearer {TOKEN}"}, "../index.json", 404),
        ({"authorization": f"Bearer {TOKEN}"}, SHA.upper(), 404),
        ({"authorization": f"Bearer {TOKEN}", "range": f"bytes={len(DATA)}-"}, SHA, 416),
        ({"authorization": f"Bearer {TOKEN}", "range": "bytes=-5"}, SHA, 416),
    ],
)
def test_the_peer_file_server_refuses(
    tmp_path: Path, headers: dict[str, str], path: str, status: int
) -> None:
    client = httpx.Client(
        transport=httpx.WSGITransport(app=StoreFiles(peer_with_file(tmp_path), TOKEN))
    )
    reply = client.get(f"http://peer/v1/store/files/{path}", headers=headers)
    assert reply.status_code == status
    if status == 401:
        assert reply.json()["error"]["code"] == "invalid_token"


def test_the_peer_file_server_answers_ranges_and_head(tmp_path: Path) -> None:
    app = StoreFiles(peer_with_file(tmp_path), TOKEN)
    client = httpx.Client(transport=httpx.WSGITransport(app=app))
    url, auth = f"http://peer/v1/store/files/{SHA}", {"authorization": f"Bearer {TOKEN}"}
    whole = client.get(url, headers=auth)
    assert whole.status_code == 200 and whole.content == DATA
    assert whole.headers["accept-ranges"] == "bytes"
    part = client.get(url, headers={**auth, "range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == DATA[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(DATA)}"
    tail = client.get(url, headers={**auth, "range": "bytes=40000-"})
    assert tail.content == DATA[40000:]
    head = client.head(url, headers=auth)
    assert head.headers["content-length"] == str(len(DATA)) and head.content == b""


def test_a_worker_without_a_join_token_serves_no_files(tmp_path: Path) -> None:
    client = httpx.Client(
        transport=httpx.WSGITransport(app=StoreFiles(peer_with_file(tmp_path), None))
    )
    reply = client.get(f"http://peer/v1/store/files/{SHA}", headers={"authorization": "Bearer "})
    assert reply.status_code == 401 and "no cluster join token" in reply.json()["error"]["message"]
