"""The store's index: names, rows, shared files, schema versions (a real SQLite in tmp)."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from orchestrator.store.index import (
    INDEX_FILE,
    SCHEMA_VERSION,
    GgufSummary,
    StoredModel,
    StoreIndex,
    check_name,
    check_sha256,
)

SUMMARY = GgufSummary("llama", 2048, "Q4_K_M", 2, 128, False)
JSON_FIELDS = {
    "name", "sha256", "size_bytes", "architecture", "parameters", "quantization", "n_layers",
    "context_length", "has_chat_template", "added_unix_s",
}  # fmt: skip


def _incoming(index: StoreIndex, content: bytes) -> tuple[Path, str]:
    import hashlib

    path = index.store_dir / f".incoming-{hashlib.md5(content).hexdigest()}"
    path.write_bytes(content)
    return path, hashlib.sha256(content).hexdigest()


def _add(index: StoreIndex, name: str, content: bytes, replace: bool = False) -> StoredModel:
    path, digest = _incoming(index, content)
    model = StoredModel(name, digest, len(content), SUMMARY, 1700000000.0)
    index.add(model, path, replace=replace)
    return model


@pytest.mark.parametrize(
    "name", ["", "..", "../etc", "a/b", "/abs", ".hidden", "a..b", "a b", "x" * 129, "a\n", "é"]
)
def test_path_tricks_and_bad_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match="store name"):
        check_name(name)


def test_a_valid_name_passes() -> None:
    assert check_name("llama-3-8b.Q4_K_M") == "llama-3-8b.Q4_K_M"


def test_sha256_is_lowercased_and_checked() -> None:
    assert check_sha256("AB" * 32) == "ab" * 32
    with pytest.raises(InvalidArgument, match="64 hexadecimal"):
        check_sha256("ab" * 31)


def test_the_store_dir_is_private_and_the_index_in_wal_mode(tmp_path: Path) -> None:
    store = tmp_path / "deep" / "store"
    with StoreIndex(store):
        pass
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    with sqlite3.connect(store / INDEX_FILE) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def test_add_list_show(tmp_path: Path) -> None:
    with StoreIndex(tmp_path) as index:
        model = _add(index, "m1", b"one")
        assert index.list() == (model,)
        assert index.get("m1") == model
        assert (tmp_path / f"{model.sha256}.gguf").read_bytes() == b"one"
        assert index.has_file(model.sha256)
        assert set(model.to_json()) == JSON_FIELDS


def test_an_unknown_name_is_a_clear_error(tmp_path: Path) -> None:
    with StoreIndex(tmp_path) as index:
        _add(index, "m1", b"one")
        with pytest.raises(NotFound, match=r"no model named 'nope' .*\(m1\)"):
            index.get("nope")
        with pytest.raises(NotFound, match="no model named 'nope'"):
            index.remove("nope")


def test_a_taken_name_is_refused_unless_replaced(tmp_path: Path) -> None:
    with StoreIndex(tmp_path) as index:
        old = _add(index, "m", b"old")
        with pytest.raises(AlreadyExists, match="--replace"):
            _add(index, "m", b"new")
        assert index.get("m") == old
        new = _add(index, "m", b"new", replace=True)
        assert index.get("m") == new
        # The old file is no one's any more: it goes.
        assert not (tmp_path / f"{old.sha256}.gguf").exists()
        assert sorted(p.name for p in tmp_path.glob("*.gguf")) == [f"{new.sha256}.gguf"]


def test_a_file_shared_by_two_names_stays_until_the_last_goes(tmp_path: Path) -> None:
    with StoreIndex(tmp_path) as index:
        a = _add(index, "a", b"same")
        _add(index, "b", b"same")
        file = tmp_path / f"{a.sha256}.gguf"
        index.remove("a")
        assert file.exists()
        index.remove("b")
        assert not file.exists()
        assert index.list() == ()


def test_an_index_from_a_newer_llamaherd_is_refused(tmp_path: Path) -> None:
    with StoreIndex(tmp_path):
        pass
    with sqlite3.connect(tmp_path / INDEX_FILE) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(FailedPrecondition, match="newer llamaherd"):
        StoreIndex(tmp_path)


def test_opening_a_missing_store_without_create_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="llamaherd models add"):
        StoreIndex(tmp_path / "none", create=False)


def test_a_reader_sees_another_connections_changes(tmp_path: Path) -> None:
    with StoreIndex(tmp_path) as reader, StoreIndex(tmp_path) as writer:
        before = reader.data_version()
        assert reader.data_version() == before
        _add(writer, "m", b"x")
        assert reader.data_version() != before
        assert [m.name for m in reader.list()] == ["m"]
