"""The dashboard of a real `llamaherd up` cluster (two workers serving the embedded Gemma) in
Debian's Chromium: what it shows agrees with `llamaherd status --json`, it follows the
cluster live (a worker joining, a worker killed), the playground streams a reply, and the
page fits a phone. One cluster for the whole module."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.worker_process import WorkerProcess, start_worker

from tests.browser.cluster import UpCluster, start_up
from tests.browser.pages import OpenPage, Watch, screenshot

pytest.importorskip("playwright", reason="the browser tests run through `make browser`")
from playwright.sync_api import Locator, Page, expect

MODEL = "gemma-3-270m"  # what `up` serves by default
LIVE_S = 20_000  # ms: the first snapshot, after Ray and the workers settled
DOWN_WITHIN_S = 3.0  # issue 17: a killed worker shows as down within 3 s, without a reload
PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    up = start_up(tmp_path_factory.mktemp("browser-up"), 2)
    yield up
    code = up.stop()
    assert code == 0, f"llamaherd up did not stop cleanly ({code}):\n{up.output()[-3000:]}"


def open_live(open_page: OpenPage, url: str, **viewport: int) -> tuple[Page, Watch]:
    """Opens the page and waits for its first snapshot; fails with what the page saw."""
    page, watch = open_page(url, **viewport)
    wait_live(page, watch)
    return page, watch


def wait_live(page: Page, watch: Watch) -> None:
    try:
        expect(page.get_by_test_id("live")).to_have_attribute("data-state", "live", timeout=LIVE_S)
    except AssertionError as exc:
        raise AssertionError(f"the page never went live:\n{watch}") from exc


def node_card(page: Page, node: str) -> Locator:
    return page.locator(f'[data-testid="node-card"][data-node="{node}"]')


def percent(text: str) -> float:
    found = PERCENT.search(text)
    assert found, f"no percentage in {text!r}"
    return float(found.group(1))


def ready_replicas(status: dict[str, Any]) -> dict[str, int]:
    """Ready replicas by alias on up nodes, as `llamaherd status --json` reports them."""
    ready: dict[str, int] = {}
    for node in status["nodes"]:
        for model in node["status"]["models"]:
            counted = node["up"] and model["state"] == "ready"
            ready[model["alias"]] = ready.get(model["alias"], 0) + int(counted)
    return ready


def test_the_overview_shows_what_status_reports_with_no_errors(
    cluster: UpCluster, open_page: OpenPage, request: pytest.FixtureRequest
) -> None:
    page, watch = open_page(cluster.url + "/")  # GET / redirects to the dashboard
    assert page.url == cluster.dashboard
    wait_live(page, watch)
    status = cluster.status_json()
    nodes = {n["status"]["node_id"]: n for n in status["nodes"]}
    assert set(nodes) == {"worker-1", "worker-2"}

    expect(page.get_by_test_id("node-card")).to_have_count(len(nodes))
    for node_id, node in nodes.items():
        card = node_card(page, node_id)
        expect(card).to_have_attribute("data-up", "true" if node["up"] else "false")
        expect(card).to_have_attribute("data-kind", node["status"]["hardware"]["kind"])
        expect(card.locator('[data-field="kind"]')).to_contain_text(
            node["status"]["hardware"]["kind"]
        )
        expect(card.locator('svg[data-testid="sparkline"]').first).to_be_visible()
        # CPU and memory move between the two reads: a plausible figure, memory roughly.
        host = node["status"]["telemetry"]["host"]
        cpu = percent(card.locator('[data-field="cpu"]').inner_text())
        assert 0 <= cpu <= 100
        used = 100 * host["memory_used_bytes"] / host["memory_total_bytes"]
        shown = percent(card.locator('[data-field="mem"]').inner_text())
        assert abs(shown - used) < 15, (node_id, shown, used)

    for alias, ready in ready_replicas(status).items():
        row = page.locator(f'[data-testid="model-row"][data-model="{alias}"]')
        expect(row).to_have_attribute("data-ready", str(ready))
        for node_id, node in nodes.items():
            for model in node["status"]["models"]:
                if model["alias"] == alias:
                    replica = row.locator(f'[data-testid="replica"][data-node="{node_id}"]')
                    expect(replica).to_have_attribute("data-state", model["state"])
    assert ready_replicas(status) == {MODEL: 2}

    # A node's own page, by its link, without leaving the page.
    node_card(page, "worker-1").get_by_test_id("node-link").click()
    expect(page.locator('[data-testid="node-page"][data-node="worker-1"]')).to_be_visible()
    screenshot(page, f"{request.node.name}-node")
    page.get_by_test_id("nav-overview").click()
    expect(node_card(page, "worker-2")).to_be_visible()
    assert watch.loads == 1
    assert watch.problems() == []


def test_a_joining_worker_appears_and_a_killed_one_turns_down_live(
    cluster: UpCluster, open_page: OpenPage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page, watch = open_live(open_page, cluster.dashboard)
    monkeypatch.setenv("LLAMAHERD_NODE_KEY_DIR", str(tmp_path / "node-keys"))
    late: WorkerProcess = start_worker(
        tmp_path, None, "--coordinator", cluster.registry, "--node-id", "late-1",
        "--heartbeat-interval-s", "0.5", "--cluster-token-file", str(cluster.token_file),
        name="late-1",
    )  # fmt: skip
    try:
        card = node_card(page, "late-1")
        expect(card).to_have_attribute("data-up", "true", timeout=30_000)
        joined = page.locator('[data-testid="event"][data-kind="node_joined"]', has_text="late-1")
        expect(joined).to_be_visible()
        late.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        late.process.wait()
        expect(card).to_have_attribute("data-up", "false", timeout=DOWN_WITHIN_S * 1000)
        took = time.monotonic() - killed
        down = page.locator('[data-testid="event"][data-kind="node_down"]', has_text="late-1")
        expect(down.first).to_be_visible()
        print(f"late-1 shown down {took:.2f} s after SIGKILL")
    finally:
        late.stop()
    assert watch.loads == 1, "the page reloaded"
    assert took <= DOWN_WITHIN_S
    assert watch.problems() == []


def test_the_playground_streams_a_reply_and_names_the_serving_node(
    cluster: UpCluster, open_page: OpenPage
) -> None:
    page, watch = open_live(open_page, cluster.dashboard)
    page.get_by_test_id("nav-playground").click()
    page.get_by_test_id("pg-model").select_option(MODEL)
    page.get_by_test_id("pg-max-tokens").fill("48")
    page.get_by_test_id("pg-temperature").fill("0")
    page.get_by_test_id("pg-input").fill("Write a short story about a cat who learns to fly.")
    # Records the reply's length at every change of the page, and whether the reply's stats
    # (shown once it finished) were there yet: a streamed reply grows while they are not.
    page.evaluate(
        """() => {
        window.__lengths = [];
        new MutationObserver(() => {
            const replies = document.querySelectorAll(
                '[data-testid="pg-message"][data-role="assistant"]');
            const last = replies[replies.length - 1];
            const done = document.querySelector('[data-testid="pg-stats"]') !== null;
            if (last) window.__lengths.push([last.textContent.trim().length, done]);
        }).observe(document.body, {subtree: true, childList: true, characterData: true});
    }"""
    )
    page.get_by_test_id("pg-send").click()
    stats = page.get_by_test_id("pg-stats")
    expect(stats).to_be_visible(timeout=60_000)
    lengths: list[tuple[int, bool]] = page.evaluate("window.__lengths")
    growing = {n for n, done in lengths if n > 0 and not done}
    assert len(growing) >= 2, f"the reply did not grow while streaming: {lengths}"
    reply = page.locator('[data-testid="pg-message"][data-role="assistant"]').last
    assert reply.inner_text().strip()
    assert len(reply.inner_text().strip()) >= max(growing)

    nodes = {n["status"]["node_id"] for n in cluster.status_json()["nodes"]}
    assert stats.get_attribute("data-node") in nodes
    ttft_ms = float(stats.get_attribute("data-ttft-ms") or "nan")
    tps = float(stats.get_attribute("data-tps") or "nan")
    assert 0 < ttft_ms < 60_000 and tps > 0, (ttft_ms, tps)
    expect(stats).to_contain_text(str(stats.get_attribute("data-node")))
    assert watch.problems() == []


def test_a_phone_sized_page_never_scrolls_sideways(
    cluster: UpCluster, open_page: OpenPage, request: pytest.FixtureRequest
) -> None:
    page, watch = open_live(open_page, cluster.dashboard, width=390, height=844)
    expect(node_card(page, "worker-1")).to_be_visible()
    assert_no_sideways_scroll(page, "overview")
    screenshot(page, f"{request.node.name}-overview")
    page.get_by_test_id("nav-playground").click()
    expect(page.get_by_test_id("pg-input")).to_be_visible()
    assert_no_sideways_scroll(page, "playground")
    assert watch.problems() == []


# Elements that stick out of the viewport sideways, unless a container that scrolls or clips
# sideways holds them (a wide table in a scrolling box is fine; text cut off by the screen's
# edge is not).
STICKING_OUT = """() => {
    const width = window.innerWidth, out = [];
    for (const el of document.body.querySelectorAll("*")) {
        const box = el.getBoundingClientRect();
        if (box.width === 0 || (box.left >= -0.5 && box.right <= width + 0.5)) continue;
        let up = el.parentElement, held = false;
        for (; up && up !== document.body; up = up.parentElement) {
            if (getComputedStyle(up).overflowX !== "visible") { held = true; break; }
        }
        if (!held) out.push(`${el.tagName.toLowerCase()}.${el.getAttribute("class") || ""}`
            + ` "${(el.textContent || "").trim().slice(0, 30)}" ${box.left}..${box.right}`);
    }
    return out;
}"""


def assert_no_sideways_scroll(page: Page, what: str) -> None:
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the {what} is {width[0]} px wide in a {width[1]} px viewport"
    out = page.evaluate(STICKING_OUT)
    assert not out, f"the {what} has elements beyond the viewport's edges:\n" + "\n".join(out)
