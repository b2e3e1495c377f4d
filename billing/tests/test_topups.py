"""Buying top-ups: one charge, one invoice, one grant per purchase key; nothing on a decline."""

from decimal import Decimal

import pytest
from djmoney.money import Money

from billing.models import Invoice, InvoiceStatus, Payment, TopUpPurchase
from billing.providers import FailingPaymentProvider
from billing.services.invoices import invoice_void
from billing.services.purchases import topup_purchase
from billing.services.subscriptions import subscription_create
from catalog.tests.factories import PlanFactory, TopUpPackFactory
from core.errors import Conflict, InvalidInput, PaymentFailed
from customers.engine import entitlement_check
from customers.models import Grant
from customers.tests.factories import CustomerFactory

from .conftest import at
from .factories import CountingProvider

pytestmark = pytest.mark.django_db


@pytest.fixture
def subscribed(customer, basic):
    subscription_create(customer=customer, plan=basic, at=at(2026, 1, 31))
    return customer


@pytest.fixture
def pack(basic):
    return TopUpPackFactory(
        key="storage-20",
        name="Extra 20 GB",
        feature=basic.storage,
        quantity=Decimal("20"),
        price=Money("10.00", "USD"),
    )


def test_a_purchase_issues_a_paid_invoice_and_grants_the_units(subscribed, pack):
    provider = CountingProvider()

    purchase = topup_purchase(
        customer=subscribed,
        pack=pack,
        idempotency_key="click-1",
        provider=provider,
        at=at(2026, 2, 10),
    )

    invoice = purchase.invoice
    assert invoice.status == InvoiceStatus.PAID and invoice.number == "INV-2026-000002"
    assert invoice.total == Money("10.00", "USD") and invoice.paid_at == at(2026, 2, 10)
    line = invoice.lines.get()
    assert line.kind == "topup" and line.grant == purchase.grant
    assert line.description == "Top-up: Extra 20 GB (20 GB of Storage, until Feb 28, 2026)"
    grant = purchase.grant
    assert (grant.source, grant.quantity, grant.topup_pack) == ("topup", Decimal("20"), pack)
    # A `period_end` pack expires with the current billing period.
    assert grant.expires_at == at(2026, 2, 28)
    assert entitlement_check(subscribed, "storage", at=at(2026, 2, 11)).granted == Decimal("20")
    assert provider.charges == 1
    assert invoice.payments.get().provider == "counting"


def test_the_same_key_again_returns_the_same_purchase(subscribed, pack):
    provider = CountingProvider()
    first = topup_purchase(
        customer=subscribed, pack=pack, idempotency_key="click-1", provider=provider
    )

    again = topup_purchase(
        customer=subscribed, pack=pack, idempotency_key="click-1", provider=provider
    )

    assert again.pk == first.pk and again.invoice == first.invoice
    assert provider.charges == 1
    assert Grant.objects.filter(customer=subscribed).count() == 1
    assert Invoice.objects.filter(customer=subscribed, purpose="topup").count() == 1


def test_the_same_key_for_another_pack_is_a_conflict(subscribed, pack, basic):
    topup_purchase(customer=subscribed, pack=pack, idempotency_key="k")
    other = TopUpPackFactory(feature=basic.storage)

    with pytest.raises(Conflict) as error:
        topup_purchase(customer=subscribed, pack=other, idempotency_key="k")

    assert error.value.code == "idempotency_conflict"


def test_a_declined_payment_leaves_no_grant_no_invoice_and_a_clear_error(subscribed, pack):
    numbers_before = list(Invoice.objects.values_list("number", flat=True))

    with pytest.raises(PaymentFailed) as error:
        topup_purchase(
            customer=subscribed,
            pack=pack,
            idempotency_key="click-1",
            provider=FailingPaymentProvider("Insufficient funds."),
        )

    assert error.value.status == 402 and error.value.code == "payment_failed"
    assert error.value.message == (
        "The payment of $10.00 for Extra 20 GB failed: Insufficient funds. "
        "Nothing was charged or added."
    )
    assert not Grant.objects.filter(customer=subscribed).exists()
    assert not TopUpPurchase.objects.exists() and not Payment.objects.exists()
    assert list(Invoice.objects.values_list("number", flat=True)) == numbers_before
    # The key is free again: a retry with a working card goes through, with the next number.
    retry = topup_purchase(customer=subscribed, pack=pack, idempotency_key="click-1")
    assert retry.invoice.number == "INV-2026-000002"


def test_a_pack_in_days_expires_after_them(subscribed, basic):
    pack = TopUpPackFactory(feature=basic.storage, expires_in_days=True)

    purchase = topup_purchase(
        customer=subscribed, pack=pack, idempotency_key="k", at=at(2026, 2, 10)
    )

    assert purchase.grant.expires_at == at(2026, 3, 12)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"active": False}, "pack_inactive"),
        ({"price": Money("10.00", "EUR")}, "currency_mismatch"),
    ],
)
def test_a_pack_must_be_on_sale_in_the_customers_currency(subscribed, pack, change, code):
    for name, value in change.items():
        setattr(pack, name, value)
    pack.save()

    with pytest.raises(InvalidInput) as error:
        topup_purchase(customer=subscribed, pack=pack, idempotency_key="k")

    assert error.value.code == code


def test_a_pack_must_be_offered_on_the_customers_plan(subscribed, basic):
    pack = TopUpPackFactory(feature=basic.storage, plans=[PlanFactory()])

    with pytest.raises(InvalidInput) as error:
        topup_purchase(customer=subscribed, pack=pack, idempotency_key="k")

    assert error.value.code == "pack_not_offered"
    on_basic = TopUpPackFactory(feature=basic.storage, plans=[basic])
    assert topup_purchase(customer=subscribed, pack=on_basic, idempotency_key="k2")


def test_a_customer_without_a_subscription_cannot_buy(pack):
    with pytest.raises(InvalidInput) as error:
        topup_purchase(customer=CustomerFactory(), pack=pack, idempotency_key="k")

    assert error.value.code == "no_subscription"


def test_voiding_a_topup_invoice_voids_its_grant(subscribed, pack):
    purchase = topup_purchase(
        customer=subscribed, pack=pack, idempotency_key="k", at=at(2026, 2, 10)
    )

    invoice_void(invoice=purchase.invoice, reason="Refunded", at=at(2026, 2, 11))

    purchase.grant.refresh_from_db()
    assert purchase.grant.voided_at == at(2026, 2, 11)
    assert entitlement_check(subscribed, "storage", at=at(2026, 2, 12)).granted == 0
