"""Portal browser fixtures: one headless Chromium per module, one fresh browser context per test.

Chromium comes from Debian's package (scripts/test.sh installs it); Playwright never downloads a
browser of its own. With CI=true a missing Chromium fails the run instead of skipping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from support.helpers import IN_CI
from support.portal_kit import CHROMIUM, CHROMIUM_ARGS, VIEWPORT

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page


def _unavailable(why: str) -> None:
    if IN_CI:
        pytest.fail(
            f"{why}: CI runs the portal's browser tests (scripts/test.sh installs chromium)"
        )
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (uv sync --all-extras)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport=VIEWPORT, locale="en-US")
    context.set_default_timeout(15_000)
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    page = context.new_page()
    # A page must never break its own Content-Security-Policy or fail a script.
    problems: list[str] = []
    page.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    page.on("pageerror", lambda e: problems.append(str(e)))
    yield page
    assert not problems, f"browser console errors: {problems}"
