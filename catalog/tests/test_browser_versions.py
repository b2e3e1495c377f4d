"""Plan versions in a real browser (Playwright driving Debian's chromium): a product manager is
warned before lowering a limit in place, makes a draft, lowers a limit in it, sees "N
subscribers, M already over", publishes keeping existing customers, then publishes another
version migrating everyone. Screenshots go to /tmp/shots (outside the repository)."""

from decimal import Decimal

import pytest

from billing.services.subscriptions import subscription_create
from catalog.models import PlanEntitlement
from core.testing import (
    DESKTOP,
    PHONE,
    browser_login,
    chromium_available,
    chromium_browser,
    screenshot,
)
from customers import services as customer_services
from customers.engine import entitlement_check, usage_record_batch

from .test_views import build_storage_catalog, user_in

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not chromium_available(), reason="chromium is not installed"),
]

PASSWORD = "secret-pass-123"


@pytest.fixture
def storage_catalog(transactional_db):
    """Basic: two subscribers; cust-0 has used 150 GB of its 200 GB data transfer."""
    c = build_storage_catalog()
    usage_record_batch(
        [{"event_id": "b-1", "customer": "cust-0", "feature": "data-transfer", "quantity": "150"}]
    )
    user_in("priya", "Product managers", is_staff=True, first_name="Priya")
    return c


def transfer_row(plan, number: int) -> PlanEntitlement:
    return PlanEntitlement.objects.get(
        version__plan=plan, version__number=number, feature__key="data-transfer"
    )


def test_a_pm_drafts_previews_and_publishes_versions(
    transactional_db, live_server, storage_catalog
):
    from playwright.sync_api import expect

    c = storage_catalog
    with chromium_browser() as browser:
        page = browser.new_page(viewport=DESKTOP)
        browser_login(page, live_server.url, "priya", PASSWORD, next_path="/catalog/plans/basic/")
        expect(page.locator("#versions-heading")).to_be_visible()
        expect(page.locator(".versions-table")).to_contain_text("Version 1")

        # In place, lowering a limit first says whom it reaches; Cancel keeps it.
        v1 = transfer_row(c["basic"], 1)
        row = page.locator(f"#ent-{v1.pk}")
        row.get_by_role("link", name="Edit Data transfer").click()
        expect(row.get_by_label("Limit (GB)")).to_be_focused()
        row.get_by_label("Limit (GB)").fill("100")
        row.get_by_role("button", name="Save").click()
        expect(row.get_by_role("alert")).to_contain_text("2 subscribers, 1 already over.")
        expect(row.get_by_role("button", name="Lower it for 2 subscribers")).to_be_visible()
        screenshot(page, "versions-inplace-warning-desktop")
        row.get_by_role("link", name="Cancel").click()
        expect(row).not_to_have_class("editing")
        v1.refresh_from_db()
        assert v1.limit == Decimal("200")

        # A draft: a copy of version 1; its transfer limit lowered to 100 GB (no warning).
        page.get_by_role("button", name="New draft version").click()
        expect(page.get_by_role("heading", level=1)).to_contain_text("Basic · version 2")
        expect(page.locator(".messages")).to_contain_text("Draft version 2 of Basic")
        v2 = transfer_row(c["basic"], 2)
        row = page.locator(f"#ent-{v2.pk}")
        row.get_by_role("link", name="Edit Data transfer").click()
        expect(row).to_contain_text("A draft: no subscriber has these terms")
        row.get_by_label("Limit (GB)").fill("100")
        row.get_by_role("button", name="Save").click()
        expect(page.locator("#flash")).to_contain_text("Saved Data transfer in draft version 2.")
        # The impact preview is part of the page: reload it as a PM would to see it again.
        page.reload()
        impact = page.locator("#impact")
        expect(impact).to_contain_text("2 subscribers, 1 already over")
        expect(impact.locator("tbody tr")).to_contain_text("200 GB a month")
        expect(impact.locator("tbody tr")).to_contain_text("100 GB a month")
        screenshot(page, "versions-draft-impact-desktop")

        # Publish keeping existing customers (the default choice).
        publish = page.locator("#publish")
        expect(publish.get_by_label("Keep current subscribers on their version")).to_be_checked()
        publish.get_by_role("button", name="Publish version 2").click()
        expect(page.locator(".messages")).to_contain_text(
            "Published version 2 of Basic: new subscribers get it; current subscribers keep"
        )
        assert entitlement_check("cust-0", "data-transfer").limit == Decimal("200")
        newcomer = customer_services.customer_create(external_id="new-1", name="Newcomer")
        subscription_create(customer=newcomer, plan=c["basic"])
        assert entitlement_check("new-1", "data-transfer").limit == Decimal("100")
        screenshot(page, "versions-published-desktop")

        # Version 1 is superseded: shown, not editable.
        page.locator(".versions-table").get_by_role("link", name="Version 1").click()
        expect(page.locator(".reach")).to_contain_text("superseded")
        expect(page.get_by_role("link", name="Edit Data transfer")).to_have_count(0)
        screenshot(page, "versions-superseded-desktop")

        # Another version, published migrating everyone: all three get 50 GB now.
        page.goto(live_server.url + "/catalog/plans/basic/")
        page.get_by_role("button", name="New draft version").click()
        v3 = transfer_row(c["basic"], 3)
        row = page.locator(f"#ent-{v3.pk}")
        row.get_by_role("link", name="Edit Data transfer").click()
        row.get_by_label("Limit (GB)").fill("50")
        row.get_by_role("button", name="Save").click()
        expect(page.locator("#flash")).to_contain_text("Saved Data transfer in draft version 3.")
        page.reload()
        expect(page.locator("#impact")).to_contain_text("3 subscribers, 1 already over")
        publish = page.locator("#publish")
        publish.get_by_label("Move every current subscriber to it now").check()
        publish.get_by_role("button", name="Publish version 3").click()
        expect(page.locator(".messages")).to_contain_text("3 subscribers moved to it now")
        for customer in ("cust-0", "cust-1", "new-1"):
            assert entitlement_check(customer, "data-transfer").limit == Decimal("50")

        phone = browser.new_page(viewport=PHONE)
        browser_login(phone, live_server.url, "priya", PASSWORD, next_path="/catalog/plans/basic/")
        phone.get_by_role("button", name="New draft version").click()
        expect(phone.locator("#impact")).to_be_visible()
        for name in ("versions-draft-phone",):
            width = phone.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"the draft page scrolls sideways ({width}px)"
            screenshot(phone, name)
