import pytest
from django.urls import reverse


def test_healthz_answers_without_login(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_home_redirects_anonymous_to_login(client):
    response = client.get(reverse("home"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


@pytest.mark.django_db
def test_login_page_renders_with_our_stylesheet(client):
    response = client.get(reverse("login"))
    assert response.status_code == 200
    assert b"/static/css/app.css" in response.content
    assert b"csrfmiddlewaretoken" in response.content


@pytest.mark.django_db
def test_home_sends_an_end_customer_to_the_dashboard(client):
    import io

    from django.core.management import call_command

    call_command("seed_demo", stdout=io.StringIO())
    client.login(username="customer", password="customer-demo")
    response = client.get(reverse("home"))
    assert response.status_code == 302 and response["Location"] == reverse("dashboard:overview")
