"""What a restarted `llamaherd coordinator` decides without Ray: which actors a settings
change replaces (the settings key of each), and the head record it finds them by.
The adoption itself runs against a real Ray in
tests/integration/orchestrator/test_coordinator_restart.py."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from orchestrator import runtime
from orchestrator.config import CatalogEntry, CoordinatorSettings
from orchestrator.runtime import (
    _GATEWAY_FIELDS,
    _PLACEMENT_FIELDS,
    _STATE_FIELDS,
    _STORE_FIELDS,
    HeadRecord,
    _write_head_record,
    read_head_record,
    settings_key,
)

BASE = CoordinatorSettings(cluster_token=SecretStr("t" * 32))
ROLES = {
    "state": _STATE_FIELDS, "placement": _PLACEMENT_FIELDS, "gateway": _GATEWAY_FIELDS,
    "store": _STORE_FIELDS,
}  # fmt: skip


def _replaced(**changes: object) -> set[str]:
    """The actors whose settings key the change alters."""
    changed = BASE.model_copy(update=changes)
    return {
        role
        for role, fields in ROLES.items()
        if settings_key(changed, fields) != settings_key(BASE, fields)
    }


def test_the_same_settings_give_the_same_keys() -> None:
    again = CoordinatorSettings(cluster_token=SecretStr("t" * 32))
    for fields in ROLES.values():
        assert settings_key(again, fields) == settings_key(BASE, fields)


def test_a_new_catalog_or_placement_interval_replaces_placement_only() -> None:
    more = (*BASE.models, CatalogEntry(alias="spare", path="builtin:gemma-3-270m", replicas=0))
    assert _replaced(models=more) == {"placement"}
    assert _replaced(placement_interval_s=7.0) == {"placement"}
    assert _replaced(store_fetches_per_file=3) == {"placement"}


def test_gateway_settings_replace_the_gateways_only() -> None:
    # The model store admits the API key too: a new key restarts it, not the registry.
    assert _replaced(api_key=SecretStr("k" * 32)) == {"gateway", "store"}
    assert _replaced(http_port=9000) == {"gateway"}
    assert _replaced(routing_policy="round_robin") == {"gateway"}


def test_registry_settings_and_the_token_replace_everything() -> None:
    # The others hold the registry's handle: a new registry means new ones too (runtime
    # replaces them all), and their own keys change as well.
    assert _replaced(cluster_token=SecretStr("u" * 32)) == {
        "state", "placement", "gateway", "store"
    }  # fmt: skip
    assert _replaced(registry_port=50051) == {"state", "placement", "gateway"}
    assert _replaced(down_after_s=5.0) == {"state", "placement", "gateway"}


def test_where_the_coordinator_runs_and_records_is_no_actor_s_setting() -> None:
    assert _replaced(state_dir=Path("/elsewhere"), ray_address="auto", gateways_per_node=2) == set()
    assert _replaced(store_import_hosts=("mirror.lan",)) == set()  # the CLI's only


def test_store_settings_replace_the_store_and_placement_only() -> None:
    assert _replaced(store_port=9002) == {"store"}
    assert _replaced(store_dir=Path("/elsewhere")) == {"store", "placement"}


def test_a_key_does_not_reveal_the_token() -> None:
    key = settings_key(BASE, _STATE_FIELDS)
    assert "t" * 8 not in key and len(key) == 32


def test_the_head_record_is_private_and_read_back(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    record = HeadRecord("127.0.0.1:6380", "/tmp/ray/session_x", "2.60.0", 1.0)
    _write_head_record(state_dir / "ray.json", record)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state_dir / "ray.json").stat().st_mode) == 0o600
    assert read_head_record(state_dir) == record
    assert not list(state_dir.glob("*.partial"))


def test_a_missing_or_unreadable_record_means_no_head(tmp_path: Path) -> None:
    assert read_head_record(tmp_path) is None
    (tmp_path / "ray.json").write_text("{not json")
    assert read_head_record(tmp_path) is None
    (tmp_path / "ray.json").write_text('{"address": "127.0.0.1:1"}')  # an older shape
    assert read_head_record(tmp_path) is None


def test_an_upgraded_llamaherd_replaces_every_actor(monkeypatch: pytest.MonkeyPatch) -> None:
    before = {role: settings_key(BASE, fields) for role, fields in ROLES.items()}
    monkeypatch.setattr(runtime, "_code_version", lambda: "99.0.0")
    after = {role: settings_key(BASE, fields) for role, fields in ROLES.items()}
    assert all(before[role] != after[role] for role in ROLES)


def test_the_power_budget_replaces_placement_and_the_gateways() -> None:
    # Placement refuses replicas over it, the gateways refuse requests over it.
    assert _replaced(power_budget_w=500.0) == {"placement", "gateway"}
