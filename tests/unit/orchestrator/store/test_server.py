"""The store's file service in process (Starlette's TestClient): token auth, ranges, HEAD,
unknown hashes, the listing."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient
from support.gguf_files import write_gguf

from orchestrator.store.index import StoredModel, StoreIndex
from orchestrator.store.ingest import add_file
from orchestrator.store.server import BearerTokens, build_store_app, store_base_url

TOKEN, API_KEY = "join-token-1234", "api-key-5678"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[tuple[TestClient, StoredModel, bytes]]:
    source = write_gguf(tmp_path / "tiny.gguf")
    with StoreIndex(tmp_path / "store") as index:
        model = add_file(index, source)
        with TestClient(build_store_app(index, [TOKEN, API_KEY])) as client:
            yield client, model, source.read_bytes()


def _file_url(model: StoredModel) -> str:
    return f"/v1/store/files/{model.sha256}"


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN])
def test_no_or_a_wrong_token_is_401(
    stored: tuple[TestClient, StoredModel, bytes], header: str | None
) -> None:
    client, model, _ = stored
    headers = {} if header is None else {"Authorization": header}
    for path in (_file_url(model), "/v1/store/models"):
        response = client.get(path, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_token"
        assert TOKEN not in response.text


def test_the_join_token_or_the_api_key_is_admitted(
    stored: tuple[TestClient, StoredModel, bytes],
) -> None:
    client, model, data = stored
    for key in (TOKEN, API_KEY):
        response = client.get(_file_url(model), headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200
        assert response.content == data
        assert response.headers["accept-ranges"] == "bytes"
        assert int(response.headers["content-length"]) == len(data)


def test_ranges(stored: tuple[TestClient, StoredModel, bytes]) -> None:
    client, model, data = stored
    size = len(data)
    tail = client.get(_file_url(model), headers={**AUTH, "Range": "bytes=100-"})
    assert tail.status_code == 206
    assert tail.content == data[100:]
    assert tail.headers["content-range"] == f"bytes 100-{size - 1}/{size}"
    middle = client.get(_file_url(model), headers={**AUTH, "Range": "bytes=5-9"})
    assert (middle.status_code, middle.content) == (206, data[5:10])
    # A resumed download's hash over the two parts is the file's.
    assert hashlib.sha256(data[:100] + tail.content).hexdigest() == model.sha256


def test_a_range_past_the_end_is_416(stored: tuple[TestClient, StoredModel, bytes]) -> None:
    client, model, data = stored
    response = client.get(_file_url(model), headers={**AUTH, "Range": f"bytes={len(data)}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(data)}"


def test_head_has_the_length_and_no_body(stored: tuple[TestClient, StoredModel, bytes]) -> None:
    client, model, data = stored
    response = client.head(_file_url(model), headers=AUTH)
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(data)
    assert response.content == b""


@pytest.mark.parametrize("digest", ["0" * 64, "not-a-hash", "..%2F..%2Fetc%2Fpasswd"])
def test_an_unknown_hash_is_404(stored: tuple[TestClient, StoredModel, bytes], digest: str) -> None:
    client, _, _ = stored
    response = client.get(f"/v1/store/files/{digest}", headers=AUTH)
    assert response.status_code == 404


def test_the_listing(stored: tuple[TestClient, StoredModel, bytes]) -> None:
    client, model, _ = stored
    response = client.get("/v1/store/models", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"models": [model.to_json()]}


def test_a_store_without_a_token_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one token"):
        BearerTokens(Starlette(), ["", ""])


def test_the_base_url() -> None:
    assert store_base_url("127.0.0.1", 8002) == "http://127.0.0.1:8002"
    assert store_base_url("::1", 8002) == "http://[::1]:8002"
    assert not store_base_url("0.0.0.0", 8002).startswith("http://0.0.0.0")
