"""Shipped configuration examples stay valid as the settings evolve."""

from __future__ import annotations

import re
from pathlib import Path

from worker.config import WorkerSettings, build_settings

ROOT = Path(__file__).resolve().parents[2]


def test_example_worker_config_is_valid():
    settings = build_settings(ROOT / "deploy" / "worker.example.yaml", environ={})
    assert settings.host == "127.0.0.1"
    assert [m.alias for m in settings.models] == ["gemma-3-270m"]
    assert settings.models[0].is_builtin


def test_example_worker_config_sets_metrics_next_to_the_grpc_port():
    settings = build_settings(ROOT / "deploy" / "worker.example.yaml", environ={})
    assert settings.metrics and settings.metrics_listen_port == settings.port + 1000
    assert settings.telemetry_interval_s == 1


def test_example_worker_config_names_every_setting():
    """Each setting appears in the example, set or commented out; the join token itself only
    through the environment (a config file is no place for it) and the internal split_child
    not at all."""
    text = (ROOT / "deploy" / "worker.example.yaml").read_text()
    unlisted = {"cluster_token", "split_child"}
    missing = [
        name
        for name in WorkerSettings.model_fields
        if name not in unlisted and not re.search(rf"^#?\s*{name}:", text, re.M)
    ]
    assert missing == []
    assert "LLAMAHERD_CLUSTER_TOKEN" in text
