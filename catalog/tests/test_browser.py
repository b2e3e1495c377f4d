"""The plan editor's main flow in a real browser (Playwright driving Debian's chromium): a
product manager adds a feature to an existing plan and sees how many subscribers it reaches,
edits a row inline and removes one. Screenshots of each catalog page at desktop and phone width
go to /tmp/shots (outside the repository)."""

from decimal import Decimal

import pytest

from catalog.models import PlanEntitlement
from core.testing import (
    DESKTOP,
    PHONE,
    browser_login,
    chromium_available,
    chromium_browser,
    screenshot,
)

from .test_views import build_storage_catalog, entitlement, user_in

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not chromium_available(), reason="chromium is not installed"),
]

PASSWORD = "secret-pass-123"


@pytest.fixture
def storage_catalog(transactional_db):
    return build_storage_catalog()


@pytest.fixture
def pm_login(transactional_db):
    user_in("priya", "Product managers", is_staff=True, first_name="Priya")
    return "priya"


def test_a_pm_adds_a_feature_to_a_plan_and_sees_whom_it_reaches(
    transactional_db, live_server, storage_catalog, pm_login
):
    from playwright.sync_api import expect

    c = storage_catalog
    with chromium_browser() as browser:
        page = browser.new_page(viewport=DESKTOP)
        page.on("dialog", lambda dialog: dialog.accept())
        browser_login(page, live_server.url, pm_login, PASSWORD, next_path="/")
        page.get_by_role("link", name="Plans and features").click()
        expect(page.get_by_role("heading", name="Plans", exact=True)).to_be_visible()
        screenshot(page, "catalog-plans-desktop")
        page.get_by_role("link", name="Basic", exact=True).click()

        # Choosing the feature swaps in the fields of its kind and the reach.
        add = page.locator("#add-feature")
        add.get_by_label("Feature").select_option("file-versioning")
        fields = page.locator("#add-fields")
        expect(fields).to_contain_text("This change applies at once to 2 active subscribers.")
        expect(fields.get_by_label("Enabled")).to_be_checked()
        expect(fields.get_by_label("Limit")).to_have_count(0)
        screenshot(page, "catalog-plan-add-desktop")
        add.get_by_role("button", name="Add to Basic").click()
        expect(page.locator("#flash")).to_contain_text(
            "Added File versioning to Basic. It applies at once to 2 active subscribers."
        )
        new_row = page.locator(f"#ent-{entitlement(c['basic'], c['versioning']).pk}")
        expect(new_row).to_contain_text("Included")

        # Inline edit: the row becomes a form, saving brings the row back.
        storage = entitlement(c["basic"], c["storage"])
        row = page.locator(f"#ent-{storage.pk}")
        row.get_by_role("link", name="Edit Storage").click()
        expect(row).to_have_class("editing")
        expect(row.get_by_label("Limit (GB)")).to_be_focused()  # keyboard users land in the form
        expect(row).to_contain_text("This change applies at once to 2 active subscribers.")
        screenshot(page, "catalog-plan-edit-desktop")
        row.get_by_label("Limit (GB)").fill("150")
        row.get_by_role("button", name="Save").click()
        expect(row).to_contain_text("150 GB")
        expect(page.locator("#flash")).to_contain_text("Saved Storage on Basic.")
        storage.refresh_from_db()
        assert storage.limit == Decimal("150")

        # A bad value stays in the form with its error. (Wait for htmx to focus the first field
        # before typing elsewhere, as a person would.)
        row.get_by_role("link", name="Edit Storage").click()
        expect(row.get_by_label("Limit (GB)")).to_be_focused()
        row.get_by_label("Notify at (%)").fill("80, 150")
        row.get_by_role("button", name="Save").click()
        expect(row).to_contain_text("Each threshold is a percentage from 1 to 100.")
        row.get_by_role("link", name="Cancel").click()
        expect(row).not_to_have_class("editing")
        expect(row.get_by_role("link", name="Edit Storage")).to_be_focused()

        # Remove, after the confirm dialog.
        tier = entitlement(c["basic"], c["tier"])
        page.get_by_role("button", name="Remove Support tier").click()
        expect(page.locator(f"#ent-{tier.pk}")).to_have_count(0)
        expect(page.locator("#flash")).to_contain_text("Removed Support tier from Basic.")
        assert not PlanEntitlement.objects.filter(pk=tier.pk).exists()
        screenshot(page, "catalog-plan-desktop")

        page.get_by_role("link", name="Compare", exact=True).click()
        expect(page.locator("table.comparison")).to_contain_text("then $0.10 per GB")
        screenshot(page, "catalog-compare-desktop")

        phone = browser.new_page(viewport=PHONE)
        browser_login(phone, live_server.url, pm_login, PASSWORD, next_path="/catalog/")
        screenshot(phone, "catalog-plans-phone")
        for path, name in [
            ("/catalog/plans/basic/", "catalog-plan-phone"),
            ("/catalog/compare/", "catalog-compare-phone"),
        ]:
            phone.goto(live_server.url + path)
            width = phone.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"{path} scrolls sideways ({width}px)"
            screenshot(phone, name)
        phone.goto(live_server.url + "/catalog/plans/basic/")
        phone.get_by_role("link", name="Edit Data transfer").click()
        expect(phone.locator("tr.editing")).to_contain_text("applies at once")
        screenshot(phone, "catalog-plan-edit-phone")
