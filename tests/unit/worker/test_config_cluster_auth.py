"""A worker's join-token settings: where a token is required, and where it comes from."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from common.settings import ConfigError
from worker.cli import configure_parser
from worker.config import WorkerSettings, build_settings


def test_a_worker_with_a_coordinator_needs_the_token() -> None:
    with pytest.raises(ValidationError, match="LLAMAHERD_CLUSTER_TOKEN or pass --cluster-token"):
        WorkerSettings(coordinator="10.0.0.1:50050")
    WorkerSettings(coordinator="10.0.0.1:50050", cluster_token=SecretStr("t"))
    WorkerSettings(coordinator="10.0.0.1:50050", cluster_token_file=Path("/etc/token"))


def test_a_worker_beyond_loopback_needs_the_token_or_an_explicit_insecure() -> None:
    with pytest.raises(ValidationError, match="beyond loopback needs the join token"):
        WorkerSettings(host="0.0.0.0")
    WorkerSettings(host="0.0.0.0", insecure=True)
    WorkerSettings(host="0.0.0.0", cluster_token=SecretStr("t"))
    assert WorkerSettings().cluster_token is None, "a loopback worker alone needs none"


def test_the_token_comes_from_llamaherd_cluster_token_and_never_from_a_flag() -> None:
    settings = build_settings(environ={"LLAMAHERD_CLUSTER_TOKEN": "from-env"})
    assert settings.cluster_token == SecretStr("from-env")
    assert "from-env" not in repr(settings) and "from-env" not in str(settings.model_dump())
    import argparse

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--cluster-token", "x"])
    args = parser.parse_args(["--cluster-token-file", "/run/token", "--insecure"])
    assert args.cluster_token_file == "/run/token" and args.insecure


def test_a_missing_token_file_stops_the_worker_naming_the_file(tmp_path: Path) -> None:
    from worker.api.server import WorkerServer

    settings = WorkerSettings(cluster_token_file=tmp_path / "nope")
    with pytest.raises(ConfigError, match="nope"):
        WorkerServer(settings)
