"""The plan editor at /catalog/ as product managers use it, and who else may (nobody)."""

import re
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse
from djmoney.money import Money

from billing.services.subscriptions import subscription_create
from catalog import selectors
from catalog.models import Plan, PlanEntitlement
from core.roles import PRODUCT_MANAGERS, SUPPORT
from customers import services as customer_services
from customers.engine import entitlement_check

from .factories import FeatureFactory, PlanEntitlementFactory, PlanFactory

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


# --- who is who -------------------------------------------------------------------------------


def user_in(username: str, group: str | None = None, **fields):
    user = get_user_model().objects.create_user(
        username=username, password="secret-pass-123", **fields
    )
    if group:
        # get_or_create: a transactional test before this one may have flushed the groups
        # that the data migrations made; the pages check the group's name only.
        user.groups.add(Group.objects.get_or_create(name=group)[0])
    return user


@pytest.fixture
def pm():
    return user_in("priya", PRODUCT_MANAGERS, is_staff=True, first_name="Priya")


@pytest.fixture
def pm_client(client, pm):
    client.force_login(pm)
    return client


@pytest.fixture
def support_client(client):
    client.force_login(user_in("sam", SUPPORT, is_staff=True))
    return client


@pytest.fixture
def customer_client(client, storage_catalog):
    customer = customer_services.customer_create(external_id="c-1", name="Casey Co")
    user = user_in("casey")
    customer_services.customer_user_link(user=user, customer=customer)
    client.force_login(user)
    return client


# --- a catalog with subscribers ---------------------------------------------------------------


@pytest.fixture
def storage_catalog():
    return build_storage_catalog()


def build_storage_catalog() -> dict:
    """Basic ($50, rank 20): Storage 100 GB (a level), Data transfer 200 GB, Support tier
    "standard"; Pro ($150, rank 30) adds File versioning; Legacy is archived; Internal private.
    Two customers on Basic, one on Pro."""
    storage = FeatureFactory(key="storage", name="Storage", latest=True)
    transfer = FeatureFactory(key="data-transfer", name="Data transfer", metered=True)
    versioning = FeatureFactory(key="file-versioning", name="File versioning")
    tier = FeatureFactory(key="support-tier", name="Support tier", config=True)
    basic = PlanFactory(key="basic", name="Basic", price=Money("50.00", "USD"), rank=20)
    PlanEntitlementFactory(plan=basic, feature=storage, limit=Decimal("100"))
    PlanEntitlementFactory(plan=basic, feature=transfer, limit=Decimal("200"))
    PlanEntitlementFactory(plan=basic, feature=tier, value="standard")
    pro = PlanFactory(key="pro", name="Pro", price=Money("150.00", "USD"), rank=30)
    PlanEntitlementFactory(plan=pro, feature=storage, limit=Decimal("1000"))
    PlanEntitlementFactory(
        plan=pro,
        feature=transfer,
        limit=Decimal("500"),
        enforcement="soft",
        overage_price=Money("0.10", "USD"),
    )
    PlanEntitlementFactory(plan=pro, feature=versioning, enabled=True)
    PlanFactory(key="legacy", name="Legacy", status="archived", rank=5)
    PlanFactory(key="internal", name="Internal", public=False, rank=50)
    customers = []
    for n, plan in enumerate([basic, basic, pro]):
        customer = customer_services.customer_create(external_id=f"cust-{n}", name=f"Cust {n}")
        subscription_create(customer=customer, plan=plan)
        customers.append(customer)
    return {
        "basic": basic,
        "pro": pro,
        "storage": storage,
        "transfer": transfer,
        "versioning": versioning,
        "tier": tier,
        "customers": customers,
    }


def entitlement(plan: Plan, feature) -> PlanEntitlement:
    return PlanEntitlement.objects.get(plan=plan, feature=feature)


def page_urls(c) -> list[str]:
    basic = c["basic"]
    e = entitlement(basic, c["storage"])
    return [
        reverse("catalog:plan_list"),
        reverse("catalog:plan_compare"),
        reverse("catalog:plan_detail", args=["basic"]),
        reverse("catalog:entitlement_edit", args=["basic", e.pk]),
        reverse("catalog:entitlement_remove", args=["basic", e.pk]),
    ]


# --- access -----------------------------------------------------------------------------------


def test_every_page_answers_200_for_a_product_manager(pm_client, storage_catalog):
    for url in page_urls(storage_catalog):
        assert pm_client.get(url).status_code == 200, url


def test_anonymous_is_sent_to_the_login_page(client, storage_catalog):
    for url in page_urls(storage_catalog):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login") + "?next=")


@pytest.mark.parametrize("who", ["support_client", "customer_client"])
def test_support_agents_and_end_customers_get_403(request, who, storage_catalog):
    other = request.getfixturevalue(who)
    for url in page_urls(storage_catalog):
        assert other.get(url).status_code == 403, url
    e = entitlement(storage_catalog["basic"], storage_catalog["storage"])
    response = other.post(
        reverse("catalog:entitlement_edit", args=["basic", e.pk]), {f"e{e.pk}-limit": "1"}
    )
    assert response.status_code == 403
    assert entitlement(storage_catalog["basic"], storage_catalog["storage"]).limit == 100


def test_a_superuser_may_edit_plans(client, storage_catalog):
    client.force_login(user_in("root", is_superuser=True, is_staff=True))
    assert client.get(reverse("catalog:plan_list")).status_code == 200


def test_forms_need_the_csrf_token(pm, storage_catalog):
    client = Client(enforce_csrf_checks=True)
    client.force_login(pm)
    e = entitlement(storage_catalog["basic"], storage_catalog["storage"])
    response = client.post(
        reverse("catalog:entitlement_edit", args=["basic", e.pk]),
        {f"e{e.pk}-limit": "5", f"e{e.pk}-reset": "billing_period", f"e{e.pk}-enforcement": "hard"},
        **HTMX,
    )
    assert response.status_code == 403
    page = client.get(reverse("catalog:plan_detail", args=["basic"])).content.decode()
    assert 'hx-headers=\'{"X-CSRFToken": "' in page
    assert "csrfmiddlewaretoken" in page


# --- plans list and plan page -----------------------------------------------------------------


def test_plans_list_shows_price_status_subscribers_and_entitlements(pm_client, storage_catalog):
    response = pm_client.get(reverse("catalog:plan_list"))
    plans = {row["plan"].key: row for row in response.context["plans"]}
    assert plans["basic"]["price"] == "$50.00 / month"
    assert plans["basic"]["plan"].subscriber_count == 2
    assert plans["basic"]["plan"].entitlement_count == 3
    assert plans["pro"]["plan"].subscriber_count == 1
    assert plans["legacy"]["plan"].subscriber_count == 0
    html = response.content.decode()
    assert "Archived" in html
    assert reverse("catalog:plan_detail", args=["basic"]) in html


def test_plan_page_lists_entitlements_in_words_and_loads_htmx_from_django_htmx(
    pm_client, storage_catalog
):
    html = pm_client.get(reverse("catalog:plan_detail", args=["basic"])).content.decode()
    assert "100 GB" in html
    assert "200 GB a month" in html
    assert "standard" in html
    assert "2</strong> active subscribers" in html
    assert "/static/django_htmx/htmx-2.min.js" in html
    # Every script and stylesheet is ours (not the page's text: a random CSRF token may
    # contain any three letters, "cdn" among them).
    assets = re.findall(r'<(?:script|link)\b[^>]*?(?:src|href)="([^"]*)"', html)
    assert assets and all(a.startswith("/") and "cdn" not in a.lower() for a in assets), assets
    assert "unpkg.com" not in html
    assert "/static/css/staff.css" in html


def test_unknown_plan_is_404(pm_client, storage_catalog):
    assert pm_client.get(reverse("catalog:plan_detail", args=["nope"])).status_code == 404


# --- inline edit ------------------------------------------------------------------------------


def test_edit_under_htmx_returns_the_row_as_a_form_with_the_subscriber_count(
    pm_client, storage_catalog
):
    e = entitlement(storage_catalog["basic"], storage_catalog["storage"])
    response = pm_client.get(reverse("catalog:entitlement_edit", args=["basic", e.pk]), **HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert f'<tr id="ent-{e.pk}" class="editing">' in html
    assert "This change applies at once to 2 active subscribers." in html
    assert f'name="e{e.pk}-limit"' in html and 'value="100"' in html
    assert f'name="e{e.pk}-value"' not in html  # a config field; storage is metered


def test_edit_count_leaves_out_subscribers_with_an_override(pm_client, storage_catalog):
    c = storage_catalog
    customer_services.override_create(
        customer=c["customers"][0], feature=c["storage"], reason="Deal", limit=Decimal("5000")
    )
    e = entitlement(c["basic"], c["storage"])
    html = pm_client.get(
        reverse("catalog:entitlement_edit", args=["basic", e.pk]), **HTMX
    ).content.decode()
    assert "applies at once to 1 active subscriber (1 more has an override for Storage" in html


def test_saving_under_htmx_changes_the_limit_for_subscribers_and_returns_the_row(
    pm_client, storage_catalog
):
    c = storage_catalog
    e = entitlement(c["basic"], c["transfer"])
    p = f"e{e.pk}"
    response = pm_client.post(
        reverse("catalog:entitlement_edit", args=["basic", e.pk]),
        {
            f"{p}-limit": "250",
            f"{p}-reset": "month",
            f"{p}-enforcement": "soft",
            f"{p}-overage_price": "0.05",
            f"{p}-notify_at": "50, 90",
            f"{p}-show_on_invoice": "on",
        },
        **HTMX,
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert f'<tr id="ent-{e.pk}">' in html
    assert "250 GB a month" in html
    assert "then $0.05 per GB" in html
    assert "Saved Data transfer on Basic. It applies at once to 2 active subscribers." in html
    assert 'hx-swap-oob="true"' in html
    e.refresh_from_db()
    assert (e.limit, e.reset, e.enforcement, e.notify_at) == (
        Decimal("250"),
        "month",
        "soft",
        [50, 90],
    )
    assert e.overage_price == Money("0.05", "USD")
    assert e.show_on_invoice is True
    # The subscribers see it at once.
    assert entitlement_check(c["customers"][0], "data-transfer").limit == Decimal("250")


def test_saving_without_javascript_redirects_with_a_message(pm_client, storage_catalog):
    c = storage_catalog
    e = entitlement(c["basic"], c["storage"])
    p = f"e{e.pk}"
    response = pm_client.post(
        reverse("catalog:entitlement_edit", args=["basic", e.pk]),
        {
            f"{p}-unlimited": "on",
            f"{p}-limit": "100",
            f"{p}-reset": "billing_period",
            f"{p}-enforcement": "hard",
            f"{p}-notify_at": "",
        },
        follow=True,
    )
    assert response.redirect_chain[-1][0].endswith(f"/catalog/plans/basic/#ent-{e.pk}")
    assert "It applies at once to 2 active subscribers." in response.content.decode()
    e.refresh_from_db()
    assert e.unlimited is True and e.limit is None and e.notify_at == []


def test_toggling_a_gate_and_changing_a_config_value(pm_client, storage_catalog):
    c = storage_catalog
    gate = entitlement(c["pro"], c["versioning"])
    pm_client.post(reverse("catalog:entitlement_edit", args=["pro", gate.pk]), {}, **HTMX)
    gate.refresh_from_db()
    assert gate.enabled is False
    tier = entitlement(c["basic"], c["tier"])
    pm_client.post(
        reverse("catalog:entitlement_edit", args=["basic", tier.pk]),
        {f"e{tier.pk}-value": "priority"},
        **HTMX,
    )
    tier.refresh_from_db()
    assert tier.value == "priority"


@pytest.mark.parametrize(
    "data, field, message",
    [
        ({"limit": "-5"}, "limit", "must not be negative"),
        ({"limit": "10", "overage_price": "0.5"}, "overage_price", "only to a soft limit"),
        ({"limit": ""}, "limit", "needs a limit, or tick unlimited"),
        ({"limit": "10", "notify_at": "80, 120"}, "notify_at", "from 1 to 100"),
        ({"limit": "10", "notify_at": "eighty"}, "notify_at", "Whole percentages"),
        ({"limit": "10", "reset": "fortnight"}, "reset", "Select a valid choice"),
    ],
)
def test_bad_input_shows_form_errors_and_changes_nothing(
    pm_client, storage_catalog, data, field, message
):
    e = entitlement(storage_catalog["basic"], storage_catalog["transfer"])
    p = f"e{e.pk}"
    posted = {f"{p}-reset": "billing_period", f"{p}-enforcement": "hard", f"{p}-notify_at": "80"}
    posted.update({f"{p}-{k}": v for k, v in data.items()})
    url = reverse("catalog:entitlement_edit", args=["basic", e.pk])
    for extra in (HTMX, {}):
        response = pm_client.post(url, posted, **extra)
        assert response.status_code == 200
        html = response.content.decode()
        assert message in html
        assert f'<tr id="ent-{e.pk}" class="editing">' in html
    e.refresh_from_db()
    assert e.limit == Decimal("200") and e.enforcement == "hard" and e.notify_at == [80, 100]


def test_cancel_returns_the_row_as_shown(pm_client, storage_catalog):
    e = entitlement(storage_catalog["basic"], storage_catalog["storage"])
    url = reverse("catalog:entitlement_row", args=["basic", e.pk])
    html = pm_client.get(url, **HTMX).content.decode()
    assert html.strip().startswith(f'<tr id="ent-{e.pk}">')
    assert pm_client.get(url).status_code == 302  # without htmx: the plan page


# --- add a feature ----------------------------------------------------------------------------


def test_feature_select_swaps_in_the_fields_of_its_kind(pm_client, storage_catalog):
    url = reverse("catalog:entitlement_add", args=["basic"])
    gate = pm_client.get(url, {"add-feature": "file-versioning"}, **HTMX).content.decode()
    assert gate.strip().startswith('<div id="add-fields"')
    assert 'name="add-enabled"' in gate
    assert 'name="add-limit"' not in gate and 'name="add-value"' not in gate
    assert "This change applies at once to 2 active subscribers." in gate
    nothing = pm_client.get(url, {"add-feature": ""}, **HTMX).content.decode()
    for name in ("add-enabled", "add-limit", "add-value"):  # every kind, grouped
        assert f'name="{name}"' in nothing


def test_feature_select_without_javascript_goes_to_the_plan_page(pm_client, storage_catalog):
    url = reverse("catalog:entitlement_add", args=["basic"])
    response = pm_client.get(url, {"add-feature": "file-versioning"})
    assert response.status_code == 302
    page = pm_client.get(response["Location"]).content.decode()
    assert 'name="add-enabled"' in page and 'name="add-limit"' not in page


def test_adding_a_feature_creates_the_entitlement_and_says_whom_it_reaches(
    pm_client, storage_catalog
):
    c = storage_catalog
    response = pm_client.post(
        reverse("catalog:entitlement_add", args=["basic"]),
        {"add-feature": "file-versioning", "add-enabled": "on", "add-show_on_invoice": "on"},
        **HTMX,
    )
    html = response.content.decode()
    assert response.status_code == 200
    added = entitlement(c["basic"], c["versioning"])
    assert added.enabled and added.show_on_invoice
    assert html.strip().startswith('<div id="plan-editor">')
    assert "Added File versioning to Basic. It applies at once to 2 active subscribers." in html
    assert f'<tr id="ent-{added.pk}" class="just-added">' in html
    assert entitlement_check(c["customers"][1], "file-versioning").has_access is True


def test_adding_without_javascript_redirects_to_the_new_row(pm_client, storage_catalog):
    c = storage_catalog
    plan = PlanFactory(key="starter", name="Starter", rank=1)
    response = pm_client.post(
        reverse("catalog:entitlement_add", args=["starter"]),
        {
            "add-feature": "storage",
            "add-limit": "20",
            "add-reset": "billing_period",
            "add-enforcement": "hard",
            "add-notify_at": "80, 100",
        },
        follow=True,
    )
    added = entitlement(plan, c["storage"])
    assert added.limit == Decimal("20")
    assert response.redirect_chain[-1][0].endswith(f"#ent-{added.pk}")
    assert "It applies at once to 0 active subscribers." in response.content.decode()


def test_adding_a_config_feature_without_a_value_is_an_error(pm_client, storage_catalog):
    plan = PlanFactory(key="starter", name="Starter", rank=1)
    for extra in (HTMX, {}):
        response = pm_client.post(
            reverse("catalog:entitlement_add", args=["starter"]),
            {"add-feature": "support-tier", "add-value": "  "},
            **extra,
        )
        assert response.status_code == 200
        assert "A config entitlement needs a value." in response.content.decode()
    assert not plan.entitlements.exists()


def test_adding_without_a_feature_is_an_error(pm_client, storage_catalog):
    response = pm_client.post(
        reverse("catalog:entitlement_add", args=["basic"]), {"add-feature": ""}, **HTMX
    )
    assert "This field is required." in response.content.decode()
    assert storage_catalog["basic"].entitlements.count() == 3


def test_a_feature_already_in_the_plan_cannot_be_added_twice(pm_client, storage_catalog):
    response = pm_client.post(
        reverse("catalog:entitlement_add", args=["basic"]),
        {
            "add-feature": "storage",
            "add-limit": "5",
            "add-reset": "billing_period",
            "add-enforcement": "hard",
        },
        **HTMX,
    )
    assert "Select a valid choice" in response.content.decode()
    assert entitlement(storage_catalog["basic"], storage_catalog["storage"]).limit == 100


# --- remove -----------------------------------------------------------------------------------


def test_remove_asks_first_without_javascript_then_removes(pm_client, storage_catalog):
    c = storage_catalog
    e = entitlement(c["basic"], c["tier"])
    url = reverse("catalog:entitlement_remove", args=["basic", e.pk])
    confirm = pm_client.get(url).content.decode()
    assert "Remove Support tier from Basic?" in confirm
    assert "This change applies at once to 2 active subscribers." in confirm
    assert PlanEntitlement.objects.filter(pk=e.pk).exists()
    response = pm_client.post(url, follow=True)
    assert "Removed Support tier from Basic." in response.content.decode()
    assert not PlanEntitlement.objects.filter(pk=e.pk).exists()


def test_remove_under_htmx_returns_only_the_message(pm_client, storage_catalog):
    e = entitlement(storage_catalog["basic"], storage_catalog["tier"])
    page = pm_client.get(reverse("catalog:plan_detail", args=["basic"])).content.decode()
    assert 'hx-confirm="Remove Support tier from Basic?' in page
    html = pm_client.post(
        reverse("catalog:entitlement_remove", args=["basic", e.pk]), **HTMX
    ).content.decode()
    assert html.strip().startswith("<template>")
    assert "Removed Support tier from Basic." in html
    assert not PlanEntitlement.objects.filter(pk=e.pk).exists()


# --- comparison -------------------------------------------------------------------------------


def test_compare_shows_active_public_plans_side_by_side(pm_client, storage_catalog):
    response = pm_client.get(reverse("catalog:plan_compare"))
    assert [p.key for p in response.context["plans"]] == ["basic", "pro"]
    html = response.content.decode()
    assert "500 GB a month" in html and "then $0.10 per GB" in html
    assert "1,000 GB" in html
    assert "Not shown to customers" in html and "Legacy" in html and "Internal" in html


def test_plan_comparison_rows_are_allowances_then_values_then_gates(storage_catalog):
    c = storage_catalog
    rows = selectors.plan_comparison([c["basic"], c["pro"]])
    assert [r.feature.key for r in rows] == [
        "data-transfer",
        "storage",
        "support-tier",
        "file-versioning",
    ]
    gate = rows[-1]
    assert [(cell.text, cell.included) for cell in gate.cells] == [
        ("—", False),
        ("Included", True),
    ]
    assert rows[0].cells[1].note == "then $0.10 per GB"
    assert rows[0].cells[0].plan_id == c["basic"].pk


def test_plan_comparison_include_renders_for_any_page(rf, storage_catalog):
    from django.template.loader import render_to_string

    c = storage_catalog
    plans = [c["basic"], c["pro"]]
    html = render_to_string(
        "includes/plan_comparison.html",
        {"plans": plans, "rows": selectors.plan_comparison(plans), "current_plan": c["basic"]},
    )
    assert "Current plan" in html and "$150.00" in html
    assert "No plans are offered" in render_to_string(
        "includes/plan_comparison.html", {"plans": [], "rows": []}
    )


def test_home_links_each_role_to_its_pages(pm_client, storage_catalog):
    html = pm_client.get(reverse("home")).content.decode()
    assert reverse("catalog:plan_list") in html
    assert reverse("admin:index") in html
    assert reverse("support:search") not in html
