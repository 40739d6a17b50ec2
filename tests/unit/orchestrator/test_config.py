"""Catalog entries: split_nodes and what it may be combined with; path or store name."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from common.model_settings import ModelSource
from common.settings import ConfigError
from orchestrator.config import CatalogEntry, build_coordinator_settings


def test_split_nodes_defaults_to_splitting_only_when_needed() -> None:
    assert CatalogEntry(alias="m", path="/m.gguf").split_nodes == 0


def test_split_nodes_is_not_sent_to_workers() -> None:
    entry = CatalogEntry(alias="m", path="/m.gguf", split_nodes=3)
    assert "split_nodes" not in entry.load_fields()


@pytest.mark.parametrize("replicas", [0, 1])
def test_a_split_entry_has_at_most_one_replica(replicas: int) -> None:
    assert (
        CatalogEntry(alias="m", path="/m.gguf", split_nodes=2, replicas=replicas).replicas
        == replicas
    )


def test_a_split_entry_with_more_replicas_is_refused() -> None:
    with pytest.raises(ValidationError, match="split_nodes 2 spreads one replica over several"):
        CatalogEntry(alias="m", path="/m.gguf", split_nodes=2, replicas=2)


def test_split_only_when_needed_allows_any_replicas() -> None:
    assert CatalogEntry(alias="m", path="/m.gguf", split_nodes=0, replicas=3).replicas == 3
    assert CatalogEntry(alias="m", path="/m.gguf", split_nodes=1, replicas=3).replicas == 3


def test_a_split_entry_leaves_n_gpu_layers_to_the_plan() -> None:
    with pytest.raises(ValidationError, match="leave it unset"):
        CatalogEntry(alias="m", path="/m.gguf", split_nodes=2, n_gpu_layers=-1)


@pytest.mark.parametrize("split_nodes", [-1, 17])
def test_split_nodes_range(split_nodes: int) -> None:
    with pytest.raises(ValidationError):
        CatalogEntry(alias="m", path="/m.gguf", split_nodes=split_nodes)


def test_only_the_settings_an_entry_sets_are_sent() -> None:
    # The rest are each worker's own defaults (n_threads: its cores), not the coordinator's.
    entry = CatalogEntry(alias="m", path="/m.gguf", n_ctx=2048, replicas=2, labels=("gpu",))
    assert entry.load_fields() == {"alias": "m", "path": "/m.gguf", "n_ctx": 2048}
    assert entry.load_settings().model_fields_set == {"alias", "path", "n_ctx"}


def test_a_setting_changed_in_code_is_sent_too() -> None:
    # The launcher shares the cores among its workers this way.
    entry = CatalogEntry(alias="m", path="/m.gguf").model_copy(update={"n_threads": 2})
    assert entry.load_fields()["n_threads"] == 2


def test_entries_are_checked_as_workers_check_model_settings() -> None:
    with pytest.raises(ValidationError, match=r"n_parallel \(8\) cannot exceed n_batch \(4\)"):
        CatalogEntry(alias="m", path="/m.gguf", n_parallel=8, n_batch=4)


@pytest.mark.parametrize("field", ["rpc_servers", "tensor_split"])
def test_split_settings_are_left_to_the_split_planner(field: str) -> None:
    value = ("b:50100",) if field == "rpc_servers" else (1.0,)
    with pytest.raises(ValidationError, match=f"{field} are chosen by the split planner"):
        CatalogEntry.model_validate({"alias": "m", "path": "/m.gguf", field: value})


# ---- model: NAME (a store model) ---------------------------------------------------------

SHA = "ab" * 32


def source(name: str = "llama-q4") -> ModelSource:
    return ModelSource(
        name=name, sha256=SHA, size_bytes=10, urls=("http://127.0.0.1:8002/v1/store/files/x",)
    )


def test_a_store_name_stands_for_the_path() -> None:
    entry = CatalogEntry.model_validate({"alias": "m", "model": "llama-q4", "n_ctx": 2048})
    assert entry.store_name == "llama-q4"
    assert entry.path == "store:llama-q4"
    # The name is the coordinator's: workers get the path and the source placement chose.
    settings = entry.load_settings(source())
    assert settings.path == "store:llama-q4" and settings.source == source()
    assert settings.model_fields_set == {"alias", "path", "n_ctx", "source"}


def test_a_path_entry_has_no_store_name_and_no_source() -> None:
    entry = CatalogEntry(alias="m", path="/m.gguf")
    assert entry.store_name is None
    assert entry.load_settings().source is None


def test_a_store_entry_is_never_sent_without_its_source() -> None:
    entry = CatalogEntry(alias="m", model="llama-q4")
    with pytest.raises(ValueError, match="store model llama-q4 needs its source"):
        entry.load_settings()
    with pytest.raises(ValueError, match="needs its source"):
        entry.load_settings(source("other"))


def test_path_and_model_together_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"m: give either path .* or model .*, not both"):
        CatalogEntry.model_validate({"alias": "m", "path": "/m.gguf", "model": "llama-q4"})


def test_neither_path_nor_model_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"m: give path \(a GGUF file on the workers\) or"):
        CatalogEntry.model_validate({"alias": "m"})


def test_a_store_path_written_by_hand_is_refused_with_the_fix() -> None:
    with pytest.raises(ValidationError, match="write model: llama-q4 for a store model"):
        CatalogEntry.model_validate({"alias": "m", "path": "store:llama-q4"})


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "a..b", "", "x" * 129, "/abs"])
def test_store_names_with_path_tricks_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="model"):
        CatalogEntry.model_validate({"alias": "m", "model": name})


def test_a_catalog_entry_cannot_carry_its_own_source() -> None:
    with pytest.raises(ValidationError, match="source is chosen by placement"):
        CatalogEntry.model_validate(
            {"alias": "m", "model": "llama-q4", "source": source().model_dump()}
        )


def test_a_store_entry_in_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "coordinator.yaml"
    config.write_text("models:\n  - alias: llama\n    model: llama-q4\n    replicas: 2\n")
    settings = build_coordinator_settings(config, environ={})
    (entry,) = settings.models
    assert (entry.alias, entry.store_name, entry.replicas) == ("llama", "llama-q4", 2)


def test_download_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="assumed_link_bytes_per_second: Input should be gr"):
        build_coordinator_settings(environ={}, overrides={"assumed_link_bytes_per_second": 0})
    with pytest.raises(ConfigError, match="download_timeout_s: Input should be greater"):
        build_coordinator_settings(environ={}, overrides={"download_timeout_s": -1})


def test_the_power_budget_is_off_by_default_and_must_be_positive() -> None:
    assert build_coordinator_settings(environ={}).power_budget_w is None
    env = {"LLAMAHERD_COORDINATOR_POWER_BUDGET_W": "450"}
    assert build_coordinator_settings(environ=env).power_budget_w == 450.0
    for bad in (0, -5):
        with pytest.raises(ConfigError, match="power_budget_w: Input should be greater than 0"):
            build_coordinator_settings(environ={}, overrides={"power_budget_w": bad})


def test_the_help_of_every_coordinator_setting_renders(capsys: pytest.CaptureFixture[str]) -> None:
    # argparse formats each help with %: a bare "95%" in a description broke --help.
    from orchestrator.cli import main

    for command in ("coordinator", "up"):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        assert "--power-budget-w" in capsys.readouterr().out
