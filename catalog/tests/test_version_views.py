"""Plan versions in the plan editor: a draft, its impact preview, publishing with keep and with
migrate, the in-place editor's warning before a lower limit, duplicate plan."""

import re
from decimal import Decimal

import pytest
from django.urls import reverse
from djmoney.money import Money

from billing.services.period_close import subscription_periods_close
from billing.services.subscriptions import subscription_create
from catalog.models import Plan, PlanEntitlement, PlanVersion
from core.roles import PRODUCT_MANAGERS, SUPPORT
from customers import services as customer_services
from customers.engine import entitlement_check, usage_record_batch

from .test_views import HTMX, build_storage_catalog, user_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def pm_client(client):
    client.force_login(user_in("priya", PRODUCT_MANAGERS, is_staff=True))
    return client


@pytest.fixture
def support_client(client):
    client.force_login(user_in("sam", SUPPORT, is_staff=True))
    return client


@pytest.fixture
def catalog():
    """Basic has two subscribers (cust-0 has used 150 GB of its 200 GB transfer), Pro one."""
    c = build_storage_catalog()
    usage_record_batch(
        [{"event_id": "t-1", "customer": "cust-0", "feature": "data-transfer", "quantity": "150"}]
    )
    return c


def row(plan: Plan, number: int, feature_key: str) -> PlanEntitlement:
    return PlanEntitlement.objects.get(
        version__plan=plan, version__number=number, feature__key=feature_key
    )


def text(response) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.content.decode()))


def edit(client, plan_key: str, e: PlanEntitlement, limit: str, **extra):
    p = f"e{e.pk}"
    data = {f"{p}-limit": limit, f"{p}-reset": e.reset, f"{p}-enforcement": e.enforcement}
    data[f"{p}-notify_at"] = "80, 100"
    data.update(extra.pop("data", {}))
    return client.post(reverse("catalog:entitlement_edit", args=[plan_key, e.pk]), data, **extra)


def new_draft(client, plan_key="basic") -> PlanVersion:
    response = client.post(reverse("catalog:version_draft_create", args=[plan_key]))
    draft = PlanVersion.objects.get(plan__key=plan_key, status="draft")
    assert response.status_code == 302
    assert response["Location"] == reverse("catalog:plan_version", args=[plan_key, draft.number])
    return draft


def test_the_plan_page_lists_versions_and_offers_a_draft(pm_client, catalog):
    page = text(pm_client.get(reverse("catalog:plan_detail", args=["basic"])))

    assert "Versions" in page
    assert "Version 1, published" in page
    assert "New draft version" in page


def test_a_draft_is_edited_previewed_and_published_keeping_subscribers(pm_client, catalog):
    basic = catalog["basic"]
    # Given a draft of Basic
    draft = new_draft(pm_client)
    assert draft.number == 2
    assert row(basic, 2, "data-transfer").limit == Decimal("200")

    # When the PM lowers its transfer limit to 100 GB (no warning: nobody has the draft)
    saved = edit(pm_client, "basic", row(basic, 2, "data-transfer"), "100")
    assert saved.status_code == 302
    assert row(basic, 2, "data-transfer").limit == Decimal("100")
    assert row(basic, 1, "data-transfer").limit == Decimal("200")
    # and raises its price
    priced = pm_client.post(reverse("catalog:version_price", args=["basic", 2]), {"amount": "60"})
    assert priced.status_code == 302

    # Then the draft's page shows what publishing would do
    page = text(pm_client.get(reverse("catalog:plan_version", args=["basic", 2])))
    assert "2 subscribers, 1 already over" in page
    assert "Data transfer 200 GB a month, hard 100 GB a month, hard 1" in page
    assert "$100.00 now, $120.00 if every subscriber moves to it (+$20.00 per month)" in page

    # When it is published keeping current subscribers
    published = pm_client.post(
        reverse("catalog:version_publish", args=["basic", 2]), {"existing": "keep"}, follow=True
    )

    # Then they keep 200 GB; a new subscriber gets 100 GB at $60
    assert "Published version 2 of Basic" in text(published)
    assert entitlement_check("cust-0", "data-transfer").limit == Decimal("200")
    newcomer = customer_services.customer_create(external_id="new-1", name="Newcomer")
    subscription = subscription_create(customer=newcomer, plan=basic)
    assert subscription.plan_version.number == 2
    assert entitlement_check("new-1", "data-transfer").limit == Decimal("100")
    assert subscription.invoices.get().total == Money("60.00", "USD")


def test_publishing_with_migrate_moves_everyone_now(pm_client, catalog):
    basic = catalog["basic"]
    new_draft(pm_client)
    edit(pm_client, "basic", row(basic, 2, "data-transfer"), "120")

    response = pm_client.post(
        reverse("catalog:version_publish", args=["basic", 2]),
        {"existing": "migrate"},
        follow=True,
    )

    assert "2 subscribers moved to it now" in text(response)
    for customer in ("cust-0", "cust-1"):
        assert entitlement_check(customer, "data-transfer").limit == Decimal("120")
    assert entitlement_check("cust-2", "data-transfer").limit == Decimal("500")  # Pro


def test_lowering_a_limit_in_place_says_whom_it_reaches_before_saving(pm_client, catalog):
    transfer = row(catalog["basic"], 1, "data-transfer")

    # When the PM lowers Basic's transfer limit from 200 to 100 GB in place
    for extra in ({}, HTMX):
        warned = edit(pm_client, "basic", transfer, "100", **extra)

        # Then nothing is saved yet: the form says 2 subscribers, 1 already over
        assert warned.status_code == 200
        assert "2 subscribers, 1 already over." in text(warned)
        assert "Lowering Data transfer from 200 GB to 100 GB applies at once to 2" in text(warned)
        assert 'name="confirm_lower" value="100"' in warned.content.decode()
        transfer.refresh_from_db()
        assert transfer.limit == Decimal("200")

    # When they confirm that limit, it is saved
    confirmed = edit(pm_client, "basic", transfer, "100", data={"confirm_lower": "100"})
    assert confirmed.status_code == 302
    transfer.refresh_from_db()
    assert transfer.limit == Decimal("100")
    assert entitlement_check("cust-0", "data-transfer").limit == Decimal("100")


def test_a_confirmation_is_for_the_limit_it_was_shown(pm_client, catalog):
    transfer = row(catalog["basic"], 1, "data-transfer")

    response = edit(pm_client, "basic", transfer, "50", data={"confirm_lower": "100"})

    assert "2 subscribers, 1 already over." in text(response)
    transfer.refresh_from_db()
    assert transfer.limit == Decimal("200")


def test_raising_a_limit_in_place_saves_at_once(pm_client, catalog):
    transfer = row(catalog["basic"], 1, "data-transfer")

    response = edit(pm_client, "basic", transfer, "300")

    assert response.status_code == 302
    transfer.refresh_from_db()
    assert transfer.limit == Decimal("300")


def test_a_superseded_version_cannot_change(pm_client, catalog):
    new_draft(pm_client)
    pm_client.post(reverse("catalog:version_publish", args=["basic", 2]), {"existing": "keep"})
    old = row(catalog["basic"], 1, "data-transfer")

    page = text(pm_client.get(reverse("catalog:plan_version", args=["basic", 1])))
    response = edit(pm_client, "basic", old, "10")

    assert "Superseded" in page and "Edit Data transfer" not in page
    assert response.status_code == 409
    assert "cannot change" in text(response)
    old.refresh_from_db()
    assert old.limit == Decimal("200")


def test_bad_draft_price_and_publish_choice_are_form_errors(pm_client, catalog):
    new_draft(pm_client)

    price = pm_client.post(reverse("catalog:version_price", args=["basic", 2]), {"amount": "1e5"})
    publish = pm_client.post(
        reverse("catalog:version_publish", args=["basic", 2]), {"existing": "later"}
    )

    assert price.status_code == 400
    assert "Price per period" in text(price)
    assert PlanVersion.objects.get(plan__key="basic", number=2).price == Money("50.00", "USD")
    assert publish.status_code == 400
    assert "Select a valid choice" in text(publish)
    assert PlanVersion.objects.get(plan__key="basic", number=2).status == "draft"


def test_publishing_a_published_version_is_refused(pm_client, catalog):
    response = pm_client.post(
        reverse("catalog:version_publish", args=["basic", 1]), {"existing": "keep"}
    )

    assert response.status_code == 409
    assert "only a draft can be published" in text(response)


def test_a_second_draft_opens_the_first(pm_client, catalog):
    new_draft(pm_client)

    again = pm_client.post(reverse("catalog:version_draft_create", args=["basic"]))

    assert again["Location"] == reverse("catalog:plan_version", args=["basic", 2])
    assert PlanVersion.objects.filter(plan__key="basic").count() == 2


def test_duplicate_plan_from_a_version(pm_client, catalog):
    response = pm_client.post(
        reverse("catalog:version_duplicate", args=["basic", 1]),
        {"key": "basic-plus", "name": "Basic Plus"},
        follow=True,
    )

    assert "Basic Plus is a copy of Basic version 1" in text(response)
    copy = Plan.objects.get(key="basic-plus")
    assert (copy.status, copy.price) == ("draft", Money("50.00", "USD"))
    assert row(copy, 1, "data-transfer").limit == Decimal("200")
    taken = pm_client.post(
        reverse("catalog:version_duplicate", args=["basic", 1]), {"key": "pro", "name": "X"}
    )
    assert taken.status_code == 400
    assert "already exists" in text(taken)


def test_an_unknown_version_is_404(pm_client, catalog):
    assert pm_client.get(reverse("catalog:plan_version", args=["basic", 9])).status_code == 404
    assert pm_client.get(reverse("catalog:plan_version", args=["nope", 1])).status_code == 404


def test_support_may_not_open_or_publish_versions(support_client, catalog):
    new_draft_url = reverse("catalog:version_draft_create", args=["basic"])
    url = reverse("catalog:plan_version", args=["basic", 1])

    assert support_client.get(url).status_code == 403
    assert support_client.post(new_draft_url).status_code == 403
    assert not PlanVersion.objects.filter(status="draft").exists()


def test_prices_change_from_the_next_period_migrated_or_not(pm_client, catalog):
    kept, migrated = (c.subscriptions.get() for c in catalog["customers"][:2])

    def next_price(subscription) -> Money:
        end = subscription.current_period_end
        closed = subscription_periods_close(subscription=subscription, now=end)
        return closed[0].invoice.lines.get(kind="plan").unit_price

    # Given Basic's version 2 at $60, published keeping its subscribers on version 1 ($50)
    new_draft(pm_client)
    pm_client.post(reverse("catalog:version_price", args=["basic", 2]), {"amount": "60"})
    pm_client.post(reverse("catalog:version_publish", args=["basic", 2]), {"existing": "keep"})
    # Then a kept subscriber's next period is still $50
    assert next_price(kept) == Money("50.00", "USD")

    # Given version 3 at $70, published migrating everyone
    new_draft(pm_client)
    pm_client.post(reverse("catalog:version_price", args=["basic", 3]), {"amount": "70"})
    pm_client.post(reverse("catalog:version_publish", args=["basic", 3]), {"existing": "migrate"})
    # Then a migrated subscriber's next period is $70 (the current one was paid at $50)
    assert next_price(migrated) == Money("70.00", "USD")
    assert migrated.invoices.order_by("pk").first().total == Money("50.00", "USD")


def test_the_impact_counts_each_customer_over_once(pm_client, catalog):
    # Given cust-0 over both a lowered transfer and a lowered storage limit in a draft
    usage_record_batch(
        [{"event_id": "s-1", "customer": "cust-0", "feature": "storage", "quantity": "90"}]
    )
    new_draft(pm_client)
    edit(pm_client, "basic", row(catalog["basic"], 2, "data-transfer"), "100")
    edit(pm_client, "basic", row(catalog["basic"], 2, "storage"), "50")

    page = text(pm_client.get(reverse("catalog:plan_version", args=["basic", 2])))

    assert "2 subscribers, 1 already over" in page
