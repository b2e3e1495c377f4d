"""Portal sessions (DESIGN.md "Letting end customers in from the business's own app"): the
business's app asks for a link; the link, opened once within its life in any browser, shows
that one customer's dashboard and nothing else."""

import datetime as dt
from urllib.parse import urlsplit

import pytest
from django.utils import timezone

from core.testing import DESKTOP, chromium_available, chromium_browser, screenshot
from dashboard.models import PortalSession


def portal_link(api, external_id="acme", **body) -> dict:
    response = api.post(f"/api/v1/customers/{external_id}/portal-sessions", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def path_of(url: str) -> str:
    return urlsplit(url).path


def test_a_runtime_key_gets_a_single_use_link_that_lives_five_minutes(world, runtime_api, settings):
    settings.SITE_URL = "https://billing.example.com"
    before = timezone.now()

    body = portal_link(runtime_api, return_url="https://app.example.com/billing")

    assert body["url"].startswith("https://billing.example.com/dashboard/portal/")
    expires = dt.datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert dt.timedelta(seconds=299) <= expires - before <= dt.timedelta(seconds=301)
    stored = PortalSession.objects.get()
    assert stored.customer == world.a and stored.return_url == "https://app.example.com/billing"
    assert path_of(body["url"]).split("/")[-2] not in stored.token_hash  # only the hash is kept


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"return_url": "javascript:alert(1)"}, 400, "return_url"),
        ({"return_url": "ftp://files.example.com/"}, 400, "return_url"),
        ({"return_url": "/relative/path"}, 400, "return_url"),
        ({"return_url": 7}, 400, "return_url"),
        ({"return_url": "https://x.example/" + "a" * 2000}, 400, "return_url"),
    ],
)
def test_a_return_url_that_is_not_http_is_refused(world, runtime_api, body, status, field):
    response = runtime_api.post("/api/v1/customers/acme/portal-sessions", body, format="json")
    assert response.status_code == status
    assert list(response.json()["error"]["details"]) == [field]
    assert PortalSession.objects.count() == 0


def test_an_unknown_customer_is_404(world, runtime_api):
    response = runtime_api.post("/api/v1/customers/nobody/portal-sessions", {}, format="json")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "customer_not_found"


def test_the_link_opens_that_customers_dashboard_once(world, runtime_api, client):
    link = portal_link(runtime_api, return_url="https://app.example.com/billing")

    opened = client.get(path_of(link["url"]), follow=True)

    assert opened.status_code == 200
    page = opened.content.decode()
    assert world.a.name in page and world.b.name not in page
    assert 'href="https://app.example.com/billing"' in page  # the way back to the app
    assert opened.redirect_chain[-1][0] == "/dashboard/"
    # Used once: the same link again is the expired page, in any browser.
    again = client.get(path_of(link["url"]))
    assert again.status_code == 403 and "This link has expired" in again.content.decode()


def test_an_expired_or_unknown_link_is_a_403_page_and_signs_nobody_in(world, runtime_api, client):
    link = portal_link(runtime_api)
    PortalSession.objects.update(expires_at=timezone.now() - dt.timedelta(seconds=1))

    for path in (path_of(link["url"]), "/dashboard/portal/not-a-token/"):
        response = client.get(path)
        assert response.status_code == 403
        assert "This link has expired" in response.content.decode()
    assert client.get("/dashboard/").status_code == 302  # still signed out: to the login


def test_the_portal_session_is_that_customer_only(world, runtime_api, client):
    # Given a browser where a staff member was signed in
    client.force_login(world.staff)
    link = portal_link(runtime_api)

    client.get(path_of(link["url"]))

    # Then the staff session is gone: no staff page, no admin, no other customer's invoice
    assert client.get("/support/").status_code in (302, 403)
    assert client.get("/admin/").status_code == 302
    other = world.b.invoices.first()
    assert client.get(f"/billing/invoices/{other.number}/").status_code == 404
    assert world.a.name in client.get("/dashboard/").content.decode()


def test_the_portal_login_cannot_sign_in_with_a_password(world, runtime_api, client):
    client.get(path_of(portal_link(runtime_api)["url"]))
    from django.contrib.auth import get_user_model

    portal_user = get_user_model().objects.get(username=f"portal-{world.a.pk}")
    assert not portal_user.has_usable_password() and not portal_user.is_staff


@pytest.mark.browser
@pytest.mark.skipif(not chromium_available(), reason="chromium is not installed")
def test_in_a_fresh_browser_the_link_shows_the_dashboard_then_expires(
    live_server, world, runtime_api, settings
):
    settings.SITE_URL = live_server.url
    link = portal_link(runtime_api, return_url="https://app.example.com/billing")

    with chromium_browser() as browser:
        page = browser.new_page(viewport=DESKTOP)
        page.goto(link["url"])
        page.wait_for_url("**/dashboard/")
        assert world.a.name in page.inner_text(".dash-account")
        assert page.get_by_role("link", name="Back to the app").get_attribute("href") == (
            "https://app.example.com/billing"
        )
        screenshot(page, "browser-portal-dashboard")

        fresh = browser.new_context().new_page()
        fresh.goto(link["url"])
        assert "This link has expired" in fresh.inner_text("main")
        screenshot(fresh, "browser-portal-expired")
