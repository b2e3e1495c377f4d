"""Subscribing, period close with time travel, plan changes and cancelling: the invoices a
customer gets, to the cent."""

from decimal import Decimal

import pytest
from djmoney.money import Money

from billing.models import Invoice, InvoiceStatus, LineKind
from billing.services.period_close import periods_close
from billing.services.subscriptions import (
    proration_preview,
    subscription_cancel,
    subscription_change_plan,
    subscription_create,
)
from catalog.tests.factories import PlanFactory
from core.errors import InvalidInput
from customers.models import SubscriptionStatus
from customers.services import grant_create
from customers.tests.factories import CustomerFactory

from .conftest import at
from .factories import metered_entitlement, report_usage

pytestmark = pytest.mark.django_db


def lines_of(invoice):
    return [(line.kind, line.description, line.amount) for line in invoice.lines.all()]


def assert_total_is_sum_of_lines(invoice):
    total = sum((line.amount.amount for line in invoice.lines.all()), Decimal("0"))
    assert invoice.total == Money(total, invoice.currency)


def test_subscribing_issues_the_first_period_invoice_in_advance(customer, basic):
    subscription = subscription_create(customer=customer, plan=basic, at=at(2026, 1, 31))

    invoice = Invoice.objects.get(subscription=subscription)
    assert invoice.number == "INV-2026-000001"
    assert invoice.status == InvoiceStatus.ISSUED
    assert invoice.issued_at == at(2026, 1, 31)
    assert (invoice.period_start, invoice.period_end) == (at(2026, 1, 31), at(2026, 2, 28))
    assert lines_of(invoice) == [
        ("plan", "Basic plan, monthly (Jan 31, 2026 – Feb 28, 2026)", Money("10.50", "USD")),
        ("entitlement", "HD video: included", Money("0", "USD")),
        ("entitlement", "Seats: 10", Money("0", "USD")),
        ("entitlement", "Storage: 100 GB included, 0 GB used", Money("0", "USD")),
        ("entitlement", "Transfer: 50 GB included, 0 GB used", Money("0", "USD")),
    ]
    assert invoice.total == Money("10.50", "USD")


def test_periods_keep_the_anchor_day_jan_31_feb_28_mar_31(customer, basic):
    subscription = subscription_create(customer=customer, plan=basic, at=at(2026, 1, 31))

    assert periods_close(now=at(2026, 2, 28, 8, 59)).periods_closed == 0
    feb = periods_close(now=at(2026, 2, 28))
    mar = periods_close(now=at(2026, 3, 31))

    assert feb.invoices == ["INV-2026-000002"] and mar.invoices == ["INV-2026-000003"]
    periods = [
        (i.period_start, i.period_end)
        for i in Invoice.objects.filter(subscription=subscription).order_by("number")
    ]
    assert periods == [
        (at(2026, 1, 31), at(2026, 2, 28)),
        (at(2026, 2, 28), at(2026, 3, 31)),
        (at(2026, 3, 31), at(2026, 4, 30)),
    ]
    subscription.refresh_from_db()
    assert subscription.current_period_start == at(2026, 3, 31)
    assert subscription.current_period_end == at(2026, 4, 30)
    march = Invoice.objects.get(number="INV-2026-000003")
    assert march.lines.first().description == "Basic plan, monthly (Mar 31, 2026 – Apr 30, 2026)"
    assert march.total == Money("10.50", "USD")


def test_a_leap_year_february_ends_on_the_29th(customer, basic):
    subscription = subscription_create(customer=customer, plan=basic, at=at(2028, 1, 31))

    periods_close(now=at(2028, 2, 29))
    periods_close(now=at(2028, 3, 31))

    invoices = Invoice.objects.filter(subscription=subscription).order_by("number")
    assert [(i.number, i.period_start, i.period_end) for i in invoices] == [
        ("INV-2028-000001", at(2028, 1, 31), at(2028, 2, 29)),
        ("INV-2028-000002", at(2028, 2, 29), at(2028, 3, 31)),
        ("INV-2028-000003", at(2028, 3, 31), at(2028, 4, 30)),
    ]


def test_a_yearly_plan_several_periods_behind_catches_up(customer):
    yearly = PlanFactory(name="Annual", price=Money("300.00", "USD"), interval="year")
    subscription = subscription_create(customer=customer, plan=yearly, at=at(2028, 2, 29))
    assert subscription.current_period_end == at(2029, 2, 28)

    result = periods_close(now=at(2032, 3, 1))

    # Four years closed at once, each invoice issued now, numbered in this year.
    assert result.periods_closed == 4
    assert result.invoices == [f"INV-2032-00000{n}" for n in range(1, 5)]
    invoices = Invoice.objects.filter(subscription=subscription).order_by("period_start")
    assert [(i.period_start, i.period_end) for i in invoices] == [
        (at(2028, 2, 29), at(2029, 2, 28)),
        (at(2029, 2, 28), at(2030, 2, 28)),
        (at(2030, 2, 28), at(2031, 2, 28)),
        (at(2031, 2, 28), at(2032, 2, 29)),
        (at(2032, 2, 29), at(2033, 2, 28)),
    ]
    assert {i.total for i in invoices} == {Money("300.00", "USD")}
    assert invoices.last().lines.first().description == (
        "Annual plan, yearly (Feb 29, 2032 – Feb 28, 2033)"
    )


def test_period_close_bills_the_closed_periods_overage_and_lists_its_usage(customer, basic):
    subscription_create(customer=customer, plan=basic, at=at(2026, 1, 31))
    transfer = basic.entitlements.get(feature__key="transfer").feature
    grant_create(
        customer=customer, feature=transfer, quantity=Decimal("5"), effective_at=at(2026, 2, 1)
    )
    report_usage(customer, basic.storage, "87.5", at=at(2026, 2, 10))
    report_usage(customer, transfer, "40", at=at(2026, 2, 5))
    report_usage(customer, transfer, "22.5", at=at(2026, 2, 20))  # 62.5 GB: 50 + 5 granted

    result = periods_close(now=at(2026, 2, 28))

    invoice = Invoice.objects.get(number=result.invoices[0])
    assert lines_of(invoice) == [
        ("plan", "Basic plan, monthly (Feb 28, 2026 – Mar 31, 2026)", Money("10.50", "USD")),
        ("entitlement", "HD video: included", Money("0", "USD")),
        ("entitlement", "Seats: 10", Money("0", "USD")),
        ("entitlement", "Storage: 100 GB included, 87.5 GB used", Money("0", "USD")),
        (
            "entitlement",
            "Transfer: 50 GB included, 5 GB from top-ups and grants, 62.5 GB used",
            Money("0", "USD"),
        ),
        (
            "overage",
            "Transfer overage: 7.5 GB beyond 50 GB included and 5 GB from top-ups and grants "
            "(Jan 31, 2026 – Feb 28, 2026)",
            Money("1.88", "USD"),  # 7.5 x 0.25 = 1.875, half-up
        ),
    ]
    overage = invoice.lines.get(kind=LineKind.OVERAGE)
    assert overage.quantity == Decimal("7.5") and overage.unit_price == Money("0.25", "USD")
    assert invoice.total == Money("12.38", "USD")
    assert_total_is_sum_of_lines(invoice)


def test_an_exhausted_hard_limit_is_still_listed(customer, basic):
    subscription_create(customer=customer, plan=basic, at=at(2026, 1, 31))
    report_usage(customer, basic.storage, "104", at=at(2026, 2, 10))  # past the hard 100

    invoice = Invoice.objects.get(number=periods_close(now=at(2026, 2, 28)).invoices[0])

    descriptions = [line.description for line in invoice.lines.filter(kind="entitlement")]
    assert "Storage: 100 GB included, 104 GB used" in descriptions
    assert not invoice.lines.filter(kind="overage").exists()  # hard limits bill no overage


def test_a_euro_customer_is_billed_in_euros_to_the_cent():
    plan = PlanFactory(name="Starter", price=Money("19.99", "EUR"))
    calls = metered_entitlement(plan, "api-calls", name="API calls", unit="", limit="1000")
    calls.overage_price, calls.enforcement = Money("0.0125", "EUR"), "soft"
    calls.save()
    customer = CustomerFactory(currency="EUR")
    subscription_create(customer=customer, plan=plan, at=at(2026, 3, 15))
    report_usage(customer, calls.feature, "1234", at=at(2026, 3, 20))

    invoice = Invoice.objects.get(number=periods_close(now=at(2026, 4, 15)).invoices[0])

    assert invoice.currency == "EUR"
    assert lines_of(invoice) == [
        ("plan", "Starter plan, monthly (Apr 15, 2026 – May 15, 2026)", Money("19.99", "EUR")),
        ("entitlement", "API calls: 1,000 included, 1,234 used", Money("0", "EUR")),
        (
            "overage",
            "API calls overage: 234 beyond 1,000 included (Mar 15, 2026 – Apr 15, 2026)",
            Money("2.93", "EUR"),  # 234 x 0.0125 = 2.925, half-up
        ),
    ]
    assert invoice.total == Money("22.92", "EUR")
    assert_total_is_sum_of_lines(invoice)


def test_upgrade_prorates_by_days_on_an_invoice_issued_at_once(customer, basic, pro):
    subscription = subscription_create(customer=customer, plan=basic, at=at(2026, 1, 31))
    report_usage(customer, basic.storage, "120", at=at(2026, 2, 12))  # over Basic's 100

    preview = proration_preview(subscription=subscription, plan=pro, at=at(2026, 2, 13))
    change = subscription_change_plan(subscription=subscription, plan=pro, at=at(2026, 2, 13, 15))

    # Feb 13 -> Feb 28: 15 of 28 days.
    assert (preview.remaining_days, preview.period_days) == (15, 28)
    invoice = change.invoice
    assert not change.scheduled and change.subscription.plan == pro
    assert invoice.status == InvoiceStatus.ISSUED and invoice.issued_at == at(2026, 2, 13, 15)
    assert lines_of(invoice)[:2] == [
        (
            "proration",
            "Unused time on Basic from Feb 13, 2026 (15 of 28 days)",
            Money("-5.63", "USD"),  # -10.50 x 15/28 = -5.625, half-up away from zero
        ),
        (
            "proration",
            "Remaining time on Pro from Feb 13, 2026 (15 of 28 days)",
            Money("26.79", "USD"),  # 50 x 15/28 = 26.7857
        ),
    ]
    # Usage so far counts against the new limits.
    assert "Storage: 500 GB included, 120 GB used" in [d for _, d, _ in lines_of(invoice)]
    assert invoice.total == Money("21.16", "USD") == preview.total
    assert [(d.description, d.amount) for d in preview.lines] == [
        (line.description, line.amount) for line in invoice.lines.filter(kind="proration")
    ]
    assert_total_is_sum_of_lines(invoice)

    periods_close(now=at(2026, 2, 28))
    renewal = Invoice.objects.filter(subscription=subscription).latest("issued_at")
    assert renewal.lines.first().amount == Money("50.00", "USD")


def test_the_proration_preview_writes_nothing_and_refuses_a_downgrade(customer, basic, pro):
    subscription = subscription_create(customer=customer, plan=pro, at=at(2026, 1, 31))
    before = Invoice.objects.count()

    with pytest.raises(InvalidInput) as error:
        proration_preview(subscription=subscription, plan=basic, at=at(2026, 2, 13))

    assert error.value.code == "not_an_upgrade"
    assert Invoice.objects.count() == before


def test_downgrade_waits_for_the_period_end(customer, basic, pro):
    subscription = subscription_create(customer=customer, plan=pro, at=at(2026, 1, 31))

    change = subscription_change_plan(subscription=subscription, plan=basic, at=at(2026, 2, 10))

    assert change.scheduled and change.invoice is None
    assert change.subscription.plan == pro and change.subscription.scheduled_plan == basic
    assert Invoice.objects.filter(customer=customer).count() == 1

    periods_close(now=at(2026, 2, 28))

    subscription.refresh_from_db()
    assert subscription.plan == basic and subscription.scheduled_plan is None
    renewal = Invoice.objects.filter(subscription=subscription).latest("issued_at")
    assert renewal.lines.first().description == "Basic plan, monthly (Feb 28, 2026 – Mar 31, 2026)"
    assert renewal.total == Money("10.50", "USD")


def test_choosing_the_current_plan_again_drops_a_scheduled_downgrade(customer, basic, pro):
    subscription = subscription_create(customer=customer, plan=pro, at=at(2026, 1, 31))
    subscription_change_plan(subscription=subscription, plan=basic, at=at(2026, 2, 10))

    change = subscription_change_plan(subscription=subscription, plan=pro, at=at(2026, 2, 11))

    assert change.subscription.scheduled_plan is None and not change.scheduled


def test_an_upgrade_across_intervals_is_refused(customer, basic):
    yearly = PlanFactory(price=Money("100.00", "USD"), interval="year", rank=99)
    subscription = subscription_create(customer=customer, plan=basic, at=at(2026, 1, 31))

    with pytest.raises(InvalidInput) as error:
        subscription_change_plan(subscription=subscription, plan=yearly, at=at(2026, 2, 2))

    assert error.value.code == "interval_change"


def test_cancel_at_period_end_ends_without_a_new_invoice(customer, basic):
    subscription = subscription_create(customer=customer, plan=basic, at=at(2026, 1, 31))
    subscription_cancel(subscription=subscription)

    result = periods_close(now=at(2026, 3, 31))

    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.CANCELED
    assert subscription.ended_at == at(2026, 2, 28)
    assert result.subscriptions_ended == 1 and result.invoices == []
    assert Invoice.objects.filter(customer=customer).count() == 1


def test_cancel_still_bills_the_last_periods_overage(customer, basic):
    subscription = subscription_create(customer=customer, plan=basic, at=at(2026, 1, 31))
    transfer = basic.entitlements.get(feature__key="transfer").feature
    report_usage(customer, transfer, "54", at=at(2026, 2, 20))
    subscription_cancel(subscription=subscription)

    result = periods_close(now=at(2026, 3, 1))

    closing = Invoice.objects.get(number=result.invoices[0])
    assert closing.purpose == "closing"
    assert (closing.period_start, closing.period_end) == (at(2026, 1, 31), at(2026, 2, 28))
    assert closing.lines.filter(kind=LineKind.PLAN).count() == 0
    assert closing.lines.get(kind=LineKind.OVERAGE).amount == Money("1.00", "USD")
    assert closing.total == Money("1.00", "USD")


def test_closing_periods_twice_changes_nothing_the_second_time(customer, basic, pro):
    subscription_create(customer=customer, plan=basic, at=at(2026, 1, 31))
    other = CustomerFactory()
    subscription_create(customer=other, plan=pro, at=at(2026, 2, 5))
    transfer = basic.entitlements.get(feature__key="transfer").feature
    report_usage(customer, transfer, "70", at=at(2026, 2, 20))

    first = periods_close(now=at(2026, 4, 1))
    snapshot = list(Invoice.objects.values_list("number", "total", "status").order_by("number"))
    second = periods_close(now=at(2026, 4, 1))

    assert first.periods_closed == 3 and len(first.invoices) == 3
    assert second.periods_closed == 0 and second.invoices == []
    assert list(Invoice.objects.values_list("number", "total", "status").order_by("number")) == (
        snapshot
    )


def test_overage_of_a_daily_window_is_billed_once_across_periods(customer):
    plan = PlanFactory(price=Money("5.00", "USD"))
    calls = metered_entitlement(
        plan, "api", name="API", unit="", limit="10", soft_price="0.10", reset="day"
    )
    subscription_create(customer=customer, plan=plan, at=at(2026, 1, 10, 12))
    report_usage(customer, calls.feature, "15", at=at(2026, 1, 12, 8))  # 5 over, day closed
    report_usage(customer, calls.feature, "13", at=at(2026, 2, 10, 8))  # 3 over, day open

    january = periods_close(now=at(2026, 2, 10, 12))
    report_usage(customer, calls.feature, "14", at=at(2026, 2, 10, 20))  # 17 over that day
    february = periods_close(now=at(2026, 3, 10, 12))

    jan_overage = Invoice.objects.get(number=january.invoices[0]).lines.filter(kind="overage")
    feb_overage = Invoice.objects.get(number=february.invoices[0]).lines.filter(kind="overage")
    assert [line.quantity for line in jan_overage] == [Decimal("5"), Decimal("3")]
    # Feb 10 ended with 27 - 10 = 17 over: the 3 billed already are not billed again.
    assert [line.quantity for line in feb_overage] == [Decimal("14")]
