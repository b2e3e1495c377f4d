"""The support pages: who may open them, the search, the customer page and every action."""

from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from billing.models import Invoice, InvoicePurpose, TopUpPurchase
from customers import services as customer_services
from customers.engine import entitlement_check, reservation_hold, reservation_release
from customers.models import EntitlementOverride, Grant, Subscription

from .conftest import user_in

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


def customer_url(world, name: str = "customer", *args) -> str:
    return reverse(f"support:{name}", args=[world.acme.pk, *args])


def page_urls(world) -> list[str]:
    return [
        reverse("support:search"),
        reverse("support:search") + "?q=acme",
        customer_url(world),
        customer_url(world, "change_plan") + "?plan=pro",
    ]


# --- access -----------------------------------------------------------------------------------


def test_every_page_answers_200_for_support(support_client, world):
    for url in page_urls(world):
        assert support_client.get(url).status_code == 200, url


def test_anonymous_is_sent_to_the_login_page(client, world):
    for url in page_urls(world):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login") + "?next=")


@pytest.mark.parametrize("who", ["pm", "end_customer"])
def test_product_managers_and_end_customers_get_403(client, world, who):
    client.force_login(getattr(world, who))
    for url in page_urls(world):
        assert client.get(url).status_code == 403, url
    response = client.post(
        customer_url(world, "grant_add"),
        {"grant-feature": "storage", "grant-quantity": "20", "grant-reason": "x"},
    )
    assert response.status_code == 403
    assert not Grant.objects.exists()


def test_a_user_in_no_group_gets_403_and_a_superuser_gets_in(client, world):
    client.force_login(user_in("nobody"))
    assert client.get(reverse("support:search")).status_code == 403
    client.force_login(user_in("root", is_superuser=True, is_staff=True))
    assert client.get(customer_url(world)).status_code == 200


def test_actions_need_the_csrf_token(world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.support)
    response = client.post(
        customer_url(world, "grant_add"),
        {"grant-feature": "storage", "grant-quantity": "20", "grant-reason": "goodwill"},
        **HTMX,
    )
    assert response.status_code == 403
    assert not Grant.objects.exists()
    page = client.get(customer_url(world)).content.decode()
    assert page.count('name="csrfmiddlewaretoken"') >= 4  # every action form
    assert 'hx-headers=\'{"X-CSRFToken": "' in page


def test_an_unknown_customer_is_404(support_client, world):
    assert support_client.get(reverse("support:customer", args=[9999])).status_code == 404


# --- search -----------------------------------------------------------------------------------


@pytest.mark.parametrize("term", ["acme", "ACME corp", "billing@acme", "acme-001", "corporation"])
def test_search_finds_by_name_email_or_external_id(support_client, world, term):
    response = support_client.get(reverse("support:search"), {"q": term})
    assert [c.pk for c in response.context["results"]] == [world.acme.pk]
    assert customer_url(world) in response.content.decode()


def test_search_under_htmx_returns_only_the_results(support_client, world):
    html = support_client.get(reverse("support:search"), {"q": "acm"}, **HTMX).content.decode()
    assert html.strip().startswith('<div id="results"')
    assert "<html" not in html
    assert "Acme Corporation" in html and "Basic" in html


def test_search_says_when_nothing_matches(support_client, world):
    for extra in (HTMX, {}):
        html = support_client.get(reverse("support:search"), {"q": "xyz"}, **extra)
        assert "No customers match “xyz”." in html.content.decode()


def test_search_page_works_without_javascript(support_client, world):
    html = support_client.get(reverse("support:search")).content.decode()
    assert '<form class="search-form card" method="get" action="/support/"' in html
    assert 'hx-trigger="input changed delay:250ms, search"' in html
    assert "Newest customers" in html and "Acme Corporation" in html


# --- the customer page ------------------------------------------------------------------------


def test_customer_page_shows_plan_entitlements_sources_and_bars(support_client, world):
    customer_services.override_create(
        customer=world.acme, feature=world.versioning, reason="Beta tester"
    )
    html = support_client.get(customer_url(world)).content.decode()
    assert "Acme Corporation" in html and "acme-001" in html
    assert "<strong>Basic</strong>" in html
    # Storage: 85 of 100 GB, past 80%: the warning colour.
    assert '<li class="ent warn" id="ent-storage">' in html
    assert "<strong>85 GB</strong> used of 100 GB" in html
    assert "<strong>15 GB</strong> left" in html
    assert 'style="width: 85.0%"' in html
    # Where each comes from.
    assert 'class="badge src-plan"' in html
    assert 'class="badge src-override"' in html
    assert "standard" in html


def test_customer_page_lists_invoices_with_links(support_client, world):
    invoice = Invoice.objects.get(customer=world.acme)
    html = support_client.get(customer_url(world)).content.decode()
    assert reverse("billing:invoice_detail", args=[invoice.number]) in html


def test_customer_page_lists_notifications_sent(support_client, world):
    from support.selectors import Notification

    if Notification is None:
        pytest.skip("notifications not installed")
    # 85 GB of 100 crossed the 80% threshold when reported.
    html = support_client.get(customer_url(world)).content.decode()
    assert Notification.objects.filter(customer=world.acme, threshold=80).exists()
    assert "80%" in html and "billing@acme.example" in html


def test_customer_without_a_subscription_is_offered_to_subscribe(support_client, world):
    lonely = customer_services.customer_create(external_id="solo", name="Solo Ltd")
    html = support_client.get(reverse("support:customer", args=[lonely.pk])).content.decode()
    assert "No active subscription" in html
    assert "No entitlements: no active subscription, override or grant." in html
    assert "Top-ups are sold to customers with an active subscription." in html
    response = support_client.post(
        reverse("support:change_plan", args=[lonely.pk]), {"plan": "basic"}, follow=True
    )
    assert "Subscribed to Basic." in response.content.decode()
    assert customer_services.subscription_active(lonely).plan == world.basic


# --- grant units ------------------------------------------------------------------------------


def test_granting_20_gb_raises_the_balance_by_20_and_is_in_history(support_client, world):
    before = entitlement_check(world.acme, "storage")
    response = support_client.post(
        customer_url(world, "grant_add"),
        {"grant-feature": "storage", "grant-quantity": "20", "grant-reason": "Ticket 4411"},
        **HTMX,
    )
    assert response.status_code == 200
    assert response["HX-Retarget"] == "#customer-main"
    html = response.content.decode()
    assert "Granted 20 GB Storage (manual)." in html
    assert "+20 GB granted" in html
    after = entitlement_check(world.acme, "storage")
    assert after.balance == before.balance + 20
    grant = Grant.objects.get(customer=world.acme)
    assert (grant.source, grant.reason, grant.created_by) == (
        "manual",
        "Ticket 4411",
        world.support,
    )
    assert grant.history.get().history_user == world.support
    assert "Sam" in html and "Ticket 4411" in html  # the history section


def test_granting_without_javascript_redirects_to_the_entitlements(support_client, world):
    response = support_client.post(
        customer_url(world, "grant_add"),
        {"grant-feature": "storage", "grant-quantity": "20", "grant-reason": "Goodwill"},
    )
    assert response.status_code == 302
    assert response["Location"] == customer_url(world) + "#entitlements"


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"grant-feature": "storage", "grant-quantity": "-5", "grant-reason": "x"},
            "not be negative",
        ),
        (
            {"grant-feature": "storage", "grant-quantity": "0", "grant-reason": "x"},
            "greater than zero",
        ),
        ({"grant-feature": "storage", "grant-quantity": "20", "grant-reason": " "}, "required"),
        ({"grant-feature": "support-tier", "grant-quantity": "1", "grant-reason": "x"}, "valid"),
        (
            {
                "grant-feature": "storage",
                "grant-quantity": "20",
                "grant-reason": "x",
                "grant-expires_at": "2001-01-01T00:00",
            },
            "The expiry must be in the future",
        ),
    ],
)
def test_bad_grant_input_shows_errors_and_grants_nothing(support_client, world, data, message):
    for extra in (HTMX, {}):
        response = support_client.post(customer_url(world, "grant_add"), data, **extra)
        assert response.status_code == 200
        html = response.content.decode()
        assert message in html
        assert 'id="panel-grant"' in html
    assert not Grant.objects.exists()


def test_a_paid_top_up_bought_twice_with_one_key_buys_once(support_client, world):
    page = support_client.get(customer_url(world))
    key = page.context["topup_form"]["idempotency_key"].value()
    assert f'value="{key}"' in page.content.decode()
    data = {"topup-pack": "extra-20-gb", "topup-idempotency_key": key}
    first = support_client.post(customer_url(world, "topup_sell"), data, **HTMX)
    second = support_client.post(customer_url(world, "topup_sell"), data, **HTMX)
    assert first.status_code == second.status_code == 200
    assert "Sold Extra 20 GB: invoice INV-" in first.content.decode()
    assert TopUpPurchase.objects.filter(customer=world.acme).count() == 1
    assert Invoice.objects.filter(customer=world.acme, purpose=InvoicePurpose.TOPUP).count() == 1
    assert entitlement_check(world.acme, "storage").granted == Decimal("20")
    grant = Grant.objects.get(customer=world.acme)
    assert (grant.source, grant.history.get().history_user) == ("topup", world.support)
    # The page shown afterwards carries a new key, for the next sale.
    assert second.context["topup_form"]["idempotency_key"].value() != key


def test_void_a_grant(support_client, world):
    grant = customer_services.grant_create(
        customer=world.acme, feature=world.storage, quantity=Decimal("20"), reason="Oops"
    )
    url = customer_url(world, "grant_void", grant.pk)
    response = support_client.post(url, **HTMX)
    assert "Voided the grant of 20 GB Storage (manual)." in response.content.decode()
    grant.refresh_from_db()
    assert grant.voided_at is not None
    assert entitlement_check(world.acme, "storage").granted == 0
    again = support_client.post(url, follow=True)
    assert "This grant is already void." in again.content.decode()


# --- overrides --------------------------------------------------------------------------------


def test_an_override_changes_the_limit_and_is_recorded(support_client, world):
    response = support_client.post(
        customer_url(world, "override_add"),
        {
            "ov-feature": "storage",
            "ov-reason": "Enterprise deal 2026-17",
            "ov-limit": "500",
            "ov-reset": "billing_period",
            "ov-enforcement": "hard",
            "ov-notify_at": "80, 100",
        },
        **HTMX,
    )
    html = response.content.decode()
    assert "Override added: Storage is now 500 GB for Acme Corporation." in html
    e = entitlement_check(world.acme, "storage")
    assert (e.limit, e.source) == (Decimal("500"), "override")
    override = EntitlementOverride.objects.get(customer=world.acme)
    assert override.created_by == world.support
    assert override.history.get().history_user == world.support
    assert "Enterprise deal 2026-17" in html


def test_override_fields_follow_the_feature_kind(support_client, world):
    url = customer_url(world, "override_add")
    gate = support_client.get(url, {"ov-feature": "file-versioning"}, **HTMX).content.decode()
    assert gate.strip().startswith('<div id="override-fields"')
    assert 'name="ov-enabled"' in gate and 'name="ov-limit"' not in gate
    config = support_client.get(url, {"ov-feature": "support-tier"}, **HTMX).content.decode()
    assert 'name="ov-value"' in config and 'name="ov-enabled"' not in config
    page = support_client.get(url, {"ov-feature": "storage"})
    assert page.status_code == 200 and 'name="ov-limit"' in page.content.decode()


@pytest.mark.parametrize(
    "data, message",
    [
        ({"ov-feature": "storage", "ov-reason": "Deal"}, "needs a limit, or tick unlimited"),
        ({"ov-feature": "storage", "ov-limit": "5", "ov-reason": ""}, "This field is required."),
        (
            {"ov-feature": "support-tier", "ov-reason": "Deal"},
            "A config entitlement needs a value.",
        ),
        ({"ov-feature": "", "ov-reason": "Deal"}, "This field is required."),
        (
            {
                "ov-feature": "storage",
                "ov-limit": "5",
                "ov-reason": "Deal",
                "ov-starts_at": "2030-01-02T00:00",
                "ov-ends_at": "2030-01-01T00:00",
            },
            "The end must come after the start.",
        ),
    ],
)
def test_bad_override_input_shows_errors_and_changes_nothing(support_client, world, data, message):
    data = {"ov-reset": "billing_period", "ov-enforcement": "hard", **data}
    for extra in (HTMX, {}):
        response = support_client.post(customer_url(world, "override_add"), data, **extra)
        assert response.status_code == 200
        assert message in response.content.decode()
    assert not EntitlementOverride.objects.exists()
    assert entitlement_check(world.acme, "storage").limit == Decimal("100")


def test_ending_an_override_brings_back_the_plan(support_client, world):
    override = customer_services.override_create(
        customer=world.acme, feature=world.storage, reason="Trial", limit=Decimal("500")
    )
    response = support_client.post(customer_url(world, "override_end", override.pk), follow=True)
    assert "Ended the override of Storage; the plan" in response.content.decode()
    e = entitlement_check(world.acme, "storage")
    assert (e.limit, e.source) == (Decimal("100"), "plan")
    override.refresh_from_db()
    assert override.ends_at is not None
    assert override.history.latest().history_user == world.support


def test_another_customers_override_cannot_be_ended_here(support_client, world):
    other = customer_services.customer_create(external_id="globex", name="Globex")
    override = customer_services.override_create(
        customer=other, feature=world.storage, reason="Deal", limit=Decimal("1")
    )
    response = support_client.post(customer_url(world, "override_end", override.pk))
    assert response.status_code == 404


# --- change plan ------------------------------------------------------------------------------


def test_change_plan_preview_shows_the_proration_lines_and_total(support_client, world):
    response = support_client.get(customer_url(world, "change_plan"), {"plan": "pro"}, **HTMX)
    html = response.content.decode()
    assert html.strip().startswith('<section id="panel-plan"')
    preview = response.context["preview"]["proration"]
    assert "Unused time on Basic" in html and "Remaining time on Pro" in html
    assert str(preview.total) in html
    assert f"Upgrade and charge {preview.total}" in html
    assert customer_services.subscription_active(world.acme).plan == world.basic  # not yet


def test_upgrading_issues_a_proration_invoice_at_once(support_client, world):
    response = support_client.post(customer_url(world, "change_plan"), {"plan": "pro"}, **HTMX)
    html = response.content.decode()
    invoice = Invoice.objects.get(customer=world.acme, purpose=InvoicePurpose.PLAN_CHANGE)
    assert invoice.lines.filter(kind="proration").count() == 2
    assert f"Upgraded to Pro. Proration invoice {invoice.number} issued" in html
    assert customer_services.subscription_active(world.acme).plan == world.pro
    assert entitlement_check(world.acme, "storage").limit == Decimal("1000")
    history = Subscription.history.filter(customer_id=world.acme.pk).latest()
    assert history.history_user == world.support
    assert "Basic" in html and "Pro" in html  # the history shows the plan change


def test_a_downgrade_is_scheduled_for_the_period_end(support_client, world):
    preview = support_client.get(
        customer_url(world, "change_plan"), {"plan": "personal"}, **HTMX
    ).content.decode()
    assert "Scheduled for the period end" in preview
    response = support_client.post(
        customer_url(world, "change_plan"), {"plan": "personal"}, follow=True
    )
    assert "Downgrade to Personal scheduled for the period end" in response.content.decode()
    subscription = customer_services.subscription_active(world.acme)
    assert (subscription.plan, subscription.scheduled_plan) == (world.basic, world.personal)
    assert not Invoice.objects.filter(purpose=InvoicePurpose.PLAN_CHANGE).exists()
    # The current plan is then offered to keep it.
    keep = support_client.post(customer_url(world, "change_plan"), {"plan": "basic"}, follow=True)
    assert "the scheduled change is cancelled" in keep.content.decode()
    assert customer_services.subscription_active(world.acme).scheduled_plan is None


def test_an_unknown_plan_is_a_form_error(support_client, world):
    for extra in (HTMX, {}):
        response = support_client.post(
            customer_url(world, "change_plan"), {"plan": "platinum"}, **extra
        )
        assert response.status_code == 200
        assert "Select a valid choice" in response.content.decode()
    assert customer_services.subscription_active(world.acme).plan == world.basic


def test_plan_change_is_refused_with_the_services_reason(support_client, world, monkeypatch):
    from core.errors import InvalidInput
    from support import views

    def refuse(**kwargs):
        raise InvalidInput("Switching between monthly and yearly billing is not possible.")

    monkeypatch.setattr(views, "subscription_change_plan", refuse)
    response = support_client.post(customer_url(world, "change_plan"), {"plan": "pro"}, **HTMX)
    assert "monthly and yearly billing is not possible" in response.content.decode()
    assert customer_services.subscription_active(world.acme).plan == world.basic


def test_history_says_who_changed_what(support_client, world):
    override = customer_services.override_create(
        customer=world.acme, feature=world.storage, reason="Trial", limit=Decimal("500")
    )
    support_client.post(customer_url(world, "override_end", override.pk))
    from support.selectors import customer_history

    entries = customer_history(world.acme)
    ended = entries[0]
    assert (ended.who, ended.action, ended.subject) == ("Sam", "changed", "Override: Storage")
    assert [c.field for c in ended.changes] == ["ends at"]
    assert ended.changes[0].old == "—"
    assert entries[-1].who == "system"  # the customer was created outside a request


def test_customer_page_shows_units_held_by_reservations(support_client, world):
    # Given 12 GB of the 15 GB left held by three reservations
    for n in range(3):
        assert reservation_hold(world.acme, "storage", f"job-{n}", "4").allowed
    html = support_client.get(customer_url(world)).content.decode()
    # Then the storage row says so, and what is left excludes them
    assert "<strong>12 GB</strong> held by 3 reservations" in html
    assert "<strong>3 GB</strong> left" in html
    # and a feature without holds says nothing of them
    reservation_release(world.acme, "storage", "job-0")
    reservation_release(world.acme, "storage", "job-1")
    html = support_client.get(customer_url(world)).content.decode()
    assert "<strong>4 GB</strong> held by 1 reservation<" in html
    reservation_release(world.acme, "storage", "job-2")
    assert "held by" not in support_client.get(customer_url(world)).content.decode()
