"""The browser suite: Playwright driving Debian's Chromium (`/usr/bin/chromium`, never a
browser a tool downloaded) against real clusters, through the dashboard's `data-testid` hooks.

Runs only through `make browser`, which installs Chromium (as root) and Playwright and sets
LLAMAHERD_BROWSER=1; skipped elsewhere with the reason, so `make test` collects it quickly.
Every test leaves a full-page screenshot in tests/browser/artifacts/<test>.png (git-ignored),
taken whether it passed or failed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.browser.pages import OpenPage, Watch, screenshot

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

RUN_ENV = "LLAMAHERD_BROWSER"
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]
HERE = Path(__file__).resolve().parent
SKIP_REASON = "the browser tests run through `make browser` (it installs Chromium and Playwright)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(RUN_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is missing: apt-get install -y chromium (make browser does, as root)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[OpenPage]:
    """Opens pages, each in a fresh browser context (its own sessionStorage); at teardown
    saves the last one's full-page screenshot as artifacts/<test>.png."""
    contexts: list[BrowserContext] = []
    pages: list[Page] = []

    def open_(url: str, width: int = 1280, height: int = 900) -> tuple[Page, Watch]:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        watch = Watch()
        watch.attach(page)
        pages.append(page)
        page.goto(url)
        return page, watch

    yield open_
    try:
        if pages:
            screenshot(pages[-1], request.node.name)
    finally:
        for context in contexts:
            context.close()
