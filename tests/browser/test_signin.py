"""A cluster with an API key: the dashboard shows nothing until it is given the key, refuses
a wrong one, keeps the right one for the tab's session (sessionStorage, so a reload stays
signed in), and never puts it in a URL. `up` reads the key from its environment."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import pytest

from tests.browser.cluster import UpCluster, start_up
from tests.browser.pages import OpenPage, screenshot

pytest.importorskip("playwright", reason="the browser tests run through `make browser`")
from playwright.sync_api import expect

LIVE_MS = 20_000


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    up = start_up(
        tmp_path_factory.mktemp("browser-key"), 1, api_key="dash-" + secrets.token_urlsafe(16)
    )
    yield up
    assert up.stop() == 0, up.output()[-3000:]
    assert up.api_key is not None
    assert up.api_key not in up.output()
    for log in up.workdir.glob("*.log"):
        assert up.api_key not in log.read_text(errors="replace"), log


def test_the_page_asks_for_the_key_refuses_a_wrong_one_and_keeps_the_right_one(
    keyed: UpCluster, open_page: OpenPage, request: pytest.FixtureRequest
) -> None:
    assert keyed.api_key is not None
    page, watch = open_page(keyed.dashboard)
    signin = page.get_by_test_id("signin")
    live = page.get_by_test_id("live")
    # Nothing of the cluster's: no node, no model, no event.
    hooks = ("node-card", "model-row", "event")
    cards = page.locator(", ".join(f'[data-testid="{hook}"]' for hook in hooks))
    expect(signin).to_be_visible(timeout=LIVE_MS)
    expect(live).to_have_attribute("data-state", "signed-out")
    expect(cards).to_have_count(0)

    page.get_by_test_id("api-key").fill("not-" + keyed.api_key)
    page.get_by_test_id("signin-submit").click()
    expect(page.get_by_test_id("signin-error")).to_have_text(re.compile(r"\S"))
    expect(signin).to_be_visible()
    expect(live).to_have_attribute("data-state", "signed-out")
    expect(cards).to_have_count(0)
    screenshot(page, f"{request.node.name}-refused")

    page.get_by_test_id("api-key").fill(keyed.api_key)
    page.get_by_test_id("signin-submit").click()
    expect(live).to_have_attribute("data-state", "live", timeout=LIVE_MS)
    expect(signin).to_be_hidden()
    card = page.locator('[data-testid="node-card"][data-node="worker-1"]')
    expect(card).to_have_attribute("data-up", "true")

    page.reload()  # the tab's session keeps the key
    expect(live).to_have_attribute("data-state", "live", timeout=LIVE_MS)
    expect(signin).to_be_hidden()
    expect(card).to_have_attribute("data-up", "true")

    urls = [r.url for r in watch.requests]
    assert not [url for url in urls if keyed.api_key in url]
    # ...and it went where it belongs: the data requests carried it as a bearer token.
    data = [r for r in watch.requests if "/v1/dashboard/" in r.url]
    assert data, urls
    bearer = f"Bearer {keyed.api_key}"
    assert any(r.all_headers().get("authorization") == bearer for r in data), urls
