"""A real worker fetching a store model (the real Gemma GGUF) from a real HTTP server on
loopback: verified, resumed after a cut, refetched after a flipped byte, refused without
room with the numbers, progress visible through ListModels, and the verified file then
served to peers by the worker's own HTTP server (join token required).

The source is a small ThreadingHTTPServer started here with Range support and one-shot
faults (it stands for the coordinator's store or a peer)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from llamaherd.v1 import worker_pb2 as pb
from llamaherd.v1 import worker_pb2_grpc
from support.auth import cluster_token, worker_channel
from support.rpc import TIMEOUT, generate, rpc_error
from support.worker_process import WorkerProcess, start_worker

MiB = 1 << 20


class Source:
    """What the file server serves and how: one-shot faults, a slow start, and a log."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        self.cut_after: int | None = None  # close the connection after this many bytes, once
        self.flip_at: int | None = None  # serve this byte flipped, once
        self.slow_bytes = 0  # the first bytes of a transfer go at about 20 MiB/s
        self.ranges: list[str | None] = []
        self.sent = 0
        self.auth: list[str | None] = []
        self.lock = threading.Lock()


def _handler(source: Source) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

        def do_GET(self) -> None:
            header = self.headers.get("Range")
            with source.lock:
                source.ranges.append(header)
                source.auth.append(self.headers.get("Authorization"))
                cut, source.cut_after = source.cut_after, None
                flip, source.flip_at = source.flip_at, None
            first = int(header.removeprefix("bytes=").rstrip("-")) if header else 0
            self.send_response(206 if header else 200)
            self.send_header("Content-Length", str(source.size - first))
            if header:
                self.send_header("Content-Range", f"bytes {first}-{source.size - 1}/{source.size}")
            self.end_headers()
            sent = 0
            with source.path.open("rb") as held:
                held.seek(first)
                while chunk := held.read(MiB):
                    if flip is not None and first + sent <= flip < first + sent + len(chunk):
                        data = bytearray(chunk)
                        data[flip - first - sent] ^= 0x01
                        chunk = bytes(data)
                    if cut is not None and sent + len(chunk) > cut:
                        self.wfile.write(chunk[: cut - sent])
                        source.sent += cut - sent
                        self.close_connection = True
                        return
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    source.sent += len(chunk)
                    if sent <= source.slow_bytes:
                        time.sleep(0.05)

    return Handler


@pytest.fixture(scope="module")
def source(gemma_path: Path) -> Iterator[tuple[Source, str]]:
    served = Source(gemma_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_port}/v1/store/files/x"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def fetcher_worker(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[WorkerProcess, Path]]:
    models = tmp_path_factory.mktemp("fetch-models")
    config = {"model_dirs": [str(models)], "download_retries": 1}
    process = start_worker(tmp_path_factory.mktemp("fetch-worker"), config)
    yield process, models.resolve() / "store"
    assert process.stop() == 0, process.log_tail()


@pytest.fixture
def fetch_stub(fetcher_worker: tuple[WorkerProcess, Path]) -> Iterator[worker_pb2_grpc.WorkerStub]:
    with worker_channel(fetcher_worker[0].address) as channel:
        yield worker_pb2_grpc.WorkerStub(channel)


@pytest.fixture
def clean(
    source: tuple[Source, str], fetcher_worker: tuple[WorkerProcess, Path]
) -> Iterator[Source]:
    """Each test fetches afresh: the store dir emptied, the source's log cleared."""
    served, _ = source
    served.ranges.clear()
    served.auth.clear()
    served.sent = 0
    yield served
    for leftover in fetcher_worker[1].glob("*.gguf*"):
        leftover.unlink()


@functools.cache
def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def spec(alias: str, path: Path, url: str, **source: Any) -> pb.ModelSpec:
    sha = sha256_of(path)
    fields = {"name": "gemma-q4", "sha256": sha, "size_bytes": path.stat().st_size,
              "urls": [url]} | source  # fmt: skip
    return pb.ModelSpec(alias=alias, path="store:" + fields["name"], n_ctx=256,
                        source=pb.ModelSource(**fields))  # fmt: skip


def load(stub: worker_pb2_grpc.WorkerStub, model: pb.ModelSpec) -> pb.ModelInfo:
    return stub.LoadModel(pb.LoadModelRequest(spec=model), timeout=TIMEOUT).model


def unload(stub: worker_pb2_grpc.WorkerStub, alias: str) -> None:
    stub.UnloadModel(pb.UnloadModelRequest(alias=alias), timeout=TIMEOUT)


def test_a_store_model_is_fetched_with_progress_then_served_and_shared_with_peers(
    fetch_stub: worker_pb2_grpc.WorkerStub,
    fetcher_worker: tuple[WorkerProcess, Path],
    source: tuple[Source, str],
    clean: Source,
    gemma_path: Path,
) -> None:
    worker, store = fetcher_worker
    clean.slow_bytes = 40 * MiB  # about two seconds of visible progress
    model = spec("fetched", gemma_path, source[1])
    with ThreadPoolExecutor(1) as pool:
        loading = pool.submit(load, fetch_stub, model)
        seen: list[pb.DownloadProgress] = []
        while not loading.done():
            for info in fetch_stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).models:
                if info.alias == "fetched" and info.state == pb.MODEL_STATE_DOWNLOADING:
                    seen.append(info.download)
            time.sleep(0.1)
        assert loading.result().state == pb.MODEL_STATE_READY
    moving = [p for p in seen if 0 < p.bytes_done < p.bytes_total]
    assert moving, f"no progress seen while downloading: {seen}"
    assert moving[-1].bytes_total == clean.size and moving[-1].bytes_per_second > 0
    assert moving[-1].source == source[1].split("/")[2] and moving[-1].attempt == 1
    assert clean.auth[0] == f"Bearer {cluster_token().get_secret_value()}"
    assert generate(fetch_stub, "fetched", "Hello", temperature=0, max_tokens=2).final.usage
    sha = model.source.sha256
    assert (store / f"{sha}.gguf").stat().st_size == clean.size
    assert not (store / f"{sha}.gguf.part").exists()

    # The worker now serves the verified file to its peers, with the join token only.
    files = worker.metrics_url.removesuffix("/metrics") + f"/v1/store/files/{sha}"
    token = {"Authorization": f"Bearer {cluster_token().get_secret_value()}"}
    assert httpx.get(files).status_code == 401
    head = httpx.get(files, headers={**token, "Range": "bytes=0-3"})
    assert head.status_code == 206 and head.content == b"GGUF"
    assert head.headers["content-range"] == f"bytes 0-3/{clean.size}"
    unload(fetch_stub, "fetched")


def test_a_cut_download_resumes_from_where_it_was_cut(
    fetch_stub: worker_pb2_grpc.WorkerStub, source: tuple[Source, str], clean: Source,
    gemma_path: Path,
) -> None:  # fmt: skip
    clean.cut_after = 100 * MiB
    assert load(fetch_stub, spec("resumed", gemma_path, source[1])).state == pb.MODEL_STATE_READY
    assert clean.ranges == [None, f"bytes={100 * MiB}-"]
    assert clean.sent == clean.size  # not one byte twice
    unload(fetch_stub, "resumed")


def test_a_flipped_byte_is_caught_and_the_file_fetched_again(
    fetch_stub: worker_pb2_grpc.WorkerStub, source: tuple[Source, str], clean: Source,
    gemma_path: Path, fetcher_worker: tuple[WorkerProcess, Path],
) -> None:  # fmt: skip
    clean.flip_at = 123_456_789
    assert load(fetch_stub, spec("refetched", gemma_path, source[1])).state == pb.MODEL_STATE_READY
    assert clean.ranges == [None, None] and clean.sent == 2 * clean.size
    assert "does not match" in fetcher_worker[0].log_tail(200)
    unload(fetch_stub, "refetched")


def test_a_fetch_without_room_is_refused_with_the_numbers(
    fetch_stub: worker_pb2_grpc.WorkerStub, source: tuple[Source, str], clean: Source,
    gemma_path: Path, fetcher_worker: tuple[WorkerProcess, Path],
) -> None:  # fmt: skip
    huge = 1 << 52  # 4 PiB: no disk here has that
    err = rpc_error(lambda: load(fetch_stub, spec("huge", gemma_path, source[1], size_bytes=huge)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "bytes free" in err.details() and str(fetcher_worker[1]) in err.details()
    assert f"({huge} bytes" in err.details()
    assert clean.ranges == []  # refused before any byte
    models = fetch_stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).models
    assert "huge" not in {m.alias for m in models}


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ({"urls": ["file:///etc/passwd"]}, "not an http"),
        ({"sha256": "ABC"}, "sha256"),
        ({"size_bytes": 0}, "size_bytes"),
        ({"name": "../../etc"}, "name"),
    ],
)
def test_a_bad_source_is_invalid_argument(
    fetch_stub: worker_pb2_grpc.WorkerStub, source: tuple[Source, str], gemma_path: Path,
    bad: dict[str, Any], problem: str,
) -> None:  # fmt: skip
    fields = {"name": "gemma-q4", "sha256": "0" * 64, "size_bytes": 1, "urls": [source[1]]}
    model = pb.ModelSpec(alias="bad", path="store:gemma-q4",
                         source=pb.ModelSource(**(fields | bad)))  # fmt: skip
    err = rpc_error(lambda: load(fetch_stub, model))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in err.details()
