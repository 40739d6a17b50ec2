"""Adding files to the store: local files (linked or copied, hashed once, checked) and
imports from an HTTP(S) mirror (httpx's MockTransport stands in for the network)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest
from support.gguf_files import write_gguf

from common.errors import (
    AlreadyExists,
    InvalidArgument,
    InvalidModelFile,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from orchestrator.store.index import StoreIndex
from orchestrator.store.ingest import add_file, check_import_url, import_url


def SHA_OF(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def index(tmp_path: Path) -> StoreIndex:
    with StoreIndex(tmp_path / "store") as opened:
        yield opened  # type: ignore[misc]


@pytest.fixture
def gguf_file(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "tiny-llama.Q4.gguf")


def _leftovers(index: StoreIndex) -> list[str]:
    return sorted(p.name for p in index.store_dir.iterdir() if p.name.startswith(".incoming"))


def test_add_hashes_links_and_summarises(index: StoreIndex, gguf_file: Path) -> None:
    seen: list[tuple[int, int | None]] = []
    model = add_file(index, gguf_file, progress=lambda done, total: seen.append((done, total)))
    data = gguf_file.read_bytes()
    assert model.name == "tiny-llama.Q4"  # the file name less .gguf
    assert model.sha256 == SHA_OF(data)
    assert model.size_bytes == len(data)
    stored = index.file_path(model.sha256)
    assert stored.stat().st_ino == gguf_file.stat().st_ino  # same filesystem: a hard link
    assert seen[-1] == (len(data), len(data))
    s = model.summary
    assert (s.architecture, s.n_layers, s.context_length) == ("llama", 2, 128)
    assert s.parameters == 32 * 64  # the one tensor, 32 x 64
    assert s.quantization == "F32" and s.has_chat_template is False
    assert index.get("tiny-llama.Q4") == model
    assert _leftovers(index) == []


def test_add_copies_privately_when_asked_not_to_link(index: StoreIndex, gguf_file: Path) -> None:
    model = add_file(index, gguf_file, "copy", link=False)
    stored = index.file_path(model.sha256)
    assert stored.stat().st_ino != gguf_file.stat().st_ino
    assert stored.read_bytes() == gguf_file.read_bytes()
    assert oct(stored.stat().st_mode & 0o777) == oct(0o600)


def test_a_non_gguf_file_is_refused_naming_why(index: StoreIndex, tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("hello, not a model\n" * 10)
    with pytest.raises(InvalidModelFile, match="not the GGUF magic"):
        add_file(index, text)
    assert index.list() == () and _leftovers(index) == []


def test_a_truncated_gguf_is_refused(index: StoreIndex, gguf_file: Path) -> None:
    data = gguf_file.read_bytes()
    gguf_file.write_bytes(data[: len(data) - 100])
    with pytest.raises(InvalidModelFile, match="truncated"):
        add_file(index, gguf_file, "t")


def test_a_directory_is_refused(index: StoreIndex, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"not a regular file \(a directory\)"):
        add_file(index, tmp_path, "d")


def test_a_named_pipe_is_refused_without_blocking(index: StoreIndex, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    with pytest.raises(InvalidArgument, match=r"not a regular file \(a named pipe\)"):
        add_file(index, fifo)


def test_a_missing_file_is_not_found(index: StoreIndex, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        add_file(index, tmp_path / "none.gguf")


def test_a_file_name_that_is_no_store_name_asks_for_one(index: StoreIndex, tmp_path: Path) -> None:
    odd = write_gguf(tmp_path / "my model.gguf")
    with pytest.raises(InvalidArgument, match="pass --name"):
        add_file(index, odd)
    assert add_file(index, odd, "my-model").name == "my-model"


def test_a_taken_name_is_refused_before_hashing(index: StoreIndex, gguf_file: Path) -> None:
    add_file(index, gguf_file, "m")
    hashed: list[int] = []
    with pytest.raises(AlreadyExists, match="--replace"):
        add_file(index, gguf_file, "m", progress=lambda done, total: hashed.append(done))
    assert hashed == []
    assert add_file(index, gguf_file, "m", replace=True).name == "m"


# ---- imports ------------------------------------------------------------------------------
def _mirror(routes: dict[str, httpx.Response]) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        return routes.get(str(request.url), httpx.Response(404))

    return httpx.Client(transport=httpx.MockTransport(handle))


def test_import_downloads_hashes_and_checks(index: StoreIndex, gguf_file: Path) -> None:
    data = gguf_file.read_bytes()
    url = "http://mirror.lan/models/tiny.gguf"
    client = _mirror({url: httpx.Response(200, content=data)})
    seen: list[int] = []
    model = import_url(
        index, url, sha256=SHA_OF(data).upper(), client=client,
        progress=lambda done, total: seen.append(done),
    )  # fmt: skip
    assert (model.name, model.sha256, model.size_bytes) == ("tiny", SHA_OF(data), len(data))
    assert index.file_path(model.sha256).read_bytes() == data
    assert seen[-1] == len(data)
    assert _leftovers(index) == []


def test_an_import_with_another_hash_is_refused(index: StoreIndex, gguf_file: Path) -> None:
    data = gguf_file.read_bytes()
    url = "http://mirror.lan/tiny.gguf"
    client = _mirror({url: httpx.Response(200, content=data)})
    with pytest.raises(InvalidArgument, match="sha256 mismatch"):
        import_url(index, url, sha256="0" * 64, client=client)
    assert index.list() == () and _leftovers(index) == []


def test_an_import_that_is_no_gguf_is_refused_naming_the_url(index: StoreIndex) -> None:
    url = "http://mirror.lan/page.gguf"
    client = _mirror({url: httpx.Response(200, content=b"<html>login</html>" * 4)})
    with pytest.raises(InvalidModelFile, match=r"http://mirror.lan/page.gguf is not a valid GGUF"):
        import_url(index, url, client=client)
    assert _leftovers(index) == []


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://mirror.lan/x.gguf", "/tmp/x.gguf", "gopher://h/x"]
)
def test_only_http_urls_are_imported(url: str) -> None:
    with pytest.raises(InvalidArgument, match="only http and https"):
        check_import_url(url, ())


def test_the_host_allow_list(index: StoreIndex) -> None:
    check_import_url("http://anything.example/x.gguf", ())  # empty: any host
    check_import_url("https://Mirror.LAN:8443/x.gguf", ["mirror.lan"])
    check_import_url("http://10.1.2.3/x.gguf", ["10.0.0.0/8"])
    with pytest.raises(PermissionDenied, match="not in store_import_hosts"):
        check_import_url("http://evil.example/x.gguf", ["mirror.lan", "10.0.0.0/8"])
    with pytest.raises(PermissionDenied):
        import_url(index, "http://192.168.1.1/x.gguf", allowed_hosts=["10.0.0.0/8"])


def test_redirects_are_not_followed(index: StoreIndex) -> None:
    url = "http://mirror.lan/x.gguf"
    moved = httpx.Response(302, headers={"location": "http://elsewhere.example/x.gguf"})
    with pytest.raises(InvalidArgument, match=r"redirects to http://elsewhere\.example"):
        import_url(index, url, client=_mirror({url: moved}))


def test_the_size_cap_holds_with_or_without_a_stated_length(index: StoreIndex) -> None:
    url = "http://mirror.lan/big.gguf"
    stated = _mirror({url: httpx.Response(200, content=b"x" * 5000)})
    with pytest.raises(ResourceExhausted, match="import cap"):
        import_url(index, url, client=stated, max_bytes=1000)

    def unstated() -> httpx.Client:
        def chunks():  # type: ignore[no-untyped-def]
            for _ in range(10):
                yield b"x" * 500

        return _mirror({url: httpx.Response(200, content=chunks())})

    with pytest.raises(ResourceExhausted, match="import cap"):
        import_url(index, url, client=unstated(), max_bytes=1000)
    assert _leftovers(index) == []


def test_an_error_status_is_reported(index: StoreIndex) -> None:
    with pytest.raises(Unavailable, match="answered HTTP 404"):
        import_url(index, "http://mirror.lan/none.gguf", client=_mirror({}))
