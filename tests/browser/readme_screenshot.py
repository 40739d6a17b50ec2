"""Makes the README's picture of the dashboard (docs/dashboard.png) from a real cluster:
`llamaherd up` with three workers, a minute of chat traffic through the gateway, then the
overview in Debian's Chromium.

    PYTHONPATH=tests .venv/bin/python -m tests.browser.readme_screenshot [--seconds 60]

Needs what `make browser` installs (chromium, the browser extra). Not a test: it asserts
nothing beyond the page being live, and the picture is looked at by a person.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

from tests.browser.cluster import start_up
from tests.browser.conftest import ARGS, CHROMIUM

OUT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
PROMPTS = [
    "Write a haiku about a cluster of small computers.",
    "Name three rivers of Europe.",
    "Explain what a GPU does, in one sentence.",
    "List the planets of the solar system.",
]


def _traffic(base_url: str, stop: threading.Event, lane: int) -> None:
    """One client chatting in a loop, streamed, as the playground does."""
    with httpx.Client(base_url=base_url, timeout=120) as client:
        i = lane
        while not stop.is_set():
            body = {
                "model": "gemma-3-270m",
                "stream": True,
                "max_tokens": 48 + 16 * (i % 3),
                "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            }
            with client.stream("POST", "/v1/chat/completions", json=body) as reply:
                for _ in reply.iter_lines():
                    pass
            i += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="traffic before the picture")
    parser.add_argument("--clients", type=int, default=3, help="concurrent chat clients")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llamaherd-shot-") as tmp:
        cluster = start_up(Path(tmp), 3)
        stop = threading.Event()
        lanes = [
            threading.Thread(target=_traffic, args=(cluster.url, stop, n), daemon=True)
            for n in range(args.clients)
        ]
        try:
            for lane in lanes:
                lane.start()
            time.sleep(args.seconds)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(cluster.dashboard)
                page.wait_for_selector('[data-testid="live"][data-state="live"]')
                page.wait_for_timeout(3000)  # a few updates, so every chart has its points
                OUT.parent.mkdir(exist_ok=True)
                page.screenshot(path=str(OUT), full_page=True)
                browser.close()
        finally:
            stop.set()
            cluster.stop()
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
