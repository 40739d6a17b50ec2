"""The coordinator's store settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator.config import CoordinatorSettings, build_coordinator_settings


def test_the_default_store_dir_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Placement opens the index at the path as given: a '~' left in it finds nothing.
    monkeypatch.setenv("HOME", str(tmp_path))
    assert CoordinatorSettings().store_dir == tmp_path / ".cache/llamaherd/store"


def test_store_settings_from_the_environment(tmp_path: Path) -> None:
    env = {
        "LLAMAHERD_COORDINATOR_STORE_DIR": str(tmp_path / "s"),
        "LLAMAHERD_COORDINATOR_STORE_PORT": "0",
    }
    settings = build_coordinator_settings(None, env)
    assert (settings.store_dir, settings.store_port) == (tmp_path / "s", 0)
    assert settings.store_import_hosts == ()  # any http(s) host


def test_a_bad_store_port_is_refused() -> None:
    with pytest.raises(ValidationError, match="store_port"):
        CoordinatorSettings(store_port=70000)
