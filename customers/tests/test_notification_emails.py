"""Usage alert emails lead somewhere, with the right figures (issue 16, item 5).

Each kind of alert is produced the way a customer's application produces it (consumes through
the HTTP API), then every link of its text and HTML parts is followed with the test client,
signed in as the customer's dashboard user and signed out (the login page, then the page the
link names). The figures are compared with the API's entitlement of that customer.
"""

import re
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import quote, urlsplit

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.urls import resolve
from djmoney.money import Money
from rest_framework.test import APIClient

from catalog.models import Enforcement
from core.services import api_key_create
from core.text import money_round, money_text, quantity_text
from customers.models import CustomerUser, Notification
from customers.notifications import notification_email
from customers.services import grant_create
from customers.tests.factories import (
    CustomerFactory,
    FeatureFactory,
    PlanEntitlementFactory,
    PlanFactory,
    SubscriptionFactory,
    TopUpPackFactory,
)

pytestmark = pytest.mark.django_db

SITE_URL = "https://usage.example.test:8443"
PASSWORD = "alert-email-password"
LOGIN_PATH = "/accounts/login/"


@dataclass
class Shop:
    """A customer on Basic (500 GB of Data transfer a month) with a dashboard login, Pro on
    offer above it, and an API client of the customer's application."""

    customer: object
    feature: object
    basic: object
    pro: object
    api: APIClient

    def consume(self, quantity: str, event_id: str) -> dict:
        url = f"/api/v1/customers/{self.customer.external_id}/entitlements/{self.feature.key}"
        response = self.api.post(
            f"{url}/consume", {"quantity": quantity, "event_id": event_id}, format="json"
        )
        assert response.status_code == 200, response.content
        assert response.json()["allowed"], response.json()
        return response.json()

    def entitlement(self) -> dict:
        url = f"/api/v1/customers/{self.customer.external_id}/entitlements/{self.feature.key}"
        response = self.api.get(url)
        assert response.status_code == 200, response.content
        return response.json()


@pytest.fixture(autouse=True)
def _site_url(settings):
    settings.SITE_URL = SITE_URL + "/"  # a trailing slash must not double the links' slash


def shop_given(*, enforcement: str = Enforcement.HARD) -> Shop:
    feature = FeatureFactory(metered=True, key="transfer", name="Data transfer", unit="GB")
    basic = PlanFactory(key="basic", name="Basic", rank=20)
    pro = PlanFactory(key="pro", name="Pro", rank=30, price=Money("150.00", "USD"))
    PlanEntitlementFactory(
        plan=basic,
        feature=feature,
        limit=Decimal("500"),
        enforcement=enforcement,
        overage_price=Money("0.10", "USD") if enforcement == Enforcement.SOFT else None,
        notify_at=[80, 100],
    )
    PlanEntitlementFactory(plan=pro, feature=feature, limit=Decimal("2000"))
    customer = CustomerFactory(external_id="acme", name="Acme Inc", email="ops@acme.test")
    SubscriptionFactory(customer=customer, plan=basic)
    user = get_user_model().objects.create_user(username="acme-ops", password=PASSWORD)
    CustomerUser.objects.create(user=user, customer=customer)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(name='acme-app')[1]}")
    return Shop(customer, feature, basic, pro, api)


def cross(shop: Shop, capture, *quantities: str):
    """Consumes through the API, running what waits for the commit (the email's task)."""
    for index, quantity in enumerate(quantities):
        with capture(execute=True):
            shop.consume(quantity, f"event-{index}")


def links_of(email) -> list[str]:
    """Every link of the email; the text and HTML parts must offer the same ones."""
    text_links = re.findall(r"https?://\S+", email.body)
    html, mimetype = email.alternatives[0]
    assert mimetype == "text/html"
    html_links = re.findall(r'href="([^"]+)"', html)
    assert sorted(set(text_links)) == sorted(set(html_links))
    return sorted(set(text_links))


def open_link(client, url: str) -> tuple[str, str]:
    """GETs a link of the email; returns the URL name of the page it opened and its HTML."""
    assert url.startswith(SITE_URL + "/"), url
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    response = client.get(path)
    assert response.status_code == 200, (url, response.status_code)
    html = response.content.decode()
    if parts.fragment:
        assert f'id="{parts.fragment}"' in html  # the anchor the link scrolls to is there
    return resolve(parts.path).url_name, html


def open_link_signed_out(client, url: str) -> tuple[str, str]:
    """The same link signed out: the login page, then (after logging in) the page itself."""
    parts = urlsplit(url)
    response = client.get(parts.path)
    assert response.status_code == 302
    assert response["Location"] == f"{LOGIN_PATH}?next={quote(parts.path)}"
    login_page = client.get(response["Location"])
    assert login_page.status_code == 200 and 'name="password"' in login_page.content.decode()
    response = client.post(
        response["Location"], {"username": "acme-ops", "password": PASSWORD, "next": parts.path}
    )
    assert response.status_code == 302
    assert response["Location"] == parts.path
    page = open_link(client, url)
    client.logout()
    return page


def page_expectations(shop: Shop, email_figures: dict) -> dict:
    """What each linked page must show for the email to have led to the right place."""
    feature = shop.feature
    return {
        "overview": [f'id="usage-{feature.key}"', email_figures["used"]],
        "plans": ["<h1>Plans</h1>", 'id="plan-pro"', "Pro"],
        "topup_packs": [f"Buy more {feature.name}", "Extra 100 GB", "$10.00"],
    }


def follow_every_link(client, shop: Shop, email, figures: dict) -> set[str]:
    """Follows each link signed in and signed out; returns the names of the pages reached."""
    expected = page_expectations(shop, figures)
    reached = set()
    user = get_user_model().objects.get(username="acme-ops")
    for url in links_of(email):
        client.force_login(user)
        name, html = open_link(client, url)
        for text in expected[name]:
            assert text in html, (url, text)
        client.logout()
        assert open_link_signed_out(client, url)[0] == name
        reached.add(name)
    return reached


def api_figures(e: dict, unit: str = "GB") -> dict:
    """The email's figures, worked out from the API's entitlement E alone: capacity is what was
    used within allowance and grants plus what is left (usage - overage + balance)."""
    usage, limit = Decimal(e["usage"]), Decimal(e["limit"])
    overage, balance = Decimal(e["overage"]), Decimal(e["balance"])
    capacity = usage - overage + balance
    return {
        "used": quantity_text(usage, unit),
        "limit": quantity_text(limit, unit),
        "capacity": quantity_text(capacity, unit),
        "grants": quantity_text(capacity - limit, unit),
        "percent": f"{int(usage * 100 / capacity)}%",
        "over": quantity_text(overage, unit),
        "left": quantity_text(balance, unit),
        # An amount charged, in the currency's minor unit, as the invoice will say it
        "overage_cost": money_text(money_round(overage * Decimal("0.10"), "USD")),
    }


def the_email():
    assert len(mail.outbox) == 1, [m.subject for m in mail.outbox]
    return mail.outbox[0]


# --- each kind of alert ----------------------------------------------------------------------


def test_below_100_on_a_hard_limit_links_usage_and_plans_with_the_api_figures(
    client, django_capture_on_commit_callbacks
):
    # Given 500 GB of Data transfer under a hard limit, no top-up on sale
    shop = shop_given()

    # When the customer's application consumes 410 GB through the API (82%)
    cross(shop, django_capture_on_commit_callbacks, "410")

    # Then the email states the API's figures
    email, f = the_email(), api_figures(shop.entitlement())
    assert email.subject == "You have used 80% of your Data transfer"
    assert "You have used 80% of your Data transfer." in email.body
    assert f"Used:   {f['used']} of {f['capacity']} ({f['percent']})" in email.body
    assert f["used"] == "410 GB" and f["capacity"] == "500 GB" and f["percent"] == "82%"
    assert f"Limit:  {f['limit']}\n" in email.body
    assert f"Left:   {f['left']}" in email.body and f["left"] == "90 GB"
    assert "Over:" not in email.body
    # And it offers no top-up, and every link opens its page, signed in or through the login
    assert "Buy a top-up" not in email.body
    assert follow_every_link(client, shop, email, f) == {"overview", "plans"}


def test_100_on_a_hard_limit_with_a_pack_on_sale_links_the_pack_page(
    client, django_capture_on_commit_callbacks
):
    # Given a hard limit of 500 GB and a 100 GB pack offered on the customer's plan
    shop = shop_given()
    TopUpPackFactory(
        feature=shop.feature, name="Extra 100 GB", quantity=Decimal("100"), plans=[shop.basic]
    )

    # When usage reaches 500 GB
    cross(shop, django_capture_on_commit_callbacks, "500")

    # Then the email says it is all used and blocked, with the API's figures
    email, f = the_email(), api_figures(shop.entitlement())
    assert email.subject == "You have used 100% of your Data transfer"
    assert "You have used all of your Data transfer (100%). More is blocked until" in email.body
    assert f"Used:   {f['used']} of {f['capacity']} ({f['percent']})" in email.body
    assert f["percent"] == "100%" and f"Left:   {f['left']}" in email.body and f["left"] == "0 GB"
    # And its top-up link opens the pack's purchase page, like every other link
    topup = f"{SITE_URL}/dashboard/buy/{shop.feature.key}/"
    assert f"Buy a top-up to get more Data transfer now: {topup}" in email.body
    assert follow_every_link(client, shop, email, f) == {"overview", "plans", "topup_packs"}


@pytest.mark.parametrize("pack", ["every plan", "none"])
def test_past_100_on_a_soft_limit_states_the_overage_and_its_price(
    client, django_capture_on_commit_callbacks, pack
):
    # Given a soft limit of 500 GB at $0.10 per GB beyond, plus a 20 GB grant
    shop = shop_given(enforcement=Enforcement.SOFT)
    grant_create(customer=shop.customer, feature=shop.feature, quantity=Decimal("20"))
    if pack == "every plan":
        TopUpPackFactory(feature=shop.feature, name="Extra 100 GB", quantity=Decimal("100"))

    # When usage goes from 400 GB to 541.16 GB (past 80% and 100% at once)
    cross(shop, django_capture_on_commit_callbacks, "400", "141.16")

    # Then one email, capacity being allowance plus grants (520 GB), not usage
    email, f = the_email(), api_figures(shop.entitlement())
    assert (f["used"], f["capacity"], f["percent"]) == ("541.16 GB", "520 GB", "104%")
    assert (f["over"], f["overage_cost"]) == ("21.16 GB", "$2.12")  # not $2.116 (issue 20)
    assert email.subject == "You have used 100% of your Data transfer"
    assert (
        "You have used all of your Data transfer (104%). "
        "Use beyond it is billed at $0.10 per GB." in email.body
    )
    assert f"Used:   {f['used']} of {f['capacity']} ({f['percent']})" in email.body
    assert f"Limit:  {f['limit']} plus {f['grants']} from top-ups and grants" in email.body
    assert f"Over:   {f['over']}, at $0.10 per GB: {f['overage_cost']} so far" in email.body
    html = email.alternatives[0][0]
    assert f"{f['over']}, at $0.10 per GB: {f['overage_cost']} so far" in html
    assert f"{f['used']} of {f['capacity']} ({f['percent']})" in html
    # And the dashboard card it links to says the same percent
    client.force_login(shop.customer.users.get().user)
    overview = client.get("/dashboard/").content.decode()
    assert f"You have used {f['percent']} of your Data transfer." in overview
    client.logout()
    # And a top-up is offered only when a pack is on sale; every link opens its page
    pages = follow_every_link(client, shop, email, f)
    if pack == "none":
        assert "Buy a top-up" not in email.body and pages == {"overview", "plans"}
    else:
        assert pages == {"overview", "plans", "topup_packs"}


@pytest.mark.parametrize("pack", ["inactive", "on another plan", "of another feature", "in EUR"])
def test_no_top_up_link_when_no_pack_of_that_feature_is_on_sale_to_the_customer(
    django_capture_on_commit_callbacks, pack
):
    # Given a pack the customer may not buy for this feature
    shop = shop_given()
    options = {
        "inactive": {"feature": shop.feature, "active": False},
        "on another plan": {"feature": shop.feature, "plans": [shop.pro]},
        "of another feature": {},
        "in EUR": {"feature": shop.feature, "price": Money("10.00", "EUR")},
    }
    TopUpPackFactory(name="Extra 100 GB", **options[pack])

    # When usage crosses 80%
    cross(shop, django_capture_on_commit_callbacks, "400")

    # Then the email offers plans, not a top-up
    email = the_email()
    assert "/dashboard/buy/" not in email.body + email.alternatives[0][0]
    assert f"{SITE_URL}/dashboard/plans/" in email.body


def test_links_follow_site_url_at_send_time(settings, django_capture_on_commit_callbacks):
    # Given an alert recorded while the site ran on one address
    shop = shop_given()
    cross(shop, django_capture_on_commit_callbacks, "400")
    notification = Notification.objects.get()

    # When it is sent again after the site moved to another port
    settings.SITE_URL = "http://127.0.0.1:8401"
    email = notification_email(notification, ["ops@acme.test"])

    # Then every link is on the new address
    links = links_of(email)
    assert links and all(link.startswith("http://127.0.0.1:8401/dashboard/") for link in links)
