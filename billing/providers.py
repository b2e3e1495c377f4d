"""The payment-provider interface: where a real payment processor plugs in (docs/payments.md).

A provider moves money and answers with a PaymentResult; it never writes to the database
(billing records every attempt as a Payment row). Every call carries an idempotency key that
billing derives from the invoice and the attempt: the same key again must never move money
twice, it answers the first outcome. `settings.BILLING_PAYMENT_PROVIDER` names the provider.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from django.conf import settings
from django.utils.module_loading import import_string

if TYPE_CHECKING:
    from djmoney.money import Money

    from .models import Invoice, Payment


@dataclass(frozen=True)
class PaymentResult:
    """What the processor answered: `reference` is its id of the charge or refund; `message`
    the reason of a decline, as the customer may read it."""

    succeeded: bool
    reference: str = ""
    message: str = ""


@runtime_checkable
class PaymentProvider(Protocol):
    name: str

    def charge(self, invoice: Invoice, *, amount: Money, idempotency_key: str) -> PaymentResult:
        """Charges `amount` (the invoice's total) to the invoice's customer. Called with no
        database lock held, except for a top-up purchase, which is charged inside its
        transaction before the invoice gets its number. A decline is a result, not an
        exception; an exception means "unknown": billing retries later with the same key."""
        ...

    def refund(self, payment: Payment, *, amount: Money, idempotency_key: str) -> PaymentResult:
        """Gives back `amount` of a succeeded charge (`payment.reference` names it)."""
        ...


def _reference(prefix: str, idempotency_key: str) -> str:
    # The same key, the same reference: what a processor's idempotency does.
    return f"{prefix}_{hashlib.sha256(idempotency_key.encode()).hexdigest()[:20]}"


class BuiltinPaymentProvider:
    """Records every charge and refund as succeeded: payments are collected outside this
    system (bank transfer, a processor not wired in yet)."""

    name = "builtin"

    def charge(self, invoice: Invoice, *, amount: Money, idempotency_key: str) -> PaymentResult:
        return PaymentResult(succeeded=True, reference=_reference("ch", idempotency_key))

    def refund(self, payment: Payment, *, amount: Money, idempotency_key: str) -> PaymentResult:
        return PaymentResult(succeeded=True, reference=_reference("re", idempotency_key))


class TestPaymentProvider(BuiltinPaymentProvider):
    """Succeeds like the built-in provider, except for the customers listed in
    settings.BILLING_TEST_PROVIDER_DECLINE (external ids; `*` for all), whose charges are
    declined: the switch that lets tests and a person try dunning end to end."""

    __test__ = False  # not a pytest test class
    name = "test"
    decline_message = "Your card was declined (test provider)."

    def charge(self, invoice: Invoice, *, amount: Money, idempotency_key: str) -> PaymentResult:
        declined = settings.BILLING_TEST_PROVIDER_DECLINE
        if "*" in declined or invoice.customer.external_id in declined:
            return PaymentResult(succeeded=False, message=self.decline_message)
        return super().charge(invoice, amount=amount, idempotency_key=idempotency_key)


class FailingPaymentProvider:
    """Declines every charge and refund: for tests of the failure paths."""

    name = "failing"

    def __init__(self, message: str = "The card was declined.") -> None:
        self.message = message

    def charge(self, invoice: Invoice, *, amount: Money, idempotency_key: str) -> PaymentResult:
        return PaymentResult(succeeded=False, message=self.message)

    def refund(self, payment: Payment, *, amount: Money, idempotency_key: str) -> PaymentResult:
        return PaymentResult(succeeded=False, message=self.message)


def payment_provider_default() -> PaymentProvider:
    return import_string(settings.BILLING_PAYMENT_PROVIDER)()
