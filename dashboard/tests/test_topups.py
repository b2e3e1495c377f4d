"""Buy more: the packs of a feature, the confirm step with its idempotency key, the purchase
(once, whatever the number of submits), the receipt; a declined payment changes nothing."""

import re

from django.urls import reverse

from billing.models import Invoice, InvoicePurpose, TopUpPurchase
from customers.engine import entitlement_check
from customers.models import Grant

CONFIRM = reverse("dashboard:topup_confirm", args=["extra-20-gb"])


def key_of(html: str) -> str:
    return re.search(r'name="idempotency_key" value="([^"]+)"', html).group(1)


def topup_invoices(customer):
    return Invoice.objects.filter(customer=customer, purpose=InvoicePurpose.TOPUP)


def test_the_overview_offers_buy_more_where_a_pack_is_on_sale(client_a):
    html = client_a.get(reverse("dashboard:overview")).content.decode()
    assert 'href="/dashboard/buy/storage/"' in html
    assert 'href="/dashboard/buy/data-transfer/"' not in html  # no pack for it


def test_the_packs_page_lists_the_packs_of_the_customers_plan_with_their_price(client_a, world):
    html = client_a.get(reverse("dashboard:topup_packs", args=["storage"])).content.decode()
    assert "Extra 20 GB" in html and "$10.00" in html and "+20 GB" in html
    assert "Business 100 GB" not in html  # offered on Business only
    assert f'href="{CONFIRM}"' in html


def test_a_feature_without_packs_says_so(client_a):
    html = client_a.get(reverse("dashboard:topup_packs", args=["data-transfer"])).content
    assert b"No top-ups of Data transfer are offered on your plan." in html


def test_unknown_or_unmetered_features_are_404(client_a):
    assert client_a.get(reverse("dashboard:topup_packs", args=["nope"])).status_code == 404
    url = reverse("dashboard:topup_packs", args=["file-versioning"])
    assert client_a.get(url).status_code == 404


def test_each_confirm_page_carries_a_fresh_key_and_is_not_cached(client_a):
    first, second = client_a.get(CONFIRM), client_a.get(CONFIRM)
    assert key_of(first.content.decode()) != key_of(second.content.decode())
    assert first["Cache-Control"] == "no-store"
    assert b"Pay $10.00" in first.content


def test_buying_shows_the_invoice_and_the_new_balance(client_a, world):
    key = key_of(client_a.get(CONFIRM).content.decode())
    response = client_a.post(CONFIRM, {"idempotency_key": key})
    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard:topup_receipt", args=[key])
    html = client_a.get(response["Location"]).content.decode()
    invoice = topup_invoices(world.a).get()
    assert invoice.status == "paid" and str(invoice.total) == "$10.00"
    assert f'href="/billing/invoices/{invoice.number}/"' in html
    assert "Extra 20 GB added" in html
    assert "35 GB" in html and "+ 20 GB top-up" in html  # left: 100 + 20 - 85
    assert entitlement_check(world.a, "storage").balance == 35


def test_a_double_submit_buys_once(client_a, world):
    key = key_of(client_a.get(CONFIRM).content.decode())
    first = client_a.post(CONFIRM, {"idempotency_key": key})
    second = client_a.post(CONFIRM, {"idempotency_key": key})
    assert first["Location"] == second["Location"]
    assert topup_invoices(world.a).count() == 1
    assert Grant.objects.filter(customer=world.a).count() == 1
    assert TopUpPurchase.objects.filter(customer=world.a).count() == 1
    assert entitlement_check(world.a, "storage").granted == 20


def test_two_confirm_pages_are_two_purchases(client_a, world):
    for _ in range(2):
        key = key_of(client_a.get(CONFIRM).content.decode())
        client_a.post(CONFIRM, {"idempotency_key": key})
    assert topup_invoices(world.a).count() == 2
    assert entitlement_check(world.a, "storage").granted == 40


def test_a_declined_payment_shows_why_and_changes_nothing(client_a, world, settings):
    settings.BILLING_PAYMENT_PROVIDER = "billing.providers.FailingPaymentProvider"
    key = key_of(client_a.get(CONFIRM).content.decode())
    response = client_a.post(CONFIRM, {"idempotency_key": key})
    html = response.content.decode()
    assert response.status_code == 402
    assert 'role="alert"' in html and "The payment failed." in html
    assert "The card was declined." in html and "Nothing was charged or added." in html
    # Nothing was bought: a retry is a new purchase, under a key the processor has not seen.
    retry_key = key_of(html)
    assert retry_key != key
    assert not topup_invoices(world.a).exists()
    assert not Grant.objects.filter(customer=world.a).exists()
    assert entitlement_check(world.a, "storage").balance == 15

    settings.BILLING_PAYMENT_PROVIDER = "billing.providers.BuiltinPaymentProvider"
    assert client_a.post(CONFIRM, {"idempotency_key": retry_key}).status_code == 302
    assert client_a.post(CONFIRM, {"idempotency_key": retry_key}).status_code == 302  # twice
    assert topup_invoices(world.a).count() == 1


def test_a_confirm_without_its_key_buys_nothing(client_a, world):
    response = client_a.post(CONFIRM, {})
    assert response.status_code == 400
    assert b"This confirmation expired" in response.content
    assert not TopUpPurchase.objects.exists()


def test_a_key_reused_for_another_pack_is_refused(client_a, world):
    world.business_pack.plans.add(world.basic)
    client_a.post(CONFIRM, {"idempotency_key": "same-key"})
    other = reverse("dashboard:topup_confirm", args=[world.business_pack.key])
    response = client_a.post(other, {"idempotency_key": "same-key"})
    assert response.status_code == 409
    assert b"already used to buy Extra 20 GB" in response.content
    assert TopUpPurchase.objects.filter(customer=world.a).count() == 1


def test_an_inactive_pack_is_404(client_a, world):
    world.pack.active = False
    world.pack.save()
    assert client_a.get(CONFIRM).status_code == 404
