"""Who may open what: the end customer every page of their own; anyone else the login page or a
404; customer A nothing of customer B by any URL."""

import pytest
from django.test import Client
from django.urls import reverse

from billing.models import Invoice, InvoicePurpose, TopUpPurchase
from billing.services.purchases import topup_purchase
from billing.services.subscriptions import subscription_change_plan
from customers.models import Grant, Notification

from .conftest import notification_for


@pytest.fixture
def b_objects(world):
    """Objects of customer B that URLs can name: an invoice, a purchase, a notification."""
    purchase = topup_purchase(customer=world.b, pack=world.business_pack, idempotency_key="b-key")
    change = subscription_change_plan(
        subscription=world.b.subscriptions.get(), plan=world.secret
    )  # B moves up to a plan A is not offered: a proration invoice of B's
    return {
        "invoice": purchase.invoice.number,
        "plan_change_invoice": change.invoice.number,
        "purchase": purchase.idempotency_key,
        "notification": notification_for(world.b, world.storage).pk,
    }


def own_urls(world) -> list[str]:
    """Every dashboard page, naming customer A's own objects."""
    purchase = topup_purchase(customer=world.a, pack=world.pack, idempotency_key="a-key")
    change = subscription_change_plan(subscription=world.a.subscriptions.get(), plan=world.business)
    notification = notification_for(world.a, world.storage, threshold=90)
    return [
        reverse("dashboard:overview"),
        reverse("dashboard:topup_packs", args=["storage"]),
        reverse("dashboard:topup_confirm", args=["business-100-gb"]),  # offered on Business now
        reverse("dashboard:topup_receipt", args=[purchase.idempotency_key]),
        reverse("dashboard:plans"),
        reverse("dashboard:plan_change", args=["basic"]),  # a downgrade now
        reverse("dashboard:plan_changed", args=[change.invoice.number]),
        reverse("dashboard:invoices"),
        reverse("dashboard:notifications"),
        reverse("dashboard:notification_detail", args=[notification.pk]),
    ]


def test_every_page_answers_200_for_its_customer(client_a, world):
    for url in own_urls(world):
        response = client_a.get(url)
        assert response.status_code == 200, url
        assert b"Acme" in response.content, url


def test_anonymous_visitors_are_sent_to_the_login_page(client, world):
    for url in own_urls(world):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login")), url


def test_staff_without_a_customer_link_get_a_clear_404(client, world):
    client.force_login(world.staff)
    for url in own_urls(world):
        response = client.get(url)
        assert response.status_code == 404, url
        assert b"No customer account" in response.content, url
        assert b"Acme" not in response.content, url


def test_a_plain_login_without_a_customer_gets_the_same_404(client, world, django_user_model):
    client.force_login(django_user_model.objects.create_user("nobody", password="x" * 12))
    response = client.get(reverse("dashboard:overview"))
    assert response.status_code == 404
    assert b"is not linked to a customer" in response.content


def test_customer_b_sees_only_their_own_overview(client, world):
    client.force_login(world.user_b)
    response = client.get(reverse("dashboard:overview"))
    assert b"Globex" in response.content and b"Acme" not in response.content
    assert b"300 GB" in response.content


def test_a_reaches_nothing_of_b_by_any_url(client_a, world, b_objects):
    urls = [
        reverse("billing:invoice_detail", args=[b_objects["invoice"]]),
        reverse("dashboard:plan_changed", args=[b_objects["plan_change_invoice"]]),
        reverse("dashboard:topup_receipt", args=[b_objects["purchase"]]),
        reverse("dashboard:notification_detail", args=[b_objects["notification"]]),
        # a pack offered only on B's plan, a plan not offered to A
        reverse("dashboard:topup_confirm", args=[world.business_pack.key]),
        reverse("dashboard:plan_change", args=[world.secret.key]),
    ]
    for url in urls:
        assert client_a.get(url).status_code == 404, url
    listing = client_a.get(reverse("dashboard:invoices")).content.decode()
    assert b_objects["invoice"] not in listing
    assert b_objects["plan_change_invoice"] not in listing
    notifications = client_a.get(reverse("dashboard:notifications")).content.decode()
    assert f"/notifications/{b_objects['notification']}/" not in notifications


def test_a_cannot_buy_a_pack_offered_only_on_bs_plan(client_a, world):
    url = reverse("dashboard:topup_confirm", args=[world.business_pack.key])
    response = client_a.post(url, {"idempotency_key": "sneaky"})
    assert response.status_code == 404
    assert not TopUpPurchase.objects.filter(customer=world.a).exists()
    assert not Grant.objects.filter(customer=world.a).exists()


def test_a_cannot_move_to_a_plan_not_offered_to_them(client_a, world):
    url = reverse("dashboard:plan_change", args=[world.secret.key])
    response = client_a.post(url, {"from_plan": "basic"})
    assert response.status_code == 404
    assert world.a.subscriptions.get().plan == world.basic
    assert not Invoice.objects.filter(customer=world.a, purpose=InvoicePurpose.PLAN_CHANGE)


def test_b_notification_ids_are_not_listed_for_a(client_a, world, b_objects):
    mine = Notification.objects.filter(customer=world.a)
    response = client_a.get(reverse("dashboard:notifications"))
    assert list(response.context["notifications"]) == list(mine)


def test_forms_refuse_a_post_without_the_csrf_token(world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.user_a)
    url = reverse("dashboard:topup_confirm", args=[world.pack.key])
    response = client.post(url, {"idempotency_key": "no-csrf"})
    assert response.status_code == 403
    assert not TopUpPurchase.objects.exists()


def test_htmx_requests_carry_the_csrf_token_from_the_body(client_a):
    response = client_a.get(reverse("dashboard:overview"))
    assert b'hx-headers=\'{"X-CSRFToken": "' in response.content
