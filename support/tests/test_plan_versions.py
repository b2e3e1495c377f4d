"""Support sees which version of its plan a customer is on and moves one customer to the latest
(DESIGN.md "Plan versions")."""

import re
from decimal import Decimal

import pytest
from django.urls import reverse
from djmoney.money import Money

from catalog import services as catalog_services
from catalog.models import PlanEntitlement
from customers.engine import entitlement_check

HTMX = {"HTTP_HX_REQUEST": "true"}


def text(response) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.content.decode()))


@pytest.fixture
def basic_v2(world):
    """Basic's version 2 (Data transfer 50 GB, $60), published keeping Acme on version 1."""
    draft = catalog_services.plan_version_draft_create(plan=world.basic)
    transfer = PlanEntitlement.objects.get(version=draft, feature=world.transfer)
    catalog_services.plan_entitlement_update(entitlement=transfer, limit=Decimal("50"))
    catalog_services.plan_version_update(version=draft, price=Money("60.00", "USD"))
    catalog_services.plan_version_publish(version=draft, existing="keep")
    return draft


def test_the_customer_page_shows_the_version_and_the_latest(support_client, world, basic_v2):
    page = text(support_client.get(reverse("support:customer", args=[world.acme.pk])))

    assert "Version Version 1 Latest is version 2" in page
    assert "$50.00 / month" in page
    assert "Move to version 2" in page


@pytest.mark.parametrize("extra", [{}, HTMX])
def test_support_moves_one_customer_to_the_latest_version(support_client, world, basic_v2, extra):
    url = reverse("support:version_move", args=[world.acme.pk])
    assert entitlement_check(world.acme, "data-transfer").limit == Decimal("200")

    response = support_client.post(url, **extra)

    assert response.status_code in (200, 302)
    subscription = world.acme.subscriptions.get()
    assert subscription.plan_version.number == 2
    assert entitlement_check(world.acme, "data-transfer").limit == Decimal("50")
    assert subscription.history.first().history_user == world.support
    page = text(support_client.get(reverse("support:customer", args=[world.acme.pk])))
    assert "is on version 2 of Basic now" in page or "(the latest)" in page
    assert "Move to version" not in page


def test_moving_a_customer_already_on_the_latest_says_so(support_client, world):
    response = support_client.post(
        reverse("support:version_move", args=[world.acme.pk]), follow=True
    )

    assert "already on version 1" in text(response)
    assert world.acme.subscriptions.get().plan_version.number == 1


@pytest.mark.parametrize("who", ["pm", "end_customer"])
def test_only_support_moves_a_customer(client, world, basic_v2, who):
    client.force_login(getattr(world, who))

    response = client.post(reverse("support:version_move", args=[world.acme.pk]))

    assert response.status_code == 403
    assert world.acme.subscriptions.get().plan_version.number == 1
