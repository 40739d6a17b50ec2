"""The store's index: which GGUF files the coordinator holds, under which names, in SQLite.

One row per name; several names may share one file (the same sha256). The files themselves
lie next to the index as `<sha256>.gguf`, so a name never becomes a path. The database is in
WAL mode, so the CLI (`llamaherd models add/rm`) writes while the coordinator's file server
and placement read, with or without a coordinator running. Writes that also touch the
files (placing or deleting `<sha256>.gguf`) happen inside one `BEGIN IMMEDIATE` transaction,
so an `rm` never deletes a file that a concurrent `add` of the same content just indexed.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from common.model_settings import SHA256_PATTERN, STORE_NAME_PATTERN

INDEX_FILE = "index.sqlite3"
FILE_SUFFIX = ".gguf"
# PRAGMA user_version of the schema this code writes; an index from a newer llamaherd is
# refused rather than misread.
SCHEMA_VERSION = 1
# The same forms as ModelSource's, which carries them to the workers.
NAME_RE = re.compile(STORE_NAME_PATTERN)
SHA256_RE = re.compile(SHA256_PATTERN)
DEFAULT_STORE_DIR = Path("~/.cache/llamaherd/store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    architecture TEXT NOT NULL,
    parameters INTEGER NOT NULL,
    quantization TEXT NOT NULL,
    n_layers INTEGER NOT NULL,
    context_length INTEGER NOT NULL,
    has_chat_template INTEGER NOT NULL,
    added_unix_s REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS models_by_sha256 ON models (sha256);
"""


def check_name(name: str) -> str:
    """`name` if it is a valid store name; InvalidArgument naming the problem otherwise.

    Names never reach the filesystem (files are named by hash), but they travel to workers
    in `store:NAME` paths and URLs, so anything path-like is refused outright."""
    if not NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"store name {name!r} is not allowed: use 1 to 128 of A-Z a-z 0-9 . _ - "
            "(no slashes or spaces)"
        )
    if ".." in name or name.startswith("."):
        raise InvalidArgument(f"store name {name!r} is not allowed: no leading dot and no '..'")
    return name


def check_sha256(digest: str) -> str:
    """`digest` lowercased if it is 64 hex digits; InvalidArgument otherwise."""
    lowered = digest.strip().lower()
    if not SHA256_RE.fullmatch(lowered):
        raise InvalidArgument(f"{digest!r} is not a sha256 (64 hexadecimal digits)")
    return lowered


@dataclass(frozen=True)
class GgufSummary:
    """What `llamaherd models show` and placement want to know about a file's model."""

    architecture: str
    parameters: int
    quantization: str
    n_layers: int
    context_length: int
    has_chat_template: bool


@dataclass(frozen=True)
class StoredModel:
    """One name in the store and the file it names."""

    name: str
    sha256: str
    size_bytes: int
    summary: GgufSummary
    added_unix_s: float

    def to_json(self) -> dict[str, Any]:
        """The JSON form of `/v1/store/models` and `llamaherd models list --json`."""
        return {
            "name": self.name,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            **asdict(self.summary),
            "added_unix_s": self.added_unix_s,
        }


class StoreIndex:
    """The index of one store directory. Cheap to open; one instance per thread (SQLite
    connections are not shared across threads)."""

    def __init__(self, store_dir: Path, *, create: bool = True) -> None:
        self.store_dir = Path(os.path.expanduser(store_dir))
        if create:
            _make_private_dir(self.store_dir)
        elif not (self.store_dir / INDEX_FILE).is_file():
            raise FailedPrecondition(
                f"no model store at {self.store_dir}: add a model with `llamaherd models add "
                "FILE` first"
            )
        # autocommit mode: transactions are explicit (BEGIN IMMEDIATE) where they matter.
        self._db = sqlite3.connect(
            self.store_dir / INDEX_FILE, timeout=30.0, isolation_level=None,
            check_same_thread=False,
        )  # fmt: skip
        self._db.execute("PRAGMA busy_timeout = 30000")
        self._migrate()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> StoreIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reading ------------------------------------------------------------------------
    def list(self) -> tuple[StoredModel, ...]:
        """Every name, sorted."""
        rows = self._db.execute("SELECT * FROM models ORDER BY name").fetchall()
        return tuple(_model(row) for row in rows)

    def find(self, name: str) -> StoredModel | None:
        """The model of that name, or None."""
        row = self._db.execute("SELECT * FROM models WHERE name = ?", (name,)).fetchone()
        return None if row is None else _model(row)

    def get(self, name: str) -> StoredModel:
        """The model of that name; NotFound listing the names there are."""
        found = self.find(name)
        if found is None:
            names = [m.name for m in self.list()]
            listing = ", ".join(names) if names else "the store is empty"
            raise NotFound(f"no model named {name!r} in the store at {self.store_dir} ({listing})")
        return found

    def has_file(self, sha256: str) -> bool:
        """Whether some name refers to the file with this hash."""
        row = self._db.execute("SELECT 1 FROM models WHERE sha256 = ? LIMIT 1", (sha256,))
        return row.fetchone() is not None

    def file_path(self, sha256: str) -> Path:
        """Where the file with this hash lies (whether or not it is there)."""
        return self.store_dir / (check_sha256(sha256) + FILE_SUFFIX)

    def data_version(self) -> int:
        """Changes whenever another connection (the CLI, say) commits a change: a cheap way
        for a long-lived reader to notice that the index changed."""
        (version,) = self._db.execute("PRAGMA data_version").fetchone()
        return int(version)

    # ---- writing ------------------------------------------------------------------------
    def add(
        self, model: StoredModel, incoming: Path | None = None, *, replace: bool = False
    ) -> StoredModel | None:
        """Indexes `model`, first moving `incoming` (its verified file, in the store
        directory) to `<sha256>.gguf`. Refuses a name already taken unless `replace`;
        returns the model it replaced. A replaced file no other name uses is deleted."""
        check_name(model.name)
        target = self.file_path(model.sha256)
        with self._write() as db:
            old_row = db.execute("SELECT * FROM models WHERE name = ?", (model.name,)).fetchone()
            old = None if old_row is None else _model(old_row)
            if old is not None and not replace:
                raise AlreadyExists(
                    f"the store already has a model named {model.name!r} (sha256 "
                    f"{old.sha256[:12]}…); pass --replace to point the name at the new file, "
                    "or choose another --name"
                )
            if incoming is not None:
                incoming.replace(target)  # the same content under the same name: harmless
            elif not target.is_file():
                raise FailedPrecondition(f"{target} is missing; add the file again")
            db.execute(
                "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _row(model),
            )
            if old is not None and old.sha256 != model.sha256:
                self._drop_unused_file(db, old.sha256)
        return old

    def remove(self, name: str) -> StoredModel:
        """Removes a name; its file goes too when no other name uses it."""
        with self._write() as db:
            row = db.execute("SELECT * FROM models WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound(f"no model named {name!r} in the store at {self.store_dir}")
            model = _model(row)
            db.execute("DELETE FROM models WHERE name = ?", (name,))
            self._drop_unused_file(db, model.sha256)
        return model

    def _drop_unused_file(self, db: sqlite3.Connection, sha256: str) -> None:
        if db.execute("SELECT 1 FROM models WHERE sha256 = ? LIMIT 1", (sha256,)).fetchone():
            return
        self.file_path(sha256).unlink(missing_ok=True)

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front (BEGIN IMMEDIATE) so that concurrent
        writers queue instead of failing half-way."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _migrate(self) -> None:
        db = self._db
        db.execute("PRAGMA journal_mode = WAL")
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise FailedPrecondition(
                f"the model store at {self.store_dir} was written by a newer llamaherd "
                f"(index schema {version}, this one reads {SCHEMA_VERSION}): upgrade llamaherd"
            )
        if version < SCHEMA_VERSION:
            with self._write():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _make_private_dir(path: Path) -> None:
    """The store directory, created 0700 (models may be licensed, and nobody else should
    swap a file under the coordinator)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _row(model: StoredModel) -> tuple[Any, ...]:
    s = model.summary
    return (
        model.name, model.sha256, model.size_bytes, s.architecture, s.parameters,
        s.quantization, s.n_layers, s.context_length, int(s.has_chat_template),
        model.added_unix_s,
    )  # fmt: skip


def _model(row: tuple[Any, ...]) -> StoredModel:
    name, sha256, size, arch, params, quant, layers, ctx, template, added = row
    summary = GgufSummary(arch, params, quant, layers, ctx, bool(template))
    return StoredModel(name, sha256, size, summary, added)


def now_unix_s() -> float:
    """Wall-clock time for `added_unix_s` (a date people read, not a duration)."""
    return time.time()
