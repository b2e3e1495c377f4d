"""Upgrade: the plans side by side with what changes, the proration preview, the change and its
invoice; a downgrade waits for the period end."""

from decimal import Decimal

from django.urls import reverse
from djmoney.money import Money

from billing.models import Invoice, InvoicePurpose
from billing.services.subscriptions import proration_preview
from billing.templatetags.billing_tags import money
from catalog import services as catalog_services
from customers.models import EntitlementOverride

PLANS = reverse("dashboard:plans")
UPGRADE = reverse("dashboard:plan_change", args=["business"])
DOWNGRADE = reverse("dashboard:plan_change", args=["starter"])


def plan_card(html: str, key: str) -> str:
    """The card of plan `key` on the plans page (up to the next card or the comparison)."""
    cards = html.split('<li class="card plan')[1:]
    cards[-1] = cards[-1].split('<section class="plan-compare"')[0]
    return next(card for card in cards if f'aria-labelledby="plan-{key}"' in card)


def change_invoices(customer):
    return Invoice.objects.filter(customer=customer, purpose=InvoicePurpose.PLAN_CHANGE)


def test_the_public_plans_are_compared_with_the_current_one_highlighted(client_a):
    html = client_a.get(PLANS).content.decode()
    for name in ("Starter", "Basic", "Business"):
        assert f">{name}</h2>" in html
    assert "Secret" not in html  # not public
    assert "Your plan" in plan_card(html, "basic") and "plan-current" in plan_card(html, "basic")
    assert 'class="comparison"' in html  # the shared side-by-side table


def test_each_plan_says_what_changes_for_this_customer(client_a):
    html = client_a.get(PLANS).content.decode()
    business = plan_card(html, "business")
    assert "Storage: 100 GB → 1,000 GB" in business
    assert "File versioning" in business and "change-added" in business
    assert "Support tier: standard → priority" in business
    starter = plan_card(html, "starter")
    assert "Storage: 100 GB → 20 GB" in starter
    assert "You use 85 GB of Storage now; Starter includes 20 GB." in starter
    assert 'href="/dashboard/plans/business/">Upgrade' in html
    assert 'href="/dashboard/plans/starter/">Switch' in html


def test_features_under_custom_terms_stay(client_a, world):
    EntitlementOverride.objects.create(
        customer=world.a, feature=world.storage, limit=2000, reason="Enterprise deal"
    )
    business = plan_card(client_a.get(PLANS).content.decode(), "business")
    assert "Storage: your custom terms stay" in business
    assert "Storage: 100 GB → 1,000 GB" not in business


def test_the_upgrade_page_shows_the_proration_preview(client_a, world):
    subscription = world.a.subscriptions.get()
    preview = proration_preview(subscription=subscription, plan=world.business)
    html = client_a.get(UPGRADE).content.decode()
    assert "Upgrade to Business" in html
    for line in preview.lines:
        assert line.description in html
        assert money(line.amount) in html
    assert "Total due now" in html and money(preview.total) in html
    assert 'name="from_plan" value="basic"' in html


def test_confirming_the_upgrade_changes_the_plan_and_shows_the_proration_invoice(client_a, world):
    response = client_a.post(UPGRADE, {"from_plan": "basic"})
    invoice = change_invoices(world.a).get()
    assert response["Location"] == reverse("dashboard:plan_changed", args=[invoice.number])
    assert world.a.subscriptions.get().plan == world.business
    html = client_a.get(response["Location"]).content.decode()
    assert "You are on Business" in html and f"Invoice {invoice.number}" in html
    assert "Unused time on Basic" in html and "Remaining time on Business" in html
    assert money(invoice.total) in html
    assert f'href="/billing/invoices/{invoice.number}/"' in html
    overview = client_a.get(reverse("dashboard:overview")).content.decode()
    assert "used of 1,000 GB" in overview and "You have used" not in overview


def test_a_double_confirm_upgrades_once_and_shows_the_same_invoice(client_a, world):
    first = client_a.post(UPGRADE, {"from_plan": "basic"})
    second = client_a.post(UPGRADE, {"from_plan": "basic"})
    assert change_invoices(world.a).count() == 1
    assert first["Location"] == second["Location"]


def test_a_stale_confirm_is_refused(client_a, world):
    response = client_a.post(UPGRADE, {"from_plan": "starter"})
    assert response.status_code == 409
    assert b"review the change again" in response.content
    assert not change_invoices(world.a).exists()


def test_a_downgrade_is_scheduled_for_the_period_end(client_a, world):
    html = client_a.get(DOWNGRADE).content.decode()
    subscription = world.a.subscriptions.get()
    end = subscription.current_period_end
    assert "At the end of this period" in html and f"{end:%b} {end.day}, {end.year}" in html
    response = client_a.post(DOWNGRADE, {"from_plan": "basic"}, follow=True)
    subscription.refresh_from_db()
    assert subscription.plan == world.basic and subscription.scheduled_plan == world.starter
    assert not change_invoices(world.a).exists()
    html = response.content.decode()
    assert "Your plan changes to Starter on" in html
    assert "From " in plan_card(html, "starter")


def test_a_scheduled_downgrade_can_be_undone(client_a, world):
    client_a.post(DOWNGRADE, {"from_plan": "basic"})
    keep = reverse("dashboard:plan_change", args=["basic"])
    assert b"Keep Basic" in client_a.get(keep).content
    client_a.post(keep, {"from_plan": "basic"})
    assert world.a.subscriptions.get().scheduled_plan is None


def test_the_current_plan_without_a_scheduled_change_leads_back_to_the_plans(client_a):
    response = client_a.get(reverse("dashboard:plan_change", args=["basic"]))
    assert response.status_code == 302 and response["Location"] == PLANS


def test_the_plan_changed_page_shows_only_plan_change_invoices(client_a, world):
    period_invoice = Invoice.objects.filter(customer=world.a).get()
    url = reverse("dashboard:plan_changed", args=[period_invoice.number])
    assert client_a.get(url).status_code == 404


def test_a_grandfathered_customer_compares_from_the_version_they_are_on(client_a, world):
    # Given Basic's version 2 (Storage 50 GB, $70), published keeping A on version 1
    basic = world.basic
    draft = catalog_services.plan_version_draft_create(plan=basic)
    storage = draft.entitlements.get(feature__key="storage")
    catalog_services.plan_entitlement_update(entitlement=storage, limit=Decimal("50"))
    catalog_services.plan_version_update(version=draft, price=Money("70.00", "USD"))
    catalog_services.plan_version_publish(version=draft, existing="keep")

    # Then their plan shows what they have (100 GB, $50), and the upgrade changes from it
    html = client_a.get(PLANS).content.decode()
    assert "$50.00" in plan_card(html, "basic") and "$70.00" not in plan_card(html, "basic")
    assert "Storage: 100 GB → 1,000 GB" in plan_card(html, "business")
    comparison = html.split('<section class="plan-compare"')[1]
    assert "$70.00" not in comparison and "100 GB" in comparison
