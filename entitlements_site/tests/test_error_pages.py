"""The error pages (templates/400.html ... 500.html): in the site's look, with DEBUG off, each
saying what to do next; API paths keep their JSON errors.

pytest-django answers requests with DEBUG off, as `make run` and production do; `settings` sets
it again so that these tests hold whatever the command line says."""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import OperationalError
from django.test import Client
from django.urls import path

from core.roles import SUPPORT
from customers import services as customer_services
from entitlements_site import urls as site_urls


def _database_down(request):
    raise OperationalError("connection to server at 127.0.0.1 failed")


# The site's URLs plus one view that fails, for the 500 page.
urlpatterns = [path("test-failure/", _database_down), *site_urls.urlpatterns]


@pytest.fixture(autouse=True)
def _production_errors(settings):
    settings.DEBUG = False


def _user(username: str, *, group: str | None = None):
    user = get_user_model().objects.create_user(username=username, password="pw-" + username)
    if group:
        user.groups.add(Group.objects.get_or_create(name=group)[0])
    return user


def _text(response) -> str:
    return response.content.decode()


def _in_site_look(page: str) -> bool:
    return "/static/css/app.css" in page and 'class="topbar"' in page


@pytest.mark.django_db
def test_a_support_agent_refused_the_plan_editor_sees_why_and_where_to_go(client):
    # Given a support agent, logged in
    client.force_login(_user("sam", group=SUPPORT))

    # When they open the product managers' plan editor
    response = client.get("/catalog/")

    # Then a styled 403 gives the reason, who they are and the ways on
    page = _text(response)
    assert response.status_code == 403
    assert _in_site_look(page)
    assert "You may not open this page" in page
    assert "The plan editor is for product managers." in page
    assert "You are logged in as <strong>sam</strong>" in page
    assert 'href="/"' in page and "Go to the home page" in page
    assert "Log in as someone else" in page and 'action="/accounts/logout/"' in page
    assert "ask an administrator" in page


@pytest.mark.django_db
def test_an_end_customer_refused_the_support_pages_gets_the_styled_403(client, customer):
    # Given an end customer of Acme, logged in
    user = _user("carol")
    customer_services.customer_user_link(user=user, customer=customer)
    client.force_login(user)

    # When they open the support pages
    response = client.get("/support/")

    # Then the same styled refusal, with that page's reason
    page = _text(response)
    assert response.status_code == 403
    assert _in_site_look(page)
    assert "These pages are for support agents." in page


@pytest.mark.django_db
def test_an_unknown_page_is_a_styled_404_without_the_url_patterns(client):
    # Given a visitor who is not logged in
    # When they open an address that does not exist
    response = client.get("/no-such-page/")

    # Then a styled 404 names the address, offers to log in and lists no URL patterns
    page = _text(response)
    assert response.status_code == 404
    assert _in_site_look(page)
    assert "Page not found" in page
    assert "<code>/no-such-page/</code>" in page
    assert 'href="/accounts/login/?next=/no-such-page/"' in page
    assert "Go to the home page" in page
    assert "URLconf" not in page and "admin/" not in page


@pytest.mark.django_db
def test_a_logged_in_user_on_an_unknown_page_is_pointed_home(client):
    client.force_login(_user("pat"))

    response = client.get("/nowhere/")

    page = _text(response)
    assert response.status_code == 404
    assert "Start again from" in page and "Log in</a>" not in page


@pytest.mark.django_db
def test_a_form_sent_without_its_csrf_token_gets_the_styled_expired_form_page():
    # Given a browser that checks CSRF like a real one
    browser = Client(enforce_csrf_checks=True)

    # When a login form is posted without its token
    response = browser.post("/accounts/login/", {"username": "x", "password": "y"})

    # Then a styled 403 says nothing was saved and to reload and send again
    page = _text(response)
    assert response.status_code == 403
    assert _in_site_look(page)
    assert "This form has expired" in page
    assert "reload the page" in page
    assert "CSRF verification failed" not in page


def test_a_request_for_an_unknown_host_is_a_styled_400(client):
    # When a request names a host the site does not serve (no database needed for the answer)
    response = client.get("/", HTTP_HOST="attacker.example")

    # Then a styled 400 says what to do next
    page = _text(response)
    assert response.status_code == 400
    assert _in_site_look(page)
    assert "This request could not be understood" in page
    assert "Go to the home page" in page


@pytest.mark.urls(__name__)
def test_the_500_page_renders_when_the_database_is_down():
    # Given a page whose database is unreachable, and no database access allowed in this test:
    # the 500 page must render from an empty context, without a query
    browser = Client(raise_request_exception=False)

    # When it fails
    response = browser.get("/test-failure/")

    # Then a styled 500 says what to do, and shows no traceback or settings
    page = _text(response)
    assert response.status_code == 500
    assert _in_site_look(page)
    assert "Something went wrong on our side" in page
    assert "try again" in page and "contact your administrator" in page
    assert "OperationalError" not in page and "127.0.0.1" not in page


@pytest.mark.django_db
def test_api_paths_keep_their_json_errors(api):
    # When the API is asked for a customer that does not exist
    response = api.get("/api/v1/customers/nobody/entitlements/storage")

    # Then the answer is the error JSON of DESIGN.md, not an HTML page
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"].endswith("not_found")
