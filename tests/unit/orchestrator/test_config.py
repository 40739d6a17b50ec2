"""Catalog entries: split_nodes and what it may be combined with."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from orchestrator.config import CatalogEntry


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
