"""Real threads against PostgreSQL (row locks); skipped on SQLite, which serialises writers."""

import threading
from decimal import Decimal

import pytest
from django.db import connection, connections
from djmoney.money import Money

from billing.models import Invoice, LineKind, Payment, TopUpPurchase
from billing.services.invoices import LineDraft, invoice_create, invoice_issue
from billing.services.payments import invoice_collect, invoice_refund_void
from billing.services.period_close import periods_close
from billing.services.purchases import topup_purchase
from billing.services.subscriptions import subscription_create
from catalog.tests.factories import TopUpPackFactory
from core.errors import Conflict
from customers.models import Grant

from .conftest import at
from .factories import CountingProvider

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor == "sqlite", reason="needs PostgreSQL row locks and real concurrency"
    ),
]


def run_at_once(count: int, work) -> list:
    """Runs work(i) in `count` threads released together; returns results (or exceptions)."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except Exception as error:  # reported by the test
            results[i] = error
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_fifty_concurrent_issues_get_fifty_distinct_consecutive_numbers(customer):
    drafts = [
        invoice_create(
            customer=customer,
            lines=[
                LineDraft(
                    kind=LineKind.PLAN, description=f"Line {i}", unit_price=Money("1.00", "USD")
                )
            ],
        )
        for i in range(50)
    ]

    results = run_at_once(50, lambda i: invoice_issue(invoice=drafts[i], at=at(2026, 6, 1)).number)

    assert not [r for r in results if isinstance(r, Exception)], results
    assert len(set(results)) == 50
    assert sorted(results) == [f"INV-2026-{n:06d}" for n in range(1, 51)]
    assert Invoice.objects.filter(status="issued").count() == 50


def test_a_double_submitted_topup_charges_and_grants_once(customer, basic):
    subscription_create(customer=customer, plan=basic, at=at(2026, 1, 31))
    pack = TopUpPackFactory(feature=basic.storage, quantity=Decimal("20"), price=Money("10", "USD"))
    provider = CountingProvider()

    results = run_at_once(
        8,
        lambda i: (
            topup_purchase(
                customer=customer, pack=pack, idempotency_key="double-click", provider=provider
            ).pk
        ),
    )

    assert not [r for r in results if isinstance(r, Exception)], results
    assert len(set(results)) == 1
    assert provider.charges == 1
    # (the plan invoice was charged too when the subscription committed)
    assert TopUpPurchase.objects.count() == 1
    assert Payment.objects.filter(invoice__purpose="topup").count() == 1
    assert Grant.objects.filter(customer=customer, source="topup").count() == 1
    assert Invoice.objects.filter(customer=customer, purpose="topup").count() == 1


def test_concurrent_period_closes_issue_each_invoice_once(customer, basic):
    subscription_create(customer=customer, plan=basic, at=at(2025, 1, 31))

    results = run_at_once(6, lambda i: periods_close(now=at(2026, 1, 31)))

    assert not [r for r in results if isinstance(r, Exception)], results
    assert sum(r.periods_closed for r in results) == 12
    periods = list(Invoice.objects.filter(purpose="period").values_list("period_start", flat=True))
    assert len(periods) == len(set(periods)) == 13
    numbers = sorted(Invoice.objects.values_list("number", flat=True))
    assert numbers[-12:] == [f"INV-2026-{n:06d}" for n in range(1, 13)]


def test_concurrent_collections_of_one_invoice_charge_once(customer):
    """The beat's retry, the customer's "Pay now" and a second tab at once: one charge."""
    draft = invoice_create(
        customer=customer,
        lines=[LineDraft(kind=LineKind.PLAN, description="Plan", unit_price=Money("30", "USD"))],
    )
    invoice = invoice_issue(invoice=draft, at=at(2026, 6, 1))  # issued, not charged yet
    provider = CountingProvider()

    def pay(i):
        try:
            return invoice_collect(invoice=Invoice(pk=invoice.pk), provider=provider).paid
        except Conflict:
            return "already paid"

    results = run_at_once(8, pay)

    assert sorted(map(str, results)) == ["True"] + ["already paid"] * 7
    assert provider.charges == 1
    assert Payment.objects.filter(invoice=invoice, status="succeeded").count() == 1
    assert Invoice.objects.get(pk=invoice.pk).status == "paid"


def test_concurrent_voids_refund_once(customer, basic):
    subscription_create(customer=customer, plan=basic, at=at(2026, 1, 31))  # charged on commit
    invoice = Invoice.objects.get(customer=customer)
    assert invoice.status == "paid"

    def void(i):
        try:
            return invoice_refund_void(invoice=Invoice(pk=invoice.pk), reason=f"click {i}").status
        except Conflict as error:
            return error.code

    results = run_at_once(6, void)

    assert sorted(results) == ["invoice_void"] * 5 + ["void"]
    assert Payment.objects.filter(invoice=invoice, kind="refund").count() == 1
