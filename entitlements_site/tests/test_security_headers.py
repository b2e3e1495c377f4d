"""Security headers (issue 9): frame denial, nosniff, Referrer-Policy, HSTS over HTTPS, and a
Content-Security-Policy without inline scripts, on every kind of page; no template carries an
inline script or an on* handler; and in a real browser the pages load with no CSP violation
and htmx still works."""

import re
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.template import engines
from djmoney.money import Money

from billing.models import Invoice
from billing.services.subscriptions import subscription_create
from catalog.tests.factories import FeatureFactory, PlanEntitlementFactory, PlanFactory
from core.roles import PRODUCT_MANAGERS, SUPPORT
from core.services import api_key_create
from core.testing import DESKTOP, browser_login, chromium_available, chromium_browser
from customers import services as customer_services
from customers.engine import usage_record_batch

PASSWORD = "headers-test-password"
ROOT = Path(__file__).resolve().parents[2]


def _user(username: str, group: str | None = None, **fields):
    user = get_user_model().objects.create_user(username, password=PASSWORD, **fields)
    if group:
        user.groups.add(Group.objects.get_or_create(name=group)[0])
    return user


@pytest.fixture
def site(db, settings):
    """A plan, a customer at 85 GB of 100 with a dashboard login, and the two staff roles."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    storage = FeatureFactory(key="storage", name="Storage", latest=True)
    basic = PlanFactory(key="basic", name="Basic", price=Money("50.00", "USD"), rank=20)
    PlanEntitlementFactory(plan=basic, feature=storage, limit=Decimal("100"))
    acme = customer_services.customer_create(
        external_id="acme", name="Acme Corporation", email="ops@acme.test"
    )
    subscription_create(customer=acme, plan=basic)
    result = usage_record_batch(
        [{"event_id": "h-1", "customer": "acme", "feature": "storage", "quantity": "85"}]
    )
    assert result.accepted == 1
    casey = _user("casey")
    customer_services.customer_user_link(user=casey, customer=acme)
    return {
        "customer": acme,
        "invoice": Invoice.objects.get(customer=acme),
        "casey": casey,
        "sam": _user("sam", SUPPORT, is_staff=True),
        "priya": _user("priya", PRODUCT_MANAGERS, is_staff=True),
    }


def csp_of(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    directives = [part.strip().split() for part in header.split(";") if part.strip()]
    return {name: values for name, *values in directives}


# (who, path) of every kind of page: public, each role's pages, the admin, the API and its docs.
PAGES = [
    (None, "/accounts/login/"),
    (None, "/api/docs/"),
    (None, "/api/schema/"),
    (None, "/healthz"),
    ("casey", "/dashboard/"),
    ("casey", "/dashboard/plans/"),
    ("casey", "invoice"),
    ("sam", "/support/"),
    ("sam", "customer"),
    ("priya", "/catalog/"),
    ("priya", "/catalog/plans/basic/"),
    ("priya", "/admin/"),
    ("priya", "/admin/catalog/plan/"),
    ("api", "/api/v1/customers/acme/entitlements"),
]


def _get(client, site, who, path):
    if path == "invoice":
        path = f"/billing/invoices/{site['invoice'].number}/"
    elif path == "customer":
        path = f"/support/customers/{site['customer'].pk}/"
    if who == "api":
        key = api_key_create(name="headers")[1]
        return client.get(path, HTTP_AUTHORIZATION=f"Bearer {key}")
    if who:
        client.force_login(site[who])
    return client.get(path)


@pytest.mark.parametrize(("who", "path"), PAGES)
def test_every_kind_of_page_carries_the_security_headers(client, site, who, path):
    response = _get(client, site, who, path)

    assert response.status_code == 200, (who, path)
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    csp = csp_of(response)
    assert csp["script-src"] == ["'self'"]  # no inline script, no eval, no other origin
    assert csp["default-src"] == ["'self'"]
    assert csp["object-src"] == ["'none'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["base-uri"] == ["'self'"]
    assert csp["form-action"] == ["'self'"]
    # Inline styles only: the usage bars' widths, htmx's indicator style, the admin's few.
    assert csp["style-src"] == ["'self'", "'unsafe-inline'"]


@pytest.mark.parametrize(("who", "path"), [(w, p) for w, p in PAGES if w is not None])
def test_pages_with_a_customers_data_or_money_are_never_cached(client, site, who, path):
    response = _get(client, site, who, path)

    assert response.status_code == 200, (who, path)
    assert "no-store" in response["Cache-Control"]
    assert "private" in response["Cache-Control"] or who == "api"


def test_the_lean_check_and_consume_answers_are_never_cached(client, site):
    key = api_key_create(name="headers")[1]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    check = client.get("/api/v1/customers/acme/entitlements/storage", **auth)
    consume = client.post(
        "/api/v1/customers/acme/entitlements/storage/consume",
        {"quantity": "1", "event_id": "h-2"},
        content_type="application/json",
        **auth,
    )
    assert check.status_code == consume.status_code == 200
    assert check["Cache-Control"] == consume["Cache-Control"] == "no-store"


def test_hsts_is_sent_over_https_only(client, db, settings):
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_HSTS_PRELOAD = True

    secure = client.get("/accounts/login/", secure=True)
    assert secure["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert "Strict-Transport-Security" not in client.get("/accounts/login/")


def test_the_session_and_csrf_cookies_are_http_only_where_they_can_be(client, site):
    response = client.post("/accounts/login/", {"username": "casey", "password": PASSWORD})
    assert response.status_code == 302
    assert response.cookies["sessionid"]["httponly"]
    assert response.cookies["sessionid"]["samesite"] == "Lax"


# --- templates: no inline script ----------------------------------------------------------------

INLINE_SCRIPT = re.compile(r"<script\b(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>")
HANDLER = re.compile(r"<[^>]*\son[a-z]+\s*=", re.IGNORECASE)
JS_URL = re.compile(r"""(href|src|action)\s*=\s*["']\s*javascript:""", re.IGNORECASE)


def _project_templates() -> list[Path]:
    dirs = [Path(d) for d in django_settings.TEMPLATES[0]["DIRS"]]
    dirs += [ROOT / app / "templates" for app in ("catalog", "customers", "billing", "support")]
    dirs += [ROOT / "dashboard" / "templates", ROOT / "entitlements_site" / "templates"]
    return sorted(p for d in dirs if d.exists() for p in d.rglob("*.html"))


def test_no_template_has_an_inline_script_or_handler():
    """The policy forbids them: a page that needs behaviour gets a static .js file."""
    templates = _project_templates()
    assert len(templates) > 20
    problems = []
    for path in templates:
        text = path.read_text()
        for pattern in (INLINE_SCRIPT, HANDLER, JS_URL):
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                problems.append(f"{path.relative_to(ROOT)}:{line}: {match.group(0)[:60]}")
    assert not problems, "\n".join(problems)


def test_the_checker_itself_finds_inline_scripts_and_handlers():
    assert INLINE_SCRIPT.search("<script>alert(1)</script>")
    assert INLINE_SCRIPT.search('<script type="module">x()</script>')
    assert not INLINE_SCRIPT.search('<script src="/static/a.js" defer></script>')
    assert not INLINE_SCRIPT.search('<script type="application/json" id="d">{}</script>')
    assert HANDLER.search('<button onclick="x()">')
    assert not HANDLER.search('<button hx-on="x" data-print>')
    assert JS_URL.search('<a href="javascript:void(0)">')


def test_htmx_comes_as_a_script_file():
    html = engines["django"].from_string("{% load django_htmx %}{% htmx_script %}").render({})
    assert "<script" in html and "src=" in html
    assert not INLINE_SCRIPT.search(html)


# --- in a browser -------------------------------------------------------------------------------

WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (event) => {
  const where = `${event.sourceFile}:${event.lineNumber}`;
  window.__csp.push(`${event.violatedDirective} ${event.blockedURI} ${where}`);
});
window.print = () => { window.__printed = true; };
"""


@pytest.mark.browser
@pytest.mark.skipif(not chromium_available(), reason="chromium is not installed")
def test_pages_load_without_csp_violations_and_htmx_works(transactional_db, live_server, site):
    from playwright.sync_api import expect

    violations: list[str] = []

    def watch(page):
        page.add_init_script(WATCH_CSP)
        page.on(
            "console",
            lambda message: (
                violations.append(f"{page.url}: {message.text}")
                if "Content Security Policy" in message.text
                else None
            ),
        )

    def collect(page):
        violations.extend(f"{page.url}: {v}" for v in page.evaluate("window.__csp || []"))

    with chromium_browser() as browser:
        # The end customer: the dashboard (htmx polls), plans, the invoice and its Print button.
        page = browser.new_page(viewport=DESKTOP)
        watch(page)
        browser_login(page, live_server.url, "casey", PASSWORD, next_path="/dashboard/")
        expect(page.locator("body")).to_contain_text("85 GB")
        assert page.evaluate("typeof window.htmx") == "object"
        collect(page)
        page.goto(f"{live_server.url}/dashboard/plans/")
        page.wait_for_load_state("networkidle")
        collect(page)
        page.goto(f"{live_server.url}/billing/invoices/{site['invoice'].number}/")
        page.get_by_role("button", name="Print").click()
        assert page.evaluate("window.__printed") is True  # print.js, not an onclick
        collect(page)
        page.close()

        # Support: search as you type updates the results (htmx), then the customer page.
        page = browser.new_page(viewport=DESKTOP)
        watch(page)
        browser_login(page, live_server.url, "sam", PASSWORD, next_path="/support/")
        page.get_by_label("Find a customer").press_sequentially("acme", delay=30)
        results = page.locator("#results")
        expect(results).to_contain_text("Acme Corporation")
        collect(page)
        results.get_by_role("link", name="Acme Corporation").click()
        expect(page.locator("#ent-storage")).to_contain_text("85 GB used of 100 GB")
        collect(page)
        page.close()

        # The plan editor: an inline edit swaps the row for a form (htmx), and the admin.
        page = browser.new_page(viewport=DESKTOP)
        watch(page)
        browser_login(page, live_server.url, "priya", PASSWORD, next_path="/catalog/plans/basic/")
        row = page.locator("tr", has_text="Storage").first
        row.get_by_role("link", name="Edit Storage").click()
        expect(page.locator("tr.editing")).to_be_visible()
        collect(page)
        for path in ("/admin/", "/admin/catalog/plan/", "/admin/catalog/plan/add/"):
            page.goto(live_server.url + path)
            page.wait_for_load_state("networkidle")
            collect(page)
        page.close()

        # The API's docs page: Swagger UI renders the schema under the same policy.
        page = browser.new_page(viewport=DESKTOP)
        watch(page)
        page.goto(f"{live_server.url}/api/docs/")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("Entitlements API")
        collect(page)
        page.goto(f"{live_server.url}/accounts/login/")
        collect(page)
        page.close()

    assert not violations, "\n".join(violations)
