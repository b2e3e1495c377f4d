"""The end customer's main flow in a real browser (Playwright driving Debian's chromium): near
the storage cap they see the warning, buy the 20 GB top-up once (a double click), see the new
balance, then upgrade and see the proration invoice. Every page is also checked at phone width
(nothing wider than the screen) and saved as a screenshot under SCREENSHOT_DIR."""

import re

import pytest
from django.db import connection

from billing.models import Invoice, InvoicePurpose, TopUpPurchase
from core.testing import (
    DESKTOP,
    PHONE,
    browser_login,
    chromium_available,
    chromium_browser,
    screenshot,
)
from customers.models import Grant

from .conftest import PASSWORD, report

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not chromium_available(), reason="chromium is not installed"),
]


def test_near_the_cap_buy_a_top_up_once_then_upgrade(live_server, world):
    with chromium_browser() as browser:
        page = browser.new_page(viewport=DESKTOP)
        browser_login(page, live_server.url, "alice", PASSWORD, "/dashboard/")
        assert page.url.endswith("/dashboard/")

        # Given 85 of 100 GB stored, the storage card warns.
        storage = page.locator("#usage-storage")
        assert "You have used 85% of your Storage." in storage.inner_text()
        assert storage.get_by_role("progressbar").get_attribute("aria-valuenow") == "85"
        assert page.locator("#chart-storage svg rect.chart-bar").count() > 0
        screenshot(page, "browser-dashboard-overview")

        # The cards refresh through htmx, without a reload.
        report(world.a, "storage", "88")
        page.evaluate(
            "htmx.ajax('GET', '/dashboard/', {target: '#usage-cards', swap: 'outerHTML'})"
        )
        page.wait_for_function(
            "document.querySelector('#usage-storage').innerText.includes('88 GB')"
        )
        assert "You have used 88% of your Storage." in storage.inner_text()

        # Buy the 20 GB top-up; a double click on the confirm button buys once.
        page.click("#buy-storage")
        page.wait_for_url("**/dashboard/buy/storage/")
        page.get_by_role("link", name="Choose Extra 20 GB").click()
        page.wait_for_url("**/dashboard/buy/pack/extra-20-gb/")
        screenshot(page, "browser-topup-confirm")
        page.get_by_role("button", name="Pay $10.00").dblclick()
        page.wait_for_url("**/dashboard/buy/receipt/**")
        page.wait_for_load_state("networkidle")
        assert TopUpPurchase.objects.filter(customer=world.a).count() == 1
        assert Grant.objects.filter(customer=world.a).count() == 1
        topups = Invoice.objects.filter(customer=world.a, purpose=InvoicePurpose.TOPUP)
        assert topups.count() == 1
        receipt = page.locator("main").inner_text()
        assert "Extra 20 GB added" in receipt and topups.get().number in receipt
        assert "32 GB" in receipt  # left: 100 + 20 - 88
        screenshot(page, "browser-topup-receipt")

        # Upgrade: the preview, then the proration invoice.
        page.get_by_role("link", name="Upgrade", exact=True).click()  # the navigation
        page.wait_for_url("**/dashboard/plans/")
        assert "Storage: 100 GB → 1,000 GB" in page.locator("main").inner_text()
        page.get_by_role("link", name="Upgrade to Business").click()
        page.wait_for_url("**/dashboard/plans/business/")
        assert "Total due now" in page.locator("main").inner_text()
        screenshot(page, "browser-upgrade-preview")
        page.get_by_role("button", name=re.compile(r"^Confirm upgrade")).click()
        page.wait_for_url("**/dashboard/plans/changed/**")
        invoice = Invoice.objects.get(customer=world.a, purpose=InvoicePurpose.PLAN_CHANGE)
        text = page.locator("main").inner_text()
        assert f"Invoice {invoice.number}" in text and "You are on Business" in text
        assert "Unused time on Basic" in text and "Remaining time on Business" in text
        screenshot(page, "browser-upgrade-invoice")
        page.close()


DASHBOARD_PAGES = [
    "/dashboard/",
    "/dashboard/buy/storage/",
    "/dashboard/buy/pack/extra-20-gb/",
    "/dashboard/plans/",
    "/dashboard/plans/business/",
    "/dashboard/plans/starter/",
    "/dashboard/invoices/",
    "/dashboard/notifications/",
]


def test_every_page_fits_a_phone_and_a_desktop(live_server, world):
    with chromium_browser() as browser:
        for label, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            page = browser.new_page(viewport=viewport)
            browser_login(page, live_server.url, "alice", PASSWORD, "/dashboard/")
            for path in DASHBOARD_PAGES:
                page.goto(live_server.url + path)
                page.wait_for_load_state("networkidle")
                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= viewport["width"], f"{path} is {width}px wide on a {label}"
                assert page.locator("h1").count() == 1, path
                name = "browser-" + (path.strip("/").replace("/", "-")) + f"-{label}"
                screenshot(page, name)
            page.close()


def test_the_dashboard_is_usable_with_the_keyboard(live_server, world):
    with chromium_browser() as browser:
        page = browser.new_page(viewport=DESKTOP)
        browser_login(page, live_server.url, "alice", PASSWORD, "/dashboard/")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Skip to content"
        # Tab on until the storage card's "Buy more" has the focus, then follow it.
        for _ in range(30):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == "buy-storage":
                break
        else:
            pytest.fail("Buy more is not reachable with the keyboard")
        page.keyboard.press("Enter")
        page.wait_for_url("**/dashboard/buy/storage/")
        page.close()


def test_the_same_confirmation_posted_twice_buys_once(live_server, world):
    """The server side of "a double click buys once": the confirm form's data (its CSRF token
    and idempotency key) POSTed twice from the page, then the form itself submitted once more,
    make one purchase. The two POSTs race on PostgreSQL; the test's in-memory SQLite cannot
    take two writers at once (a file database queues them), so there they follow each other."""
    at_once = connection.vendor == "postgresql"
    with chromium_browser() as browser:
        page = browser.new_page(viewport=DESKTOP)
        browser_login(page, live_server.url, "alice", PASSWORD, "/dashboard/buy/pack/extra-20-gb/")
        statuses = page.evaluate(
            """async (atOnce) => {
                const form = document.querySelector("form[data-submit-once]");
                const post = () => fetch(location.href, {
                    method: "POST", body: new FormData(form), redirect: "manual",
                });
                const answers = atOnce ? await Promise.all([post(), post()])
                                       : [await post(), await post()];
                return answers.map((a) => (a.type === "opaqueredirect" ? 302 : a.status));
            }""",
            at_once,
        )
        assert statuses == [302, 302]
        page.get_by_role("button", name="Pay $10.00").click()
        page.wait_for_url("**/dashboard/buy/receipt/**")
        assert "Extra 20 GB added" in page.locator("main").inner_text()
        assert TopUpPurchase.objects.filter(customer=world.a).count() == 1
        assert Grant.objects.filter(customer=world.a).count() == 1
        assert Invoice.objects.filter(customer=world.a, purpose=InvoicePurpose.TOPUP).count() == 1
        page.close()
