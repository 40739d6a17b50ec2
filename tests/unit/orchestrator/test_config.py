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
