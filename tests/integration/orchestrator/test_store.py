"""The model store on a real `llamaherd coordinator`: a file added with the CLI while the
coordinator runs is served by its store actor, with ranges, to the join token or the API
key, and to nobody else."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.cluster import Coordinator, start_coordinator
from support.gguf_files import write_gguf
from support.worker_process import LLAMAHERD, free_port

from common.cluster_secrets import TOKEN_ENV

API_KEY = "store-test-api-key-0123456789abcdef"


@pytest.fixture(scope="module")
def store(
    tmp_path_factory: pytest.TempPathFactory, cluster_token_env: None
) -> Iterator[tuple[Coordinator, str, Path]]:
    workdir = tmp_path_factory.mktemp("store")
    port = free_port()
    # No catalog: the store needs no worker.
    coordinator = start_coordinator(
        workdir, [], "--store-port", str(port),
        env={"LLAMAHERD_COORDINATOR_API_KEY": API_KEY},
    )  # fmt: skip
    try:
        yield coordinator, f"http://127.0.0.1:{port}", workdir / "store"
    finally:
        code = coordinator.stop()
    assert code == 0, coordinator.log_tail()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LLAMAHERD, "models", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_file_added_with_the_cli_is_served_with_ranges(
    store: tuple[Coordinator, str, Path], tmp_path: Path
) -> None:
    coordinator, url, store_dir = store
    source = write_gguf(tmp_path / "tiny.gguf", block_count=3)
    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()

    added = _cli("add", str(source), "--name", "tiny", "--store-dir", str(store_dir), "--json")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["sha256"] == digest

    token = {"Authorization": f"Bearer {os.environ[TOKEN_ENV]}"}
    with httpx.Client(base_url=url, timeout=10) as http:
        # The running store sees what the CLI added (the index is shared through SQLite).
        listing = http.get("/v1/store/models", headers=token).json()["models"]
        assert [(m["name"], m["sha256"], m["n_layers"]) for m in listing] == [("tiny", digest, 3)]

        whole = http.get(f"/v1/store/files/{digest}", headers=token)
        assert whole.status_code == 200 and whole.content == data
        assert whole.headers["accept-ranges"] == "bytes"
        tail = http.get(f"/v1/store/files/{digest}", headers={**token, "Range": "bytes=1000-"})
        assert tail.status_code == 206
        assert tail.headers["content-range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
        assert hashlib.sha256(data[:1000] + tail.content).hexdigest() == digest
        head = http.head(f"/v1/store/files/{digest}", headers=token)
        assert int(head.headers["content-length"]) == len(data)

        # The API key is admitted too; no token, a wrong one, an unknown file are not.
        by_key = http.get("/v1/store/models", headers={"Authorization": f"Bearer {API_KEY}"})
        assert by_key.status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            refused = http.get(f"/v1/store/files/{digest}", headers=headers)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "invalid_token"
            assert data[:64] not in refused.content
        assert http.get(f"/v1/store/files/{'0' * 64}", headers=token).status_code == 404

    removed = _cli("rm", "tiny", "--store-dir", str(store_dir))
    assert removed.returncode == 0, removed.stderr
    with httpx.Client(base_url=url, timeout=10) as http:
        assert http.get(f"/v1/store/files/{digest}", headers=token).status_code == 404
    assert coordinator.alive()


def test_bad_input_is_refused_by_the_cli(
    store: tuple[Coordinator, str, Path], tmp_path: Path
) -> None:
    _, _, store_dir = store
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    cases = {
        ("add", str(text)): "not a valid GGUF file",
        ("add", str(tmp_path)): "not a regular file (a directory)",
        ("show", "missing"): "no model named 'missing'",
        ("import", "file:///etc/passwd"): "only http and https",
        ("add", str(text), "--name", "../../etc"): "is not allowed",
    }
    for args, message in cases.items():
        done = _cli(*args, "--store-dir", str(store_dir))
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
