"""The close_periods command and the Celery task that beat runs."""

import pytest
from django.core.management import CommandError, call_command
from djmoney.money import Money

from billing import tasks
from billing.models import Invoice
from billing.services.period_close import periods_close
from billing.services.subscriptions import subscription_create
from customers.tests.factories import CustomerFactory

from .conftest import at
from .factories import report_usage

pytestmark = pytest.mark.django_db


def test_the_command_closes_ended_periods_once(customer, basic, capsys):
    subscription_create(customer=customer, plan=basic, at=at(2026, 1, 31))

    call_command("close_periods", "--now", "2026-03-01T00:00:00Z")
    first = capsys.readouterr().out
    call_command("close_periods", "--now", "2026-03-01T00:00:00Z")
    second = capsys.readouterr().out

    assert "Closed 1 period(s), ended 0 subscription(s), issued 1 invoice(s): INV-2026-000002." in (
        first
    )
    assert "Closed 0 period(s)" in second
    assert Invoice.objects.count() == 2


def test_the_command_rejects_a_naive_time():
    with pytest.raises(CommandError):
        call_command("close_periods", "--now", "2026-03-01T00:00:00")


def test_the_task_is_registered_under_its_beat_name_and_closes_periods(customer, basic, settings):
    subscription_create(customer=customer, plan=basic, at=at(2020, 1, 31))

    assert tasks.close_periods.name == "billing.tasks.close_periods"
    result = tasks.close_periods.delay().get()

    assert result["periods_closed"] > 70 and result["failed"] == {}
    assert tasks.close_periods.delay().get()["periods_closed"] == 0


def test_a_subscription_that_cannot_be_billed_is_reported_and_the_others_closed(
    customer, basic, pro
):
    subscription_create(customer=customer, plan=basic, at=at(2026, 1, 31))
    subscription_create(customer=CustomerFactory(), plan=pro, at=at(2026, 1, 31))
    transfer = basic.entitlements.get(feature__key="transfer")
    transfer.overage_price = Money("0.25", "EUR")  # misconfigured for a USD plan
    transfer.save()
    report_usage(customer, transfer.feature, "60", at=at(2026, 2, 2))

    result = periods_close(now=at(2026, 3, 1))

    assert len(result.invoices) == 1 and list(result.failed.values()) == [
        "The overage price of Transfer is in EUR; Acme Ltd (acme) is billed in USD."
    ]
    with pytest.raises(CommandError):
        call_command("close_periods", "--now", "2026-03-01T00:00:00Z")


def test_collect_payments_charges_what_is_due_and_reports(customer, basic, capsys, settings):
    settings.BILLING_PAYMENT_PROVIDER = "billing.providers.TestPaymentProvider"
    settings.BILLING_TEST_PROVIDER_DECLINE = ["acme"]
    subscription_create(customer=customer, plan=basic, at=at(2026, 1, 31))  # not charged yet
    number = Invoice.objects.get().number

    call_command("collect_payments", "--now", "2026-02-10T00:00:00Z")

    assert capsys.readouterr().out.strip() == (
        "Paid 0, declined 1, errors 0; 1 subscription(s) now past due."
    )
    settings.BILLING_TEST_PROVIDER_DECLINE = []
    call_command("collect_payments", "--now", "2026-02-11T00:00:00Z")
    assert "Paid 1, declined 0" in capsys.readouterr().out
    assert Invoice.objects.get(number=number).status == "paid"
    with pytest.raises(CommandError):
        call_command("collect_payments", "--now", "tomorrow")


def test_the_collection_task_is_registered_under_its_beat_name(customer, basic):
    from django_celery_beat.models import PeriodicTask

    subscription_create(customer=customer, plan=basic, at=at(2026, 1, 31))
    schedules = dict(PeriodicTask.objects.values_list("name", "task"))

    assert schedules["Retry failed payments"] == "billing.tasks.payments_collect"
    assert schedules["Send pending invoice emails"] == "billing.tasks.invoice_emails_sweep"
    result = tasks.payments_collect.apply().get()
    assert result["paid"] == [Invoice.objects.get().number]
