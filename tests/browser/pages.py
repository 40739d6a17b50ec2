"""What the browser tests watch on a page, and where its screenshots go."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # playwright is imported only when the suite runs (make browser)
    from playwright.sync_api import Page, Request, Response

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@dataclass
class Watch:
    """What a page did that normal use must not do, every request it made, and how often
    it loaded (a live update must never need a reload)."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # HTTP 4xx/5xx answers, for diagnosis
    loads: int = 0

    def attach(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("requestfailed", self._failed)
        page.on("request", self._requested)
        page.on("load", self._loaded)
        page.on("response", self._answered)

    def _console(self, message: object) -> None:
        from playwright.sync_api import ConsoleMessage

        assert isinstance(message, ConsoleMessage)
        if message.type == "error":
            self.console_errors.append(f"{message.text} ({message.location})")

    def _requested(self, request: Request) -> None:
        self.requests.append(request)

    def _failed(self, request: Request) -> None:
        self.failed_requests.append(f"{request.method} {request.url}: {request.failure}")

    def _answered(self, response: Response) -> None:
        if response.status >= 400:
            self.refused.append(f"{response.status} {response.request.method} {response.url}")

    def _loaded(self, _page: Page) -> None:
        self.loads += 1

    def __str__(self) -> str:
        return "\n".join([*self.problems(), *(f"answered {r}" for r in self.refused)])

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and failed requests so far."""
        return [
            *(f"console error: {e}" for e in self.console_errors),
            *(f"page error: {e}" for e in self.page_errors),
            *(f"failed request: {e}" for e in self.failed_requests),
        ]


# open_page(url, width=1280, height=900) -> (page, watch), in a fresh browser context.
OpenPage = Callable[..., "tuple[Page, Watch]"]


def screenshot(page: Page, name: str) -> Path:
    """A full-page screenshot, artifacts/<name>.png."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
