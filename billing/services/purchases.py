"""Top-up purchases: the invoice, its payment and the grant, in one transaction, idempotent on
the customer's purchase key."""

from __future__ import annotations

import datetime as dt
import hashlib

from django.db import IntegrityError, transaction
from django.utils import timezone

from billing.models import InvoicePurpose, LineKind, TopUpPurchase
from billing.providers import PaymentProvider, payment_provider_default
from catalog.models import TopUpPack
from core import bounds
from core.errors import Conflict, InvalidInput
from core.text import day_text, quantity_text
from customers import services as customer_services
from customers.models import Customer, GrantSource, Subscription

from .invoices import LineDraft, invoice_create, invoice_issue
from .payments import invoice_mark_paid, payment_charge
from .period_close import period_at


def _idempotency_key_clean(key) -> str:
    if not isinstance(key, str) or not key.strip():
        raise InvalidInput("An idempotency key is required.", code="invalid_idempotency_key")
    if len(key) > 255:
        raise InvalidInput(
            "The idempotency key is at most 255 characters.", code="invalid_idempotency_key"
        )
    try:
        bounds.url_safe_check(key)  # it names the receipt's page
    except bounds.Refused as refused:
        raise InvalidInput(
            f"The idempotency key {refused}.",
            code="invalid_idempotency_key",
            details={"idempotency_key": [f"The idempotency key {refused}."]},
        ) from None
    return key


def _charge_key(customer: Customer, key: str) -> str:
    """The provider's idempotency key of a purchase: the same double click, the same key (the
    draft invoice has no number yet, and a declined purchase leaves no invoice behind)."""
    charge_key = f"topup:{customer.pk}:{key}"
    if len(charge_key) > 255:
        charge_key = f"topup:{customer.pk}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"
    return charge_key


def _pack_check(customer: Customer, pack: TopUpPack, subscription: Subscription | None) -> None:
    if not pack.active:
        raise InvalidInput(f"The top-up {pack.name!r} is not on sale.", code="pack_inactive")
    if subscription is None:
        raise InvalidInput(
            "Top-ups are sold to customers with an active subscription.", code="no_subscription"
        )
    offered_on = set(pack.plans.values_list("pk", flat=True))
    if offered_on and subscription.plan_id not in offered_on:
        raise InvalidInput(
            f"The top-up {pack.name!r} is not offered on the {subscription.plan.name} plan.",
            code="pack_not_offered",
        )
    if str(pack.price.currency) != customer.currency:
        raise InvalidInput(
            f"The top-up {pack.name!r} is priced in {pack.price.currency}; this customer is "
            f"billed in {customer.currency}.",
            code="currency_mismatch",
        )


@transaction.atomic
def topup_purchase(
    *,
    customer: Customer,
    pack: TopUpPack,
    idempotency_key: str,
    provider: PaymentProvider | None = None,
    at: dt.datetime | None = None,
) -> TopUpPurchase:
    """Buys a top-up pack: an invoice charged through `provider` (default: the configured one)
    and marked paid, and the grant (source topup; expiry from the pack, `period_end` packs
    expire with the current billing period), all in one transaction.

    Idempotent on (customer, idempotency_key): the customer row is locked first, so a double
    submit waits for the first and gets the same purchase back; one charge, one grant (a
    unique constraint backs this up). The key reused for another pack raises Conflict
    (`idempotency_conflict`). A declined payment raises PaymentFailed and leaves nothing: no
    grant, no invoice, no number used. Raises InvalidInput (`pack_inactive`,
    `pack_not_offered`, `currency_mismatch`, `no_subscription`, `invalid_idempotency_key`)."""
    key = _idempotency_key_clean(idempotency_key)
    customer = Customer.objects.select_for_update().get(pk=customer.pk)
    existing = (
        TopUpPurchase.objects.filter(customer=customer, idempotency_key=key)
        .select_related("invoice", "grant", "pack")
        .first()
    )
    if existing is not None:
        if existing.pack_id != pack.pk:
            raise Conflict(
                f"The idempotency key {key!r} was already used to buy {existing.pack.name}.",
                code="idempotency_conflict",
                details={"idempotency_key": key},
            )
        return existing
    at = (at or timezone.now()).astimezone(dt.UTC)
    subscription = customer_services.subscription_active(customer)
    _pack_check(customer, pack, subscription)
    _, period_end = period_at(subscription, at)
    expires_at = customer_services.grant_expiry_for(pack, at=at, period_end=period_end)
    feature = pack.feature
    grant = customer_services.grant_create(
        customer=customer,
        feature=feature,
        quantity=pack.quantity,
        source=GrantSource.TOPUP,
        reason=f"Top-up purchase: {pack.name}",
        effective_at=at,
        expires_at=expires_at,
        topup_pack=pack,
    )
    expiry = f"until {day_text(expires_at)}" if expires_at else "no expiry"
    invoice = invoice_create(
        customer=customer,
        purpose=InvoicePurpose.TOPUP,
        subscription=subscription,
        lines=[
            LineDraft(
                kind=LineKind.TOPUP,
                description=(
                    f"Top-up: {pack.name} ({quantity_text(pack.quantity, feature.unit)} of "
                    f"{feature.name}, {expiry})"
                ),
                unit_price=pack.price,
                feature_id=feature.pk,
                grant_id=grant.pk,
            )
        ],
    )
    # Charged before numbering, so the numbering lock is not held while a gateway answers.
    payment_charge(
        invoice, provider or payment_provider_default(), pack.name, _charge_key(customer, key)
    )
    invoice = invoice_mark_paid(invoice_issue(invoice=invoice, at=at), at)
    purchase = TopUpPurchase(
        customer=customer, idempotency_key=key, pack=pack, invoice=invoice, grant=grant
    )
    try:
        with transaction.atomic():
            purchase.save()
    except IntegrityError:
        # Only if a writer skipped the customer lock; its purchase stands, this one rolls back.
        raise Conflict(
            f"A purchase with the idempotency key {key!r} is already in progress.",
            code="idempotency_conflict",
        ) from None
    return purchase
