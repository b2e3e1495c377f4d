"""The compact usage page for an iframe: framed only by the origins in
settings.DASHBOARD_EMBED_ORIGINS; every other page keeps refusing frames."""

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.urls import reverse

from core.testing import DESKTOP, chromium_available, chromium_browser, screenshot

from .test_portal import path_of, portal_link

EMBED = reverse("dashboard:embed")
ALLOWED = "https://app.example.com"


@pytest.fixture
def embeddable(settings):
    settings.DASHBOARD_EMBED_ORIGINS = [ALLOWED, "http://localhost:3000"]
    return settings


def frame_ancestors(response) -> str:
    policy = response["Content-Security-Policy"]
    return next(p.strip() for p in policy.split(";") if p.strip().startswith("frame-ancestors"))


def test_the_embed_page_shows_the_customers_usage_compactly(client_a, world, embeddable):
    response = client_a.get(EMBED)

    html = response.content.decode()
    assert response.status_code == 200
    assert "Acme" in html and "Storage" in html and "85 GB" in html
    assert 'class="topbar"' not in html  # no site chrome inside someone else's page
    assert "Globex" not in html


def test_only_the_listed_origins_may_frame_it(client_a, world, embeddable):
    response = client_a.get(EMBED)

    assert frame_ancestors(response) == f"frame-ancestors {ALLOWED} http://localhost:3000"
    assert "X-Frame-Options" not in response


def test_every_other_page_still_refuses_frames(client_a, world, embeddable):
    for url in (reverse("dashboard:overview"), reverse("dashboard:invoices")):
        response = client_a.get(url)
        assert frame_ancestors(response) == "frame-ancestors 'none'"
        assert response["X-Frame-Options"] == "DENY"


def test_with_no_origin_configured_the_embed_page_refuses_frames(client_a, world, settings):
    settings.DASHBOARD_EMBED_ORIGINS = []
    response = client_a.get(EMBED)
    assert frame_ancestors(response) == "frame-ancestors 'none'"
    assert response["X-Frame-Options"] == "DENY"


def test_signed_out_it_says_so_instead_of_a_login_form(client, world, embeddable):
    response = client.get(EMBED)
    assert response.status_code == 403
    assert "session has ended" in response.content.decode()


def test_a_portal_link_with_view_embed_lands_on_the_embed_page(
    client, world, runtime_api, embeddable
):
    link = portal_link(runtime_api)
    response = client.get(path_of(link["url"]) + "?view=embed")
    assert response.status_code == 302 and response["Location"] == EMBED
    assert "Acme" in client.get(EMBED).content.decode()


@contextlib.contextmanager
def framing_page(frame_src: str):
    """A page on its own origin (http://localhost:<free port>) that frames `frame_src`."""
    body = (
        "<!doctype html><title>The business's app</title><h1>Your account</h1>"
        f'<iframe id="usage" src="{frame_src}" width="900" height="500"></iframe>'
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.browser
@pytest.mark.skipif(not chromium_available(), reason="chromium is not installed")
def test_in_a_browser_an_allowed_origin_frames_it_and_another_cannot(
    live_server, world, runtime_api, settings
):
    settings.SITE_URL = live_server.url
    allowed_link = portal_link(runtime_api)["url"] + "?view=embed"
    refused_link = portal_link(runtime_api)["url"] + "?view=embed"

    with (
        framing_page(allowed_link) as allowed_origin,
        framing_page(refused_link) as refused_origin,
        chromium_browser() as browser,
    ):
        settings.DASHBOARD_EMBED_ORIGINS = [allowed_origin]

        page = browser.new_page(viewport=DESKTOP)
        page.goto(allowed_origin)
        frame = page.frame_locator("#usage")
        frame.locator("#embed-cards").wait_for()
        assert "Storage" in frame.locator("#embed-cards").inner_text()
        assert "Acme" in frame.locator("h1").inner_text()
        screenshot(page, "browser-embed-allowed")

        refused = browser.new_context().new_page()
        refusals = []
        refused.on("console", lambda message: refusals.append(message.text))
        refused.goto(refused_origin)
        refused.wait_for_timeout(1500)
        child = next(f for f in refused.frames if f != refused.main_frame)
        assert "/dashboard/embed/" not in (child.url or "") or not child.content().count("Storage")
        assert any("frame-ancestors" in text for text in refusals), refusals
        screenshot(refused, "browser-embed-refused")
