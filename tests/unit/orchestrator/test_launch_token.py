"""`llamaherd coordinator` / `up` and the join token: created when missing, read from
LLAMAHERD_CLUSTER_TOKEN, and never printed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from orchestrator.cli import build_parser
from orchestrator.config import build_coordinator_settings
from orchestrator.launch import _join_hint, _settings


def test_the_coordinator_creates_a_private_token_file_and_prints_only_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLAMAHERD_CLUSTER_TOKEN", raising=False)
    monkeypatch.delenv("LLAMAHERD_COORDINATOR_CLUSTER_TOKEN", raising=False)
    path = tmp_path / "llamaherd" / "cluster-token"
    args = build_parser().parse_args(["coordinator", "--cluster-token-file", str(path)])
    settings = _settings(args)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert settings.cluster_token == SecretStr(path.read_text().strip())
    hint = _join_hint(settings, "127.0.0.1:50050")
    assert str(path) in hint and "llamaherd worker --coordinator 127.0.0.1:50050" in hint
    assert path.read_text().strip() not in hint
    assert _settings(args).cluster_token == settings.cluster_token, "kept, not regenerated"


def test_the_coordinator_takes_the_workers_variable_too(tmp_path: Path) -> None:
    env = {"LLAMAHERD_CLUSTER_TOKEN": "shared"}
    path = tmp_path / "token"
    path.write_text("another one\n")
    settings = build_coordinator_settings(environ=env, overrides={"cluster_token_file": path})
    assert settings.cluster_token == SecretStr("shared")
    hint = _join_hint(settings, "10.0.0.1:50050")
    assert "LLAMAHERD_CLUSTER_TOKEN=<" in hint and str(path) not in hint and "shared" not in hint


@pytest.mark.parametrize("command", ["coordinator", "up", "worker", "generate", "models"])
def test_the_token_is_no_flag_and_the_refusal_does_not_repeat_it(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ["hi"] if command == "generate" else []
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, *extra, "--cluster-token", "SEKRIT-VALUE"])
    err = capsys.readouterr().err
    assert "LLAMAHERD_CLUSTER_TOKEN" in err and "SEKRIT" not in err
