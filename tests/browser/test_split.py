"""A model split across two hosts, drawn as a bar of layers coloured by node.

The hosts are network namespaces (tests/support/netns.py, root only), as in
tests/integration/orchestrator/test_split_cluster.py: the coordinator in the root namespace
plans the split of the Gemma model over the two workers, and the page must show the same
layer ranges as the gateway's document and `llamaherd status`."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import httpx
import pytest
from support.cluster import Coordinator, start_coordinator, wait_for
from support.netns import network, require_netns
from support.worker_process import LLAMAHERD, WorkerProcess, start_worker

from tests.browser.pages import OpenPage

pytest.importorskip("playwright", reason="the browser tests run through `make browser`")
from playwright.sync_api import expect

ALIAS = "gemma-split"
MODEL = {"path": "builtin:gemma-3-270m", "n_ctx": 512, "n_parallel": 1, "flash_attn": "off"}


@dataclass
class Split:
    coordinator: Coordinator
    workers: dict[str, WorkerProcess]

    @property
    def root(self) -> str:
        return self.coordinator.base_url.removesuffix("/v1")


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Split]:
    require_netns()
    workdir = tmp_path_factory.mktemp("browser-split")
    with pytest.MonkeyPatch.context() as patch, network(2) as net:
        # The join token every process of this cluster inherits, and keys of its own.
        patch.setenv("LLAMAHERD_CLUSTER_TOKEN", secrets.token_urlsafe(32))
        patch.setenv("LLAMAHERD_NODE_KEY_DIR", str(workdir / "node-keys"))
        coordinator = start_coordinator(
            workdir, [{"alias": ALIAS, "split_nodes": 2, **MODEL}], "--host", net.gateway
        )
        workers: dict[str, WorkerProcess] = {}
        try:
            for i, host in enumerate(net.hosts):
                workers[f"host{i}"] = start_worker(
                    workdir, None,
                    "--coordinator", f"{net.gateway}:{coordinator.registry_port}",
                    "--node-id", f"host{i}", "--heartbeat-interval-s", "0.5",
                    name=f"host{i}", host=host,
                )  # fmt: skip
            yield Split(coordinator, workers)
        finally:
            for worker in workers.values():
                worker.stop()
            coordinator.stop()


def served_split(split: Split) -> dict[str, Any] | None:
    """The gateway's layout of the split once its head serves it, else None."""
    state = httpx.get(f"{split.root}/v1/dashboard/state", timeout=10).json()
    for node in state["cluster"]["nodes"]:
        for model in node["status"]["models"]:
            if node["up"] and model["alias"] == ALIAS and model["state"] == "ready":
                found = [s for s in state["splits"] if s["model"] == ALIAS]
                return found[0] if found else None
    return None


def layers(first: int, count: int) -> str:
    """A span as `llamaherd status` writes it."""
    return f"layer {first}" if count == 1 else f"layers {first}-{first + count - 1}"


def test_the_split_bar_shows_each_nodes_layers(split: Split, open_page: OpenPage) -> None:
    layout = wait_for(lambda: served_split(split), 180, "the split to be served")
    spans = [(s["node"], s["first"], s["count"]) for s in layout["spans"]]
    assert len({node for node, _, _ in spans}) == 2, spans

    page, watch = open_page(f"{split.root}/dashboard/")
    expect(page.get_by_test_id("live")).to_have_attribute("data-state", "live", timeout=20_000)
    bar = page.locator(f'[data-testid="split-bar"][data-model="{ALIAS}"]')
    segments = bar.get_by_test_id("split-segment")
    expect(segments).to_have_count(len(spans))
    shown = [
        (s.get_attribute("data-node"), int(s.get_attribute("data-first") or -1),
         int(s.get_attribute("data-count") or -1))
        for s in segments.all()
    ]  # fmt: skip
    assert sorted(shown, key=lambda s: s[1]) == sorted(spans, key=lambda s: s[1])
    # Together they hold every layer once, in order.
    covered = sorted((first, count) for _, first, count in shown)
    assert covered[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in pairwise(covered))
    assert sum(n for _, n in covered) == layout["n_layers"]

    # `llamaherd status` names the same ranges on the head's line.
    status = subprocess.run(
        [LLAMAHERD, "status", "--gateway", split.coordinator.gateway],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    head = layout["head"]
    for node, first, count in shown:
        where = "here (head)" if node == head else f"on {node}"
        assert f"{layers(first, count)} {where}" in status.stdout, status.stdout
    assert watch.problems() == []
