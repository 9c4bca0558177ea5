"""Open a local HTML file in Debian's headless Chromium, driven by Playwright, and log what it does.

Playwright is pointed at the system browser (``executable_path``): its own browser download
(``playwright install``) is never used. Every request the page makes is logged and every one
other than the file itself is aborted, so a page that would fetch anything is caught rather
than silently served.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import ConsoleMessage, Page, Route, sync_playwright

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIEWPORT_WIDTH, VIEWPORT_HEIGHT = 1280, 900


def find_chromium() -> Path | None:
    """Debian's chromium, or None where it is not installed (``apt-get install chromium``)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return Path(found)
    default = Path("/usr/bin/chromium")
    return default if default.exists() else None


@dataclass
class PageLog:
    """What the page did while it was open."""

    requests: list[str] = field(default_factory=list)  # every URL the page asked for, in order
    blocked: list[str] = field(default_factory=list)  # requests aborted: anything but the file itself
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)


@contextlib.contextmanager
def open_page(html_file: Path, profile_dir: Path, chromium: Path) -> Iterator[tuple[Page, PageLog]]:
    """``html_file`` loaded in a fresh profile; yields the page and the log of what it did."""
    url = html_file.resolve().as_uri()
    log = PageLog()

    def route(route: Route) -> None:
        request_url = route.request.url
        if request_url == url or request_url.startswith("data:"):
            route.continue_()
        else:
            log.blocked.append(request_url)
            route.abort()

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            log.console_errors.append(message.text)

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile_dir),
            executable_path=str(chromium),
            headless=True,
            args=list(CHROMIUM_ARGS),
            viewport={"width": VIEWPORT_WIDTH, "height": VIEWPORT_HEIGHT},
            offline=True,
        )
        try:
            context.route("**/*", route)
            page = context.pages[0] if context.pages else context.new_page()
            page.on("console", console)
            page.on("pageerror", lambda error: log.page_errors.append(str(error)))
            page.on("request", lambda request: log.requests.append(request.url))
            page.goto(url, wait_until="load")
            yield page, log
        finally:
            context.close()
