"""Support's main flow in a real browser (Playwright driving Debian's chromium): find a customer
by typing part of the name, grant 20 GB, see the bar change. Screenshots of each support page
at desktop and phone width go to /tmp/shots (outside the repository)."""

from decimal import Decimal

import pytest

from core.testing import (
    DESKTOP,
    PHONE,
    browser_login,
    chromium_available,
    chromium_browser,
    screenshot,
)
from customers.engine import entitlement_check
from customers.models import Grant

from .conftest import PASSWORD

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not chromium_available(), reason="chromium is not installed"),
]


def test_support_finds_a_customer_grants_20_gb_and_sees_the_bar_change(
    transactional_db, live_server, world
):
    from playwright.sync_api import expect

    with chromium_browser() as browser:
        page = browser.new_page(viewport=DESKTOP)
        browser_login(page, live_server.url, "sam", PASSWORD, next_path="/support/")
        expect(page.get_by_role("heading", name="Customers", exact=True)).to_be_visible()
        screenshot(page, "support-search-empty-desktop")

        # Search as you type: part of the name, no Enter.
        page.get_by_label("Find a customer").press_sequentially("acme cor", delay=30)
        results = page.locator("#results")
        expect(results).to_contain_text("1 match for “acme cor”.")
        assert "q=acme%20cor" in page.url  # the URL follows, so back and reload work
        screenshot(page, "support-search-desktop")
        page.get_by_label("Find a customer").fill("zzz")
        expect(results).to_contain_text("No customers match “zzz”.")
        page.get_by_label("Find a customer").fill("acme")
        results.get_by_role("link", name="Acme Corporation").click()

        storage = page.locator("#ent-storage")
        expect(storage).to_contain_text("85 GB used of 100 GB")
        expect(storage).to_contain_text("15 GB left")
        expect(storage.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "85.0")
        expect(storage).to_have_class("ent warn")
        screenshot(page, "support-customer-desktop")

        grant = page.locator("#panel-grant")
        grant.get_by_label("Feature").select_option("storage")
        grant.get_by_label("Quantity").fill("20")
        grant.get_by_label("Reason").fill("Ticket 4411: migration overran")
        grant.get_by_role("button", name="Grant units").click()

        expect(page.locator("#flash")).to_contain_text("Granted 20 GB Storage (manual).")
        storage = page.locator("#ent-storage")
        expect(storage).to_contain_text("+20 GB granted")
        expect(storage).to_contain_text("35 GB left")
        # 85 of 120 GB: 70.8%, below the warning threshold now.
        expect(storage.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "70.8")
        expect(storage).to_have_class("ent")
        expect(page.locator("#grants")).to_contain_text("Ticket 4411")
        expect(page.locator("#history")).to_contain_text("Sam created Grant: 20 GB of Storage")
        screenshot(page, "support-customer-granted-desktop")

        assert Grant.objects.get(customer=world.acme).created_by == world.support
        assert entitlement_check(world.acme, "storage").balance == Decimal("35")

        # The upgrade preview, then the phone-width pages.
        plan = page.locator("#panel-plan")
        plan.get_by_label("New plan").select_option("pro")
        expect(page.locator("#panel-plan .preview")).to_contain_text("Upgrade to Pro now")
        screenshot(page, "support-change-plan-desktop")

        phone = browser.new_page(viewport=PHONE)
        browser_login(phone, live_server.url, "sam", PASSWORD, next_path="/support/?q=acme")
        expect(phone.locator("#results")).to_contain_text("Acme Corporation")
        screenshot(phone, "support-search-phone")
        phone.locator("#results").get_by_role("link", name="Acme Corporation").click()
        expect(phone.locator("#ent-storage")).to_contain_text("35 GB left")
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the page scrolls sideways ({width}px)"
        screenshot(phone, "support-customer-phone")


def test_the_top_up_button_sells_once_on_a_double_click(transactional_db, live_server, world):
    from playwright.sync_api import expect

    from billing.models import TopUpPurchase

    with chromium_browser() as browser:
        page = browser.new_page(viewport=DESKTOP)
        browser_login(
            page, live_server.url, "sam", PASSWORD, next_path=f"/support/customers/{world.acme.pk}/"
        )
        panel = page.locator("#panel-grant")
        panel.get_by_label("Pack").select_option("extra-20-gb")
        panel.get_by_role("button", name="Sell and invoice").dblclick()
        expect(page.locator("#flash")).to_contain_text("Sold Extra 20 GB: invoice INV-")
        expect(page.locator("#ent-storage")).to_contain_text("+20 GB granted")
        assert TopUpPurchase.objects.filter(customer=world.acme).count() == 1


def test_keyboard_users_start_in_the_search_and_see_focus(transactional_db, live_server, world):
    with chromium_browser() as browser:
        page = browser.new_page(viewport=DESKTOP)
        browser_login(page, live_server.url, "sam", PASSWORD, next_path="/support/")
        assert page.evaluate("document.activeElement.id") == "id_q"  # autofocus
        page.keyboard.press("Tab")
        focused = page.evaluate(
            "[document.activeElement.textContent.trim(),"
            " getComputedStyle(document.activeElement).outlineStyle]"
        )
        assert focused == ["Search", "solid"]


def test_support_filters_recent_usage_and_reverses_an_event(transactional_db, live_server, world):
    from playwright.sync_api import expect

    from customers.engine import entitlement_consume

    for n, quantity in enumerate(["120", "50", "20"]):
        assert entitlement_consume(world.acme, "data-transfer", quantity, f"export-{n}").allowed
    with chromium_browser() as browser:
        page = browser.new_page(viewport=DESKTOP)
        browser_login(
            page, live_server.url, "sam", PASSWORD, next_path=f"/support/customers/{world.acme.pk}/"
        )
        usage = page.locator("#usage-events")
        expect(usage).to_contain_text("Level reported")  # the storage level, not reversible

        # The feature filter swaps the list in place (htmx)
        page.locator("#usage").get_by_label("Feature").select_option("data-transfer")
        expect(usage).not_to_contain_text("Level reported")
        expect(usage.locator("tbody tr")).to_have_count(3)
        screenshot(page, "support-usage-desktop")

        # Reverse the newest: a confirmation with the reason, then the new numbers
        page.get_by_role("link", name="Reverse usage event export-2").click()
        expect(page.get_by_role("heading", name="Reverse usage event export-2?")).to_be_visible()
        page.get_by_label("Reason").fill("Ticket 5120: the export ran twice")
        page.get_by_role("button", name="Reverse usage").click()

        expect(page.locator(".messages")).to_contain_text("Reversed usage event export-2: 20 GB")
        expect(page.locator(".messages")).to_contain_text("Usage now 170 GB")
        row = page.locator("#usage-events tbody tr", has_text="export-2")
        expect(row).to_contain_text("Reversed")
        expect(row).to_contain_text("by sam: Ticket 5120: the export ran twice")
        expect(page.locator("#history")).to_contain_text("Sam reversed Usage event export-2")
        screenshot(page, "support-usage-reversed-desktop")
        assert entitlement_check(world.acme, "data-transfer").usage == Decimal("170")
