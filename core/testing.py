"""Test helpers shared by the apps' browser tests (Playwright driving Debian's chromium).

    from core.testing import chromium_browser, CHROMIUM, browser_login

    @pytest.mark.browser
    @pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed")
    def test_flow(live_server, ...):
        with chromium_browser() as browser:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            browser_login(page, live_server.url, "pm", "secret")
            ...

Not imported by the application; only tests use it.
"""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT_DIR = Path(os.environ.get("SCREENSHOT_DIR", "/tmp/shots"))
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 812}


def chromium_available() -> bool:
    return CHROMIUM.exists()


@contextlib.contextmanager
def chromium_browser() -> Iterator:
    """A headless chromium Browser for the duration of the block.

    Playwright's sync API runs an event loop in this thread, which makes Django refuse ORM
    calls from the test body ("You cannot call this from an async context"); the tests' ORM
    use is synchronous, so that check is switched off while the browser runs."""
    from playwright.sync_api import sync_playwright

    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                yield browser
            finally:
                browser.close()
                _close_connections_opened_in_block()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


def _close_connections_opened_in_block() -> None:
    """While Playwright's loop runs, Django keeps the block's database connections apart from
    the test's own (per context, as in async code), so pytest-django never closes them and
    PostgreSQL then refuses to drop the test database ("being accessed by other users")."""
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close()


def browser_login(page, base_url: str, username: str, password: str, next_path: str = "/"):
    """Logs in through the login page, then lands on `next_path`."""
    page.goto(f"{base_url}/accounts/login/?next={next_path}")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")


def screenshot(page, name: str, *, full_page: bool = True) -> Path:
    """Saves a screenshot under SCREENSHOT_DIR (outside the repository) and returns its path."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path
