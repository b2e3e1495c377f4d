"""The payment-provider interface: where a real gateway plugs in.

A provider charges an invoice's total and answers with a PaymentResult; it never writes to the
database (billing records the Payment). `settings.BILLING_PAYMENT_PROVIDER` (a dotted path,
optional) names the default; the built-in provider records the payment as succeeded.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from django.conf import settings
from django.utils.module_loading import import_string

if TYPE_CHECKING:
    from .models import Invoice

DEFAULT_PROVIDER = "billing.payments.BuiltinPaymentProvider"


@dataclass(frozen=True)
class PaymentResult:
    succeeded: bool
    reference: str = ""
    message: str = ""


@runtime_checkable
class PaymentProvider(Protocol):
    name: str

    def charge(self, invoice: Invoice) -> PaymentResult:
        """Charges `invoice.total` to the invoice's customer. Called inside the purchase's
        transaction, before the invoice gets its number (so the numbering lock is not held
        while a gateway answers)."""
        ...


class BuiltinPaymentProvider:
    """Records the payment as succeeded (payments are collected outside this system)."""

    name = "builtin"

    def charge(self, invoice: Invoice) -> PaymentResult:
        return PaymentResult(succeeded=True, reference=f"builtin-{uuid.uuid4().hex[:16]}")


class FailingPaymentProvider:
    """Declines every charge: for tests and for trying the failure path in a demo."""

    name = "failing"

    def __init__(self, message: str = "The card was declined.") -> None:
        self.message = message

    def charge(self, invoice: Invoice) -> PaymentResult:
        return PaymentResult(succeeded=False, message=self.message)


def payment_provider_default() -> PaymentProvider:
    path = getattr(settings, "BILLING_PAYMENT_PROVIDER", DEFAULT_PROVIDER)
    return import_string(path)()
