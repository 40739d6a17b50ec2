"""The cluster's secrets on disk: the join token and each worker's node key.

A cluster has one random secret, the join token (as k3s's or Ray's), from
LLAMAHERD_CLUSTER_TOKEN or a file (`cluster_token_file`, created 0600 in a 0700 folder by
`ensure_token_file` where the coordinator runs). Each worker keeps a node key of its own, a
0600 file per node id, to which the coordinator binds the id. Neither ever goes on a command
line, into a URL or into a log line. The gRPC side (metadata, interceptors) is
common.cluster_auth; this module has no gRPC, so settings can use it.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from common.settings import ConfigError

log = logging.getLogger(__name__)

TOKEN_ENV = "LLAMAHERD_CLUSTER_TOKEN"
DEFAULT_TOKEN_FILE = Path("~/.config/llamaherd/cluster-token")
DEFAULT_NODE_KEY_DIR = Path("~/.cache/llamaherd/node-keys")
JOIN_HINT = (
    f"set {TOKEN_ENV} or pass --cluster-token-file PATH (a copy of the coordinator's token file)"
)


# ---- secrets in files -----------------------------------------------------------------------
def new_secret() -> str:
    """256 random bits, URL-safe text (no quoting needed in an env file)."""
    return secrets.token_urlsafe(32)


def ensure_secret_file(path: Path) -> str:
    """The secret in `path`, created (file 0600, new parent folders 0700) when missing.

    Creation is exclusive, so two processes starting at once agree on one secret."""
    path = path.expanduser()
    if not path.exists():
        _make_private_dirs(path.parent)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return read_secret_file(path)
        except OSError as exc:
            raise ConfigError(f"cannot create secret file {path}: {exc.strerror}") from exc
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(new_secret() + "\n")
        log.info("created secret file %s (mode 0600)", path)
    return read_secret_file(path)


def read_secret_file(path: Path) -> str:
    """The secret in `path`; refusals name the file, never its content."""
    path = path.expanduser()
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"secret file {path} is not text") from None
    if not text:
        raise ConfigError(f"secret file {path} is empty")
    if mode & 0o077:
        log.warning("secret file %s is readable by other users: chmod 600 it", path)
    return text


def _make_private_dirs(folder: Path) -> None:
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for part in reversed(missing):
        try:
            part.mkdir(mode=0o700)
        except FileExistsError:
            continue
        except OSError as exc:
            raise ConfigError(f"cannot create folder {part}: {exc.strerror}") from exc


def ensure_token_file(path: Path) -> SecretStr:
    """The cluster token in `path`, generated into a new 0600 file when there is none."""
    return SecretStr(ensure_secret_file(path))


def read_token_file(path: Path) -> SecretStr:
    return SecretStr(read_secret_file(path))


def resolve_token(token: SecretStr | None, token_file: Path | None) -> SecretStr | None:
    """The token a process uses: given outright (environment, config), else from its file."""
    if token is not None and token.get_secret_value().strip():
        return SecretStr(token.get_secret_value().strip())
    if token_file is not None:
        return read_token_file(token_file)
    return None


def node_key(folder: Path, node_id: str) -> str:
    """This worker's node key (created on first use): proves it owns `node_id`."""
    return ensure_secret_file(folder / node_id)


def credential_digest(secret: str) -> bytes:
    """What the coordinator keeps of a node key: its SHA-256, never the key itself."""
    return hashlib.sha256(secret.encode()).digest()


def same_credential(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


class _RefuseTokenFlag(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        parser.error(
            "--cluster-token: the join token is not taken on the command line, where ps and "
            f"shell history show it: {JOIN_HINT}"
        )


def refuse_token_flag(parser: argparse.ArgumentParser) -> None:
    """Makes `--cluster-token VALUE` an error that does not repeat VALUE (without it,
    argparse would take it as an abbreviation of --cluster-token-file)."""
    parser.add_argument("--cluster-token", action=_RefuseTokenFlag, help=argparse.SUPPRESS)


@dataclass(frozen=True)
class TlsFiles:
    """The PEM contents of the cluster CA's certificate and this process's certificate and
    key."""

    ca: bytes
    cert: bytes
    key: bytes

    def __repr__(self) -> str:  # the key is a secret: never in a log line
        return "TlsFiles(...)"

    @classmethod
    def load(cls, ca: Path | None, cert: Path | None, key: Path | None) -> TlsFiles | None:
        """The three files, or None when TLS is off (none given); two of three is an error."""
        given = {"tls_ca": ca, "tls_cert": cert, "tls_key": key}
        if all(path is None for path in given.values()):
            return None
        missing = [name for name, path in given.items() if path is None]
        if missing:
            raise ConfigError(
                f"mutual TLS needs tls_ca, tls_cert and tls_key together; {', '.join(missing)} "
                "missing (see llamaherd certs)"
            )
        contents = []
        for name, path in given.items():
            assert path is not None
            try:
                contents.append(path.expanduser().read_bytes())
            except OSError as exc:
                raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from exc
        return cls(*contents)
