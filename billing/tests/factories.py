"""Helpers for billing tests, on top of the catalog's and customers' factories.

    plan = PlanFactory(price=Money("30.00", "USD"))
    storage = metered_entitlement(plan, "storage", limit="100", latest=True, show=True)
    customer = CustomerFactory()
    subscription = subscription_create(customer=customer, plan=plan, at=JAN_31)
    report_usage(customer, storage.feature, "87.5", at=FEB_10)

Subscriptions go through billing.services so that the first invoice exists, as in real use.
"""

import itertools
import threading
from decimal import Decimal

from djmoney.money import Money

from billing.providers import BuiltinPaymentProvider, PaymentResult
from catalog.models import Aggregation, Enforcement, FeatureKind
from catalog.tests.factories import FeatureFactory, PlanEntitlementFactory
from customers.engine import usage_record_batch

_events = itertools.count(1)


def metered_entitlement(
    plan,
    key: str,
    *,
    name: str | None = None,
    limit: str | None = "100",
    unit: str = "GB",
    latest: bool = False,
    soft_price: str | None = None,
    show: bool = True,
    reset: str = "billing_period",
    feature=None,
):
    """A metered entitlement of `plan` (creating the feature unless given); `soft_price`
    makes the limit soft with that overage price per unit in the plan's currency."""
    if feature is None:
        feature = FeatureFactory(
            key=key,
            name=name or key.replace("-", " ").capitalize(),
            kind=FeatureKind.METERED,
            unit=unit,
            aggregation=Aggregation.LATEST if latest else Aggregation.SUM,
        )
    return PlanEntitlementFactory(
        plan=plan,
        feature=feature,
        limit=Decimal(limit) if limit is not None else None,
        unlimited=limit is None,
        reset=reset,
        enforcement=Enforcement.SOFT if soft_price else Enforcement.HARD,
        overage_price=Money(soft_price, plan.price.currency) if soft_price else None,
        show_on_invoice=show,
    )


def report_usage(customer, feature, quantity, *, at) -> None:
    """Reported usage (recorded even past a hard limit) at `at`; for a `latest` feature the
    quantity is the new level."""
    result = usage_record_batch(
        [
            {
                "event_id": f"billing-test-{next(_events)}",
                "customer": customer.external_id,
                "feature": feature.key,
                "quantity": str(quantity),
                "timestamp": at,
            }
        ]
    )
    assert result.accepted == 1, result.rejected


class CountingProvider(BuiltinPaymentProvider):
    """The built-in provider that counts its charges (thread-safe)."""

    name = "counting"

    def __init__(self) -> None:
        self.charges = 0
        self.keys: list[str] = []
        self._lock = threading.Lock()

    def charge(self, invoice, *, amount, idempotency_key) -> PaymentResult:
        with self._lock:
            self.charges += 1
            self.keys.append(idempotency_key)
        return super().charge(invoice, amount=amount, idempotency_key=idempotency_key)
