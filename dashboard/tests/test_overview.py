"""The overview: a card per entitlement, the warning past a threshold, the polled partials and
the daily charts."""

import datetime as dt
import re
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone
from djmoney.money import Money

from billing.services.purchases import topup_purchase
from billing.services.subscriptions import subscription_create
from catalog.models import Enforcement, Feature
from catalog.tests.factories import PlanEntitlementFactory, PlanFactory
from customers.engine import entitlement_check, reservation_hold
from customers.models import Customer, CustomerUser, EntitlementOverride
from dashboard import selectors

from .conftest import report

OVERVIEW = reverse("dashboard:overview")


def bars_of(html: str, feature_key: str) -> int:
    """The number of day bars in the chart of `feature_key`."""
    figure = re.search(rf'<figure[^>]*id="chart-{feature_key}".*?</figure>', html, re.S)
    assert figure, f"no chart of {feature_key}"
    return len(re.findall(r'<rect class="chart-bar[ "]', figure.group(0)))


def test_a_metered_card_says_used_limit_left_and_when_it_resets(client_a, world):
    html = client_a.get(OVERVIEW).content.decode()
    card = re.search(r'<article[^>]*id="usage-storage".*?</article>', html, re.S).group(0)
    assert "85 GB" in card and "used of 100 GB" in card
    assert "15 GB" in card  # left
    resets = world.a.subscriptions.get().current_period_end
    assert f"{resets:%b} {resets.day}, {resets.year}" in card
    assert 'aria-valuenow="85"' in card and 'style="width: 85.0%"' in card


def test_past_the_threshold_the_card_warns(client_a, world):
    html = client_a.get(OVERVIEW).content.decode()
    assert "You have used 85% of your Storage." in html
    assert "meter-card-warn" in html and "meter-warning-warn" in html
    assert html.index('id="usage-storage"') < html.index('id="usage-data-transfer"')  # first


def test_under_the_threshold_there_is_no_warning(client_a, world):
    report(world.a, "storage", "40")
    html = client_a.get(OVERVIEW).content.decode()
    assert "You have used" not in html
    assert "meter-card-warn" not in html


def test_at_the_limit_the_card_turns_red_and_says_what_is_blocked(client_a, world):
    report(world.a, "storage", "100")
    html = client_a.get(OVERVIEW).content.decode()
    assert "meter-card-danger" in html
    assert "You have used 100% of your Storage. More is blocked until you use less" in html
    report(world.a, "data-transfer", "200")
    html = client_a.get(OVERVIEW).content.decode()
    resets = world.a.subscriptions.get().current_period_end
    assert (
        "You have used 100% of your Data transfer. More is blocked until it resets on "
        f"{resets:%b} {resets.day}, {resets.year}."
    ) in html


def test_a_soft_limit_past_100_percent_says_overage_is_billed(client_a, world):
    EntitlementOverride.objects.create(
        customer=world.a,
        feature=world.transfer,
        limit=Decimal("10"),
        enforcement=Enforcement.SOFT,
        overage_price=Money("0.10", "USD"),
        reason="Trial",
    )
    report(world.a, "data-transfer", "12.5")
    html = client_a.get(OVERVIEW).content.decode()
    # 12.5 GB of a 10 GB capacity: the percent goes on past 100, as in the alert email
    assert "You have used 125% of your Data transfer." in html
    assert "billed at $0.10 per GB" in html
    assert "2.5 GB" in html  # the overage, without trailing zeros


def test_unlimited_boolean_and_config_entitlements_are_shown_simply(client, world):
    api_calls = Feature.objects.create(key="api-calls", name="API calls", kind="metered")
    PlanEntitlementFactory(plan=world.business, feature=api_calls, limit=None, unlimited=True)
    client.force_login(world.user_b)
    html = client.get(OVERVIEW).content.decode()
    card = re.search(r'<article[^>]*id="usage-api-calls".*?</article>', html, re.S).group(0)
    assert "Unlimited" in card and "no limit" in card and "progressbar" not in card
    included = html[html.index("Included in your plan") :]
    assert "File versioning" in included and "Included" in included
    assert "Support tier" in included and "Priority" in included


def test_a_customer_without_a_subscription_sees_an_empty_state(client, world, django_user_model):
    lonely = Customer.objects.create(external_id="lonely", name="Lonely")
    user = django_user_model.objects.create_user("lonely", password="x" * 12)
    CustomerUser.objects.create(user=user, customer=lonely)
    client.force_login(user)
    for url in (OVERVIEW, reverse("dashboard:plans"), reverse("dashboard:invoices")):
        response = client.get(url)
        assert response.status_code == 200
    assert b"No active plan" in client.get(OVERVIEW).content
    assert b"No invoices yet" in client.get(reverse("dashboard:invoices")).content


def test_the_cards_poll_every_15_seconds(client_a):
    html = client_a.get(OVERVIEW).content.decode()
    section = re.search(r'<section id="usage-cards"[^>]*>', html).group(0)
    assert 'hx-get="/dashboard/"' in section and 'hx-trigger="every 15s"' in section
    # htmx from django-htmx's static files, never a CDN
    assert re.search(r'<script src="/static/django_htmx/htmx[^"]*\.js"', html)
    assert 'src="http' not in html and "//unpkg" not in html


def test_the_polled_partial_renders_alone(client_a, world):
    response = client_a.get(OVERVIEW, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<section id="usage-cards"')
    assert "<html" not in html and "<nav" not in html and "<svg" not in html
    assert "You have used 85% of your Storage." in html
    assert "HX-Request" in response["Vary"]


def test_a_poll_after_the_session_ended_sends_the_page_to_the_login(client, world):
    response = client.get(OVERVIEW, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert response["HX-Redirect"] == "/accounts/login/?next=/dashboard/"
    assert response.content == b""


def test_the_partial_shows_new_usage_without_a_reload(client_a, world):
    report(world.a, "storage", "92.5")
    html = client_a.get(OVERVIEW, HTTP_HX_REQUEST="true").content.decode()
    assert "92.5 GB" in html and "You have used 92% of your Storage." in html


def test_the_cards_partial_is_cheap(client_a, world, django_assert_max_num_queries):
    with django_assert_max_num_queries(12):
        client_a.get(OVERVIEW, HTTP_HX_REQUEST="true")


def test_the_charts_partial_renders_alone(client_a, world):
    response = client_a.get(OVERVIEW, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="usage-charts")
    html = response.content.decode()
    assert html.lstrip().startswith('<section id="usage-charts"')
    assert 'hx-trigger="every 60s"' in html
    assert "<html" not in html and "usage-cards" not in html


def test_the_chart_has_a_bar_per_day_of_the_period(client_a, world, period_start):
    end = world.a.subscriptions.get().current_period_end
    days = (end - period_start).days  # the period starts and ends at midnight UTC
    html = client_a.get(OVERVIEW).content.decode()
    assert bars_of(html, "storage") == days
    assert bars_of(html, "data-transfer") == days


def test_the_chart_is_accessible_svg_with_a_limit_line(client_a, world):
    html = client_a.get(OVERVIEW).content.decode()
    svg = re.search(r'<figure[^>]*id="chart-storage".*?</svg>', html, re.S).group(0)
    assert 'role="img"' in svg and 'aria-label="Storage: daily usage chart"' in svg
    assert '<title id="chart-storage-title">' in svg
    assert '<desc id="chart-storage-desc">' in svg and "85 GB now" in svg
    assert 'class="chart-limit"' in svg and "Limit 100 GB" in svg
    assert 'class="chart-y-label"' in svg and 'class="chart-x-label"' in svg
    assert "<script" not in svg


def test_chart_bars_follow_the_daily_levels_and_running_totals(world, period_start):
    now = timezone.now()
    report(world.a, "storage", "40", at=period_start + dt.timedelta(hours=5))
    report(world.a, "storage", "60", at=period_start + dt.timedelta(days=2, hours=5))
    report(world.a, "data-transfer", "3", at=period_start + dt.timedelta(hours=1))
    report(world.a, "data-transfer", "4.5", at=period_start + dt.timedelta(days=1, hours=1))
    storage = selectors.usage_chart(
        world.a, entitlement_check(world.a, "storage"), world.storage, now=now
    )
    assert [b.value for b in storage.bars[:4]] == [40, 40, 60, 60]  # level carried forward
    assert storage.bars[10].value == 85  # today: the level reported by the fixture
    assert all(b.future and b.height == 0 for b in storage.bars[11:])
    assert storage.limit_label == "Limit 100 GB"
    transfer = selectors.usage_chart(
        world.a, entitlement_check(world.a, "data-transfer"), world.transfer, now=now
    )
    assert transfer.measure == "running total"
    assert [b.value for b in transfer.bars[:3]] == [3, Decimal("7.5"), Decimal("7.5")]
    taller = storage.bars[2]
    assert taller.height > storage.bars[0].height > 0
    assert taller.y + taller.height == pytest.approx(storage.plot_bottom)


def test_a_limit_line_includes_top_ups(world):
    topup_purchase(customer=world.a, pack=world.pack, idempotency_key="k")
    e = entitlement_check(world.a, "storage")
    chart = selectors.usage_chart(world.a, e, world.storage)
    assert chart.limit_label == "Limit 120 GB"


def test_a_yearly_period_charts_the_last_30_days(db, world, django_user_model, client):
    yearly = PlanFactory(
        key="yearly",
        name="Yearly",
        price=Money("500.00", "USD"),
        interval="year",
        status="active",
        public=True,
        rank=60,
    )
    PlanEntitlementFactory(plan=yearly, feature=world.storage, limit=Decimal("500"))
    customer = Customer.objects.create(external_id="yearly-co", name="Yearly Co")
    subscription_create(customer=customer, plan=yearly)
    user = django_user_model.objects.create_user("yearly", password="x" * 12)
    CustomerUser.objects.create(user=user, customer=customer)
    client.force_login(user)
    assert bars_of(client.get(OVERVIEW).content.decode(), "storage") == 30


def test_units_held_by_reservations_show_on_the_card(client_a, world):
    # Given 10 GB held by two reservations of the 15 GB left
    reservation_hold(world.a, "storage", "render-1", "6")
    reservation_hold(world.a, "storage", "render-2", "4")
    html = client_a.get(OVERVIEW).content.decode()
    card = re.search(r'<article[^>]*id="usage-storage".*?</article>', html, re.S).group(0)
    # Then the card says what is held and by how many, and what is left excludes it
    assert "<dt>Held</dt>" in card and "10 GB" in card and "by 2 reservations" in card
    assert "<dt>Left</dt><dd>5 GB</dd>" in card
    # and a card without holds says nothing of them
    transfer = re.search(r'<article[^>]*id="usage-data-transfer".*?</article>', html, re.S)
    assert "Held" not in transfer.group(0)
