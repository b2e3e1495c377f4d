"""Numbering, rounding, immutability and voiding of invoices."""

from decimal import Decimal

import pytest
from django.db import transaction
from djmoney.money import Money

from billing.models import Invoice, InvoiceStatus, LineKind
from billing.services.invoices import (
    LineDraft,
    invoice_create,
    invoice_draft_recalculate,
    invoice_issue,
    invoice_line_add,
    invoice_void,
)
from billing.services.payments import invoice_pay
from core.errors import Conflict, InvalidInput
from core.text import money_round, quantity_text
from customers.tests.factories import CustomerFactory

from .conftest import at

pytestmark = pytest.mark.django_db


def draft(customer, *amounts: str) -> Invoice:
    return invoice_create(
        customer=customer,
        lines=[
            LineDraft(
                kind=LineKind.PLAN, description=f"Line {n}", unit_price=Money(a, customer.currency)
            )
            for n, a in enumerate(amounts or ["10.00"])
        ],
    )


def test_numbers_are_consecutive_per_year_and_restart_each_year():
    customer = CustomerFactory()
    numbers = [
        invoice_issue(invoice=draft(customer), at=when).number
        for when in [at(2026, 12, 31, 23, 59), at(2026, 12, 31, 23, 59), at(2027, 1, 1, 0, 0)]
    ]
    assert numbers == ["INV-2026-000001", "INV-2026-000002", "INV-2027-000001"]


def test_a_rolled_back_issue_leaves_no_gap():
    customer = CustomerFactory()
    with pytest.raises(RuntimeError), transaction.atomic():
        invoice_issue(invoice=draft(customer), at=at(2026, 5, 1))
        raise RuntimeError("the caller fails after numbering")

    assert invoice_issue(invoice=draft(customer), at=at(2026, 5, 1)).number == ("INV-2026-000001")


def test_amounts_round_half_up_per_line_and_the_total_is_their_sum():
    customer = CustomerFactory(currency="EUR")
    invoice = invoice_create(
        customer=customer,
        lines=[
            LineDraft(
                kind=LineKind.OVERAGE,
                description="Calls",
                unit_price=Money("0.0125", "EUR"),
                quantity=Decimal("3"),  # 0.0375 -> 0.04
            ),
            LineDraft(
                kind=LineKind.OVERAGE,
                description="Transfer",
                unit_price=Money("0.0150", "EUR"),
                quantity=Decimal("1.5"),  # 0.0225 -> 0.02
            ),
        ],
    )
    issued = invoice_issue(invoice=invoice, at=at(2026, 5, 1))

    assert [line.amount for line in issued.lines.all()] == [
        Money("0.04", "EUR"),
        Money("0.02", "EUR"),
    ]
    assert issued.total == Money("0.06", "EUR")


def test_money_round_is_half_up_away_from_zero_to_the_minor_unit():
    assert money_round(Decimal("2.925"), "EUR") == Money("2.93", "EUR")
    assert money_round(Decimal("-5.625"), "USD") == Money("-5.63", "USD")
    assert money_round(Decimal("2.924999"), "USD") == Money("2.92", "USD")
    assert money_round(Decimal("1234.5"), "JPY") == Money("1235", "JPY")


def test_quantities_are_written_without_trailing_zeros():
    assert quantity_text(Decimal("87.5000"), "GB") == "87.5 GB"
    assert quantity_text(Decimal("100.0000"), "GB") == "100 GB"
    assert quantity_text(Decimal("10000"), "") == "10,000"


def test_an_issued_invoice_refuses_changes():
    customer = CustomerFactory()
    invoice = invoice_issue(invoice=draft(customer, "10.00"), at=at(2026, 5, 1))

    with pytest.raises(Conflict) as adding:
        invoice_line_add(
            invoice=invoice, kind="plan", description="Extra", unit_price=Money("1", "USD")
        )
    with pytest.raises(Conflict) as reissuing:
        invoice_issue(invoice=invoice)
    with pytest.raises(Conflict):
        invoice_draft_recalculate(invoice=invoice)

    assert adding.value.code == reissuing.value.code == "invoice_immutable"
    assert "void it and issue a new one" in adding.value.message
    invoice.refresh_from_db()
    assert invoice.lines.count() == 1 and invoice.total == Money("10.00", "USD")


def test_a_draft_takes_lines_in_the_customers_currency_only():
    customer = CustomerFactory(currency="EUR")
    invoice = draft(customer, "5.00")

    invoice_line_add(
        invoice=invoice,
        kind="plan",
        description="More",
        unit_price=Money("2.50", "EUR"),
        quantity=2,
    )
    with pytest.raises(InvalidInput) as error:
        invoice_line_add(
            invoice=invoice, kind="plan", description="Dollars", unit_price=Money("1", "USD")
        )

    invoice.refresh_from_db()
    assert invoice.total == Money("10.00", "EUR")
    assert error.value.code == "currency_mismatch"


def test_an_empty_draft_cannot_be_issued():
    with pytest.raises(InvalidInput):
        invoice_issue(invoice=invoice_create(customer=CustomerFactory()))


def test_voiding_is_the_correction_and_keeps_the_number():
    customer = CustomerFactory()
    invoice = invoice_issue(invoice=draft(customer), at=at(2026, 5, 1))

    voided = invoice_void(invoice=invoice, reason="Wrong plan billed", at=at(2026, 5, 2))

    assert voided.status == InvoiceStatus.VOID and voided.number == "INV-2026-000001"
    assert voided.void_reason == "Wrong plan billed"
    with pytest.raises(Conflict):
        invoice_void(invoice=voided, reason="again")
    assert [h.status for h in voided.history.order_by("history_id")] == ["draft", "issued", "void"]


def test_paying_an_issued_invoice_through_the_provider():
    customer = CustomerFactory()
    invoice = invoice_issue(invoice=draft(customer, "12.00"), at=at(2026, 5, 1))

    paid = invoice_pay(invoice=invoice, at=at(2026, 5, 3))

    assert paid.status == InvoiceStatus.PAID and paid.paid_at == at(2026, 5, 3)
    payment = paid.payments.get()
    assert (payment.provider, payment.amount, payment.status) == (
        "builtin",
        Money("12.00", "USD"),
        "succeeded",
    )
