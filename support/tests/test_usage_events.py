"""The customer page's "Recent usage" section and its "Reverse" action (issue 18): events
newest first, 25 a page, filtered by feature, each saying where its units went (allowance,
grant, overage) and whether it was reversed, by whom and why. Support reverses with a reason
and a confirmation; other roles get 403.

The world (conftest.py): Acme on Basic (data transfer 200 GB a period, hard; storage a level
at 85 GB)."""

from decimal import Decimal

import pytest
from django.urls import reverse

from customers import engine
from customers import services as customer_services
from customers.models import Grant, UsageEvent, UsageReversal

from .conftest import user_in

pytestmark = pytest.mark.django_db


def consume(world, quantity: str, event_id: str):
    result = engine.entitlement_consume(world.acme, "data-transfer", quantity, event_id)
    assert result.allowed
    return result


def page(client, world, **params):
    url = reverse("support:customer", args=[world.acme.pk])
    response = client.get(url, params)
    assert response.status_code == 200
    return response.content.decode()


def reverse_url(world, event_id: str) -> str:
    event = UsageEvent.objects.get(customer=world.acme, event_id=event_id)
    return reverse("support:usage_reverse", args=[world.acme.pk, event.pk])


def test_the_page_lists_usage_with_where_the_units_went(support_client, world):
    # Given 190 GB of allowance used, then 15 more: 10 allowance, 5 from a top-up grant
    gift = customer_services.grant_create(
        customer=world.acme, feature=world.transfer, quantity=Decimal("8"), reason="Outage"
    )
    consume(world, "190", "backup-1")
    consume(world, "15", "backup-2")

    html = page(support_client, world)

    assert "Recent usage" in html
    assert html.index("backup-2") < html.index("backup-1")  # newest first
    assert "Allowance</span> 10 GB" in html
    assert f"Grant #{gift.pk}</span> 5 GB" in html
    assert "Level reported" in html  # the storage level: no draw
    assert html.count("Reverse…") == 2  # not for the level


def test_the_section_filters_by_feature_and_pages_by_25(support_client, world):
    for n in range(30):
        consume(world, "1", f"job-{n:02}")
    url = reverse("support:usage_events", args=[world.acme.pk])

    # All features: 31 events (30 jobs and the storage level), 2 pages
    first = support_client.get(url, headers={"HX-Request": "true"}).content.decode()
    assert "Page 1 of 2 · 31 events" in first
    assert "job-29" in first and "job-05" in first and "job-04" not in first

    # Data transfer, page 2: the 5 oldest jobs, and a link back to the newer ones
    second = support_client.get(
        url, {"feature": "data-transfer", "page": 2}, headers={"HX-Request": "true"}
    ).content.decode()
    assert "Page 2 of 2 · 30 events" in second
    assert "job-04" in second and "job-00" in second and "job-05" not in second
    assert "Newer" in second and "feature=data-transfer" in second
    assert "<html" not in second  # the partial

    # Storage only: the level; without htmx the whole page with that filter
    storage = page(support_client, world, feature="storage")
    assert "job-" not in storage.split('id="usage-events"')[1].split("</section>")[0]
    html = support_client.get(url, {"feature": "storage"}).content.decode()
    assert "<html" in html and 'value="storage" selected' in html


def test_support_reverses_an_event_with_a_reason(support_client, world):
    gift = customer_services.grant_create(
        customer=world.acme, feature=world.transfer, quantity=Decimal("8"), reason="Outage"
    )
    consume(world, "190", "backup-1")
    consume(world, "15", "backup-2")
    url = reverse_url(world, "backup-2")

    # The confirmation says what goes where
    confirm = support_client.get(url).content.decode()
    assert "10 GB from the allowance go back to the period" in confirm
    assert f"5 GB go back to grant #{gift.pk}" in confirm

    # Without a reason: the form again, nothing changed
    response = support_client.post(url, {"reason": "  "})
    assert response.status_code == 400
    assert not UsageReversal.objects.exists()

    # With one: reversed, the page shows the new numbers and the history says who and why
    response = support_client.post(url, {"reason": "Backup failed (ticket 4411)"}, follow=True)
    html = response.content.decode()
    assert "Reversed usage event backup-2: 15 GB of Data transfer given back" in html
    assert "5 GB of it back to grants" in html and "Usage now 190 GB" in html
    assert "by sam: Backup failed (ticket 4411)" in html
    assert "reversed" in html and "Usage event backup-2: 15 GB of Data transfer" in html
    gift.refresh_from_db()
    assert gift.consumed == 0
    assert engine.entitlement_check(world.acme, "data-transfer").usage == 190
    reversal = UsageReversal.objects.get()
    assert (reversal.created_by, reversal.reason) == (world.support, "Backup failed (ticket 4411)")

    # Twice: nothing more happens
    again = support_client.post(url, {"reason": "Again"}, follow=True).content.decode()
    assert "nothing changed" in again
    assert UsageReversal.objects.count() == 1
    assert Grant.objects.get(pk=gift.pk).consumed == 0


def test_a_level_is_not_reversible_from_the_page(support_client, world):
    url = reverse_url(world, UsageEvent.objects.get(feature=world.storage).event_id)
    assert "not reversible" in support_client.get(url).content.decode()
    response = support_client.post(url, {"reason": "Try"})
    assert response.status_code == 409
    assert not UsageReversal.objects.exists()


@pytest.mark.parametrize("who", ["pm", "end_customer", "nobody"])
def test_only_support_may_reverse(client, world, who):
    consume(world, "5", "job")
    user = user_in("nobody", is_staff=True) if who == "nobody" else getattr(world, who)
    client.force_login(user)
    url = reverse_url(world, "job")

    assert client.get(url).status_code == 403
    assert client.post(url, {"reason": "Mine"}).status_code == 403
    assert client.get(reverse("support:usage_events", args=[world.acme.pk])).status_code == 403
    assert not UsageReversal.objects.exists()
    assert engine.entitlement_check(world.acme, "data-transfer").usage == 5


def test_the_reverse_form_needs_the_csrf_token(world):
    from django.test import Client

    consume(world, "5", "job")
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.support)
    assert client.post(reverse_url(world, "job"), {"reason": "No token"}).status_code == 403
    assert not UsageReversal.objects.exists()
