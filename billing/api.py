"""Billing endpoints under /api/v1/customers/{external_id}/: subscription, top-ups, invoices.
Same style and error format as the customers API; every write goes through billing.services."""

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_view
from rest_framework import generics, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog.models import Plan, TopUpPack
from core import bounds
from core.api import decimal_str, money_json, time_str
from core.errors import InvalidInput, NotFound
from customers.api import ErrorOut, customer_by_external_id
from customers.models import Subscription
from customers.services import subscription_active

from . import selectors
from .models import Invoice, InvoiceStatus, TopUpPurchase
from .services.purchases import topup_purchase
from .services.subscriptions import (
    subscription_cancel,
    subscription_change_plan,
    subscription_create,
)


def invoice_json(invoice: Invoice) -> dict:
    return {
        "number": invoice.number,
        "status": invoice.status,
        "issued_at": time_str(invoice.issued_at),
        "period_start": time_str(invoice.period_start),
        "period_end": time_str(invoice.period_end),
        "currency": invoice.currency,
        "total": money_json(invoice.total),
        "lines": [
            {
                "kind": line.kind,
                "description": line.description,
                "feature": line.feature.key if line.feature_id else None,
                "quantity": decimal_str(line.quantity),
                "unit_price": money_json(line.unit_price),
                "amount": money_json(line.amount),
            }
            for line in invoice.lines.all()
        ],
    }


def subscription_json(subscription: Subscription) -> dict:
    return {
        "plan": subscription.plan.key,
        "plan_version": subscription.plan_version.number,
        "status": subscription.status,
        "current_period_start": time_str(subscription.current_period_start),
        "current_period_end": time_str(subscription.current_period_end),
        "cancel_at_period_end": subscription.cancel_at_period_end,
        "scheduled_plan": subscription.scheduled_plan.key if subscription.scheduled_plan else None,
    }


def purchase_json(purchase: TopUpPurchase) -> dict:
    grant = purchase.grant
    return {
        "invoice": invoice_json(selectors.invoice_get(number=purchase.invoice.number)),
        "grant": {
            "feature": grant.feature.key,
            "quantity": decimal_str(grant.quantity),
            "expires_at": time_str(grant.expires_at),
        },
    }


# Schema-only serializers for the hand-built JSON.
class MoneyOut(serializers.Serializer):
    amount = serializers.CharField()
    currency = serializers.CharField()


class InvoiceLineOut(serializers.Serializer):
    kind = serializers.ChoiceField(["plan", "topup", "overage", "proration", "entitlement"])
    description = serializers.CharField()
    feature = serializers.CharField(allow_null=True)
    quantity = serializers.CharField()
    unit_price = MoneyOut()
    amount = MoneyOut()


class InvoiceOut(serializers.Serializer):
    number = serializers.CharField(allow_null=True)
    status = serializers.ChoiceField(InvoiceStatus.choices)
    issued_at = serializers.DateTimeField(allow_null=True)
    period_start = serializers.DateTimeField(allow_null=True)
    period_end = serializers.DateTimeField(allow_null=True)
    currency = serializers.CharField()
    total = MoneyOut()
    lines = InvoiceLineOut(many=True)


class SubscriptionOut(serializers.Serializer):
    plan = serializers.CharField()
    plan_version = serializers.IntegerField(help_text="The number of the plan's version it is on.")
    status = serializers.CharField()
    current_period_start = serializers.DateTimeField()
    current_period_end = serializers.DateTimeField()
    cancel_at_period_end = serializers.BooleanField()
    scheduled_plan = serializers.CharField(allow_null=True)


class SubscriptionIn(serializers.Serializer):
    plan = serializers.CharField(help_text="The plan's key.")


class TopUpIn(serializers.Serializer):
    pack = serializers.CharField(help_text="The top-up pack's key.")
    idempotency_key = serializers.CharField(max_length=255)


class TopUpOut(serializers.Serializer):
    invoice = InvoiceOut()
    grant = serializers.DictField()


def _string_field(data, name: str, max_length: int = 255) -> str:
    if not isinstance(data, dict):
        raise InvalidInput("The body is a JSON object.", code="invalid_body")
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{name} is required.", code=f"invalid_{name}")
    # A lone surrogate too (not only a NUL): the lookup that follows cannot encode it.
    if len(value) > max_length or bounds.text_unstorable(value):
        message = f"{name} is at most {max_length} characters, without NUL or lone surrogates."
        raise InvalidInput(message, code=f"invalid_{name}", details={name: [message]})
    return value


def _plan(key: str) -> Plan:
    plan = Plan.objects.filter(key=key).first()
    if plan is None:
        raise NotFound(f"No plan {key!r}.", code="plan_not_found")
    return plan


class SubscriptionView(APIView):
    def _active(self, customer):
        subscription = subscription_active(customer)
        if subscription is None:
            raise NotFound("This customer has no active subscription.", code="not_subscribed")
        return subscription

    @extend_schema(
        summary="The customer's active subscription",
        tags=["billing"],
        responses={200: SubscriptionOut, 404: ErrorOut, 401: ErrorOut},
    )
    def get(self, request, external_id: str):
        customer = customer_by_external_id(external_id)
        return Response(subscription_json(self._active(customer)))

    @extend_schema(
        summary="Subscribe, or change plan (an upgrade at once, a downgrade at the period end)",
        description="Subscribing invoices the first period in advance. An upgrade (a plan of "
        "higher rank) applies at once with a proration invoice; a downgrade is scheduled.",
        tags=["billing"],
        request=SubscriptionIn,
        responses={200: SubscriptionOut, 201: SubscriptionOut, 400: ErrorOut, 404: ErrorOut},
        examples=[OpenApiExample("Upgrade", {"plan": "business"}, request_only=True)],
    )
    def post(self, request, external_id: str):
        customer = customer_by_external_id(external_id)
        plan = _plan(_string_field(request.data, "plan"))
        current = subscription_active(customer)
        if current is None:
            subscription = subscription_create(customer=customer, plan=plan)
            return Response(subscription_json(subscription), status=201)
        change = subscription_change_plan(subscription=current, plan=plan)
        return Response(subscription_json(change.subscription))

    @extend_schema(
        summary="Cancel at the period end",
        tags=["billing"],
        request=None,
        responses={200: SubscriptionOut, 404: ErrorOut},
    )
    def delete(self, request, external_id: str):
        customer = customer_by_external_id(external_id)
        subscription = subscription_cancel(subscription=self._active(customer))
        return Response(subscription_json(subscription))


class TopUpView(APIView):
    @extend_schema(
        summary="Buy a top-up pack: invoice issued and paid, units granted; idempotent on the key",
        tags=["billing"],
        request=TopUpIn,
        responses={201: TopUpOut, 200: TopUpOut, 400: ErrorOut, 402: ErrorOut, 404: ErrorOut},
        examples=[
            OpenApiExample(
                "Extra 20 GB",
                {"pack": "extra-20-gb", "idempotency_key": "buy-7f3a"},
                request_only=True,
            )
        ],  # fmt: skip
    )
    def post(self, request, external_id: str):
        customer = customer_by_external_id(external_id)
        pack_key = _string_field(request.data, "pack")
        key = _string_field(request.data, "idempotency_key")
        pack = TopUpPack.objects.filter(key=pack_key).first()
        if pack is None:
            raise NotFound(f"No top-up pack {pack_key!r}.", code="pack_not_found")
        existed = TopUpPurchase.objects.filter(customer=customer, idempotency_key=key).exists()
        purchase = topup_purchase(customer=customer, pack=pack, idempotency_key=key)
        return Response(purchase_json(purchase), status=200 if existed else 201)


@extend_schema_view(
    get=extend_schema(summary="The customer's invoices, newest first", tags=["billing"])
)
class InvoiceListView(generics.ListAPIView):
    serializer_class = InvoiceOut
    queryset = Invoice.objects.none()

    def get_queryset(self):
        customer = customer_by_external_id(self.kwargs["external_id"])
        return selectors.invoice_list(customer=customer).prefetch_related("lines__feature")

    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response([invoice_json(i) for i in page])


class InvoiceDetailView(APIView):
    @extend_schema(
        summary="One invoice with its lines",
        tags=["billing"],
        responses={200: InvoiceOut, 404: ErrorOut},
    )
    def get(self, request, external_id: str, number: str):
        customer = customer_by_external_id(external_id)
        invoice = get_object_or_404(
            selectors.invoice_list(customer=customer).prefetch_related("lines__feature"),
            number=number,
        )
        return Response(invoice_json(invoice))
