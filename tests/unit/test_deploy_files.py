"""Shipped configuration examples stay valid as the settings evolve."""

from __future__ import annotations

from pathlib import Path

from worker.config import build_settings

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
