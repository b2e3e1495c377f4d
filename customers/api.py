"""The customers API: the hot endpoints (check, consume, batch usage) and the management of
customers, overrides and grants. Hot views call the engine only and build their JSON by hand:
no serializer machinery on the request path."""

import datetime as dt

from django.db import transaction
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import generics, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog.api import ENTITLEMENT_VALUE_FIELDS, EntitlementValuesSerializer
from catalog.models import Enforcement, Feature
from core.api import decimal_str, time_str
from core.api_fields import DecimalStringField, InstantField, UrlSafeIdField
from core.errors import InvalidInput, NotFound
from core.hot import Lean, WithStatus
from core.openapi import ErrorOut

from . import engine, selectors, services
from .models import SUBSCRIPTION_CURRENT, Customer, EntitlementOverride, Grant, GrantSource

# --- representations ----------------------------------------------------------------------


def entitlement_json(e: engine.Entitlement) -> dict:
    """`E` of DESIGN.md: decimals as strings, times ISO 8601 UTC."""
    return {
        "feature": e.feature,
        "kind": e.kind,
        "has_access": e.has_access,
        "value": e.value,
        "unlimited": e.unlimited,
        "limit": decimal_str(e.limit),
        "granted": decimal_str(e.granted),
        "usage": decimal_str(e.usage),
        "balance": decimal_str(e.balance),
        "overage": decimal_str(e.overage),
        "reserved": decimal_str(e.reserved),
        "enforcement": e.enforcement,
        "source": e.source,
        "period_start": time_str(e.period_start),
        "period_end": time_str(e.period_end),
        "resets_at": time_str(e.resets_at),
    }


def customer_by_external_id(external_id: str) -> Customer:
    customer = Customer.objects.filter(external_id=external_id).first()
    if customer is None:
        raise NotFound(f"No customer {external_id!r}.", code="customer_not_found")
    return customer


# Schema-only serializers: document the hand-built JSON.
class EntitlementOut(serializers.Serializer):
    feature = serializers.CharField()
    kind = serializers.ChoiceField(["boolean", "metered", "config"])
    has_access = serializers.BooleanField()
    value = serializers.CharField(allow_null=True)
    unlimited = serializers.BooleanField()
    limit = serializers.CharField(allow_null=True, help_text="Decimal as a string.")
    granted = serializers.CharField(allow_null=True)
    usage = serializers.CharField(allow_null=True)
    balance = serializers.CharField(allow_null=True)
    overage = serializers.CharField(allow_null=True)
    reserved = serializers.CharField(
        allow_null=True,
        help_text="Units held now by reservations (not expired); `balance` excludes them.",
    )
    enforcement = serializers.ChoiceField(Enforcement.choices, allow_null=True)
    source = serializers.ChoiceField(["plan", "override", "grant"], allow_null=True)
    period_start = serializers.DateTimeField(allow_null=True)
    period_end = serializers.DateTimeField(allow_null=True)
    resets_at = serializers.DateTimeField(allow_null=True)


class EntitlementsOut(serializers.Serializer):
    customer = serializers.CharField()
    plan = serializers.CharField(allow_null=True)
    entitlements = EntitlementOut(many=True)


class ConsumeIn(serializers.Serializer):
    quantity = serializers.CharField(help_text='A positive decimal, e.g. "1" or "2.5".')
    event_id = serializers.CharField(max_length=255, help_text="Idempotency key.")
    timestamp = serializers.DateTimeField(required=False)
    properties = serializers.DictField(required=False)
    dry_run = serializers.BooleanField(required=False, default=False)


class ConsumeOut(serializers.Serializer):
    allowed = serializers.BooleanField()
    reason = serializers.ChoiceField(
        ["limit_exceeded", "no_access", "payment_overdue"], allow_null=True
    )
    entitlement = EntitlementOut()


E_EXAMPLE = {
    "feature": "storage",
    "kind": "metered",
    "has_access": True,
    "value": None,
    "unlimited": False,
    "limit": "100",
    "granted": "20",
    "usage": "87.5",
    "balance": "32.5",
    "overage": "0",
    "reserved": "0",
    "enforcement": "hard",
    "source": "plan",
    "period_start": "2026-11-01T00:00:00Z",
    "period_end": "2026-12-01T00:00:00Z",
    "resets_at": "2026-12-01T00:00:00Z",
}
ERRORS = {
    401: ErrorOut,
    404: ErrorOut,
    400: ErrorOut,
}


# --- the hot endpoints --------------------------------------------------------------------
# Each answer is built by one function from the path values and the parsed body, called by the
# lean path of `core.hot` (what serves these paths: each view's `lean`) and by the DRF views below
# (which document them in the schema and serve them if the lean views are switched off).


def check_answer(external_id: str, feature_key: str) -> dict:
    return entitlement_json(engine.entitlement_check(external_id, feature_key))


def entitlements_answer(external_id: str) -> dict:
    state, entitlements = engine.entitlements_resolve(external_id, with_state=True)
    subscription = state.subscription
    return {
        "customer": state.customer.external_id,
        "plan": subscription.plan.key if subscription else None,
        "entitlements": [entitlement_json(e) for e in entitlements],
    }


def _body(data) -> dict:
    if not isinstance(data, dict):
        raise InvalidInput("The body is a JSON object.", code="invalid_body")
    return data


def consume_answer(external_id: str, feature_key: str, data) -> dict:
    data = _body(data)
    dry_run = data.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidInput("dry_run is true or false.", code="invalid_dry_run")
    properties = data.get("properties")
    if "quantity" not in data:
        raise InvalidInput(
            "quantity: This field is required.", details={"quantity": ["This field is required."]}
        )
    result = engine.entitlement_consume(
        external_id,
        feature_key,
        data.get("quantity"),
        data.get("event_id"),
        timestamp=data.get("timestamp"),
        properties=properties,
        dry_run=dry_run,
    )
    return {
        "allowed": result.allowed,
        "reason": result.reason,
        "entitlement": entitlement_json(result.entitlement),
    }


MAX_BATCH = 1000


def usage_batch_answer(data) -> dict:
    events = _body(data).get("events")
    if not isinstance(events, list):
        raise InvalidInput("events is a list of usage events.", code="invalid_events")
    if len(events) > MAX_BATCH:
        raise InvalidInput(
            f"At most {MAX_BATCH} events per request; got {len(events)}.",
            code="batch_too_large",
        )
    result = engine.usage_record_batch(events)
    return {
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "rejected": result.rejected,
    }


def reservation_json(reservation) -> dict:
    """A reservation: expiry is computed, so a hold past its `expires_at` reads `expired`."""
    return {
        "id": reservation.reservation_id,
        "feature": reservation.feature.key,
        "quantity": decimal_str(reservation.quantity),
        "status": reservation.status_at(dt.datetime.now(dt.UTC)),
        "expires_at": time_str(reservation.expires_at),
        "committed_quantity": decimal_str(reservation.committed_quantity),
    }


def reservation_answer(result) -> dict:
    return {
        "reservation": reservation_json(result.reservation),
        "entitlement": entitlement_json(result.entitlement),
    }


def hold_answer(external_id: str, feature_key: str, data) -> WithStatus:
    data = _body(data)
    for name in ("reservation_id", "quantity"):
        if name not in data:
            message = "This field is required."
            raise InvalidInput(f"{name}: {message}", details={name: [message]})
    result = engine.reservation_hold(
        external_id,
        feature_key,
        data.get("reservation_id"),
        data.get("quantity"),
        ttl_seconds=data.get("ttl_seconds"),
    )
    body = {
        "allowed": result.allowed,
        "reason": result.reason,
        "reservation": reservation_json(result.reservation) if result.reservation else None,
        "entitlement": entitlement_json(result.entitlement),
    }
    return WithStatus(201 if result.allowed else 200, body)


def commit_answer(external_id: str, feature_key: str, reservation_id: str, data) -> dict:
    data = _body(data)
    quantity = data.get("quantity")
    if quantity is None and "quantity" in data:  # absent means all of it; null means nothing
        message = "quantity is a decimal from 0 to the held quantity; leave it out for all."
        raise InvalidInput(f"quantity: {message}", details={"quantity": [message]})
    result = engine.reservation_commit(external_id, feature_key, reservation_id, quantity)
    return reservation_answer(result)


def release_answer(external_id: str, feature_key: str, reservation_id: str) -> dict:
    return reservation_answer(engine.reservation_release(external_id, feature_key, reservation_id))


def reservation_get_answer(external_id: str, feature_key: str, reservation_id: str) -> dict:
    return reservation_answer(engine.reservation_get(external_id, feature_key, reservation_id))


class EntitlementsView(APIView):
    runtime_endpoint = True
    lean = Lean("GET", entitlements_answer)

    @extend_schema(
        summary="Check all entitlements of a customer",
        tags=["entitlements"],
        responses={200: EntitlementsOut, **ERRORS},
        examples=[
            OpenApiExample(
                "Basic Storage",
                {"customer": "acme", "plan": "basic", "entitlements": [E_EXAMPLE]},
                response_only=True,
            )
        ],
    )
    def get(self, request, external_id: str):
        return Response(entitlements_answer(external_id))


class EntitlementView(APIView):
    runtime_endpoint = True
    lean = Lean("GET", check_answer)

    @extend_schema(
        summary="Check one entitlement: may this customer use this feature now?",
        tags=["entitlements"],
        responses={200: EntitlementOut, **ERRORS},
        examples=[OpenApiExample("Storage", E_EXAMPLE, response_only=True)],
    )
    def get(self, request, external_id: str, feature_key: str):
        return Response(check_answer(external_id, feature_key))


class ConsumeView(APIView):
    runtime_endpoint = True
    lean = Lean("POST", consume_answer)

    @extend_schema(
        summary="Consume units of a metered feature (atomic check-and-record)",
        description="A denial is a 200 with `allowed: false` and records nothing. The same "
        "`event_id` again returns the first outcome and counts once.",
        tags=["entitlements"],
        request=ConsumeIn,
        responses={200: ConsumeOut, 409: ErrorOut, **ERRORS},
        examples=[
            OpenApiExample(
                "Consume 2.5 GB",
                {"quantity": "2.5", "event_id": "transfer-8f2c"},
                request_only=True,
            ),
            OpenApiExample(
                "Allowed",
                {"allowed": True, "reason": None, "entitlement": E_EXAMPLE},
                response_only=True,
            ),
        ],
    )
    def post(self, request, external_id: str, feature_key: str):
        return Response(consume_answer(external_id, feature_key, request.data))


class ReservationIn(serializers.Serializer):
    reservation_id = serializers.CharField(
        max_length=255,
        help_text="Your idempotency key for this hold, unique per customer (no slash); its "
        "commit records the usage with this `event_id`.",
    )
    quantity = serializers.CharField(help_text='Units to hold: a positive decimal, e.g. "4".')
    ttl_seconds = serializers.IntegerField(
        required=False,
        default=300,
        min_value=1,
        max_value=86400,
        help_text="How long the units stay held unless committed or released (1 to 86400).",
    )


class ReservationOut(serializers.Serializer):
    id = serializers.CharField(help_text="The reservation_id.")
    feature = serializers.CharField()
    quantity = serializers.CharField(help_text="Units held (decimal as a string).")
    status = serializers.ChoiceField(
        ["held", "committed", "released", "expired"],
        help_text="`expired`: held past `expires_at`, counting for nothing.",
    )
    expires_at = serializers.DateTimeField()
    committed_quantity = serializers.CharField(
        allow_null=True, help_text="What the commit recorded; null until committed."
    )


class HoldOut(serializers.Serializer):
    allowed = serializers.BooleanField()
    reason = serializers.ChoiceField(
        ["limit_exceeded", "no_access", "payment_overdue"], allow_null=True
    )
    reservation = ReservationOut(allow_null=True, help_text="null when denied: nothing held.")
    entitlement = EntitlementOut()


class CommitIn(serializers.Serializer):
    quantity = serializers.CharField(
        required=False,
        help_text="Units used: a decimal from 0 to the held quantity; default all of it. 0 "
        "records nothing.",
    )


class ReservationAnswerOut(serializers.Serializer):
    reservation = ReservationOut()
    entitlement = EntitlementOut()


RESERVATION_EXAMPLE = {
    "id": "job-7c1e",
    "feature": "storage",
    "quantity": "4",
    "status": "held",
    "expires_at": "2026-11-20T10:05:00Z",
    "committed_quantity": None,
}
E_HELD = {**E_EXAMPLE, "reserved": "4", "balance": "28.5"}


def _error_example(name: str, status: int, code: str, message: str) -> OpenApiExample:
    return OpenApiExample(
        name,
        {"error": {"code": code, "message": message, "details": {}}},
        response_only=True,
        status_codes=[str(status)],
    )


class ReservationListView(APIView):
    runtime_endpoint = True
    lean = Lean("POST", hold_answer)

    @extend_schema(
        summary="Hold units of a metered feature until the work's cost is known",
        description="Under a hard limit the quantity must fit in the balance less the units "
        "already held (a soft limit or no limit: allowed). Held units count against `balance` "
        "(`reserved` in E) until committed, released or `expires_at`, when they count for "
        "nothing at once. A hold is a 201; a denial is a 200 with `allowed: false` and holds "
        "nothing. The same `reservation_id` again answers the first outcome of an allowed "
        "hold (a 201 with that reservation, whatever its status since); a denied hold stores "
        "nothing, so its retry is decided afresh. The same id with another feature or "
        "quantity is a 409 `idempotency_conflict`. `latest` features: the level plus the held "
        "units plus this quantity must fit in the capacity. Boolean and config features: 400 "
        "`not_metered`.",
        tags=["reservations"],
        request=ReservationIn,
        responses={201: HoldOut, 200: HoldOut, 409: ErrorOut, **ERRORS},
        examples=[
            OpenApiExample(
                "Hold 4 GB for 5 minutes",
                {"reservation_id": "job-7c1e", "quantity": "4", "ttl_seconds": 300},
                request_only=True,
            ),
            OpenApiExample(
                "Held",
                {
                    "allowed": True,
                    "reason": None,
                    "reservation": RESERVATION_EXAMPLE,
                    "entitlement": E_HELD,
                },
                response_only=True,
                status_codes=["201"],
            ),
            OpenApiExample(
                "Denied",
                {
                    "allowed": False,
                    "reason": "limit_exceeded",
                    "reservation": None,
                    "entitlement": E_EXAMPLE,
                },
                response_only=True,
                status_codes=["200"],
            ),
            _error_example(
                "Bad quantity",
                400,
                "invalid",
                'quantity: This value must be a decimal such as "2.5".',
            ),
            _error_example(
                "Id reused",
                409,
                "idempotency_conflict",
                "reservation_id 'job-7c1e' was already used for another request.",
            ),
        ],
    )
    def post(self, request, external_id: str, feature_key: str):
        answer = hold_answer(external_id, feature_key, request.data)
        return Response(answer.body, status=answer.status)


class ReservationCommitView(APIView):
    runtime_endpoint = True
    lean = Lean("POST", commit_answer)

    @extend_schema(
        summary="Commit a reservation: record what was used, release the rest",
        description="Records `quantity` (default: all the held quantity; more is a 400 "
        "`invalid`) as usage with `event_id` = the reservation id, allowance first, then "
        "grants, never denied (the hold guaranteed it), and frees the rest. 0 records nothing "
        "and ends the hold. The same commit again answers the same (another quantity: 409 "
        "`idempotency_conflict`). After `expires_at`: 409 `reservation_expired`; after a "
        "release: 409 `reservation_released`; an unknown id: 404 `reservation_not_found`.",
        tags=["reservations"],
        request=CommitIn,
        responses={200: ReservationAnswerOut, 409: ErrorOut, **ERRORS},
        examples=[
            OpenApiExample("Used 2.5 GB", {"quantity": "2.5"}, request_only=True),
            OpenApiExample(
                "Committed",
                {
                    "reservation": {
                        **RESERVATION_EXAMPLE,
                        "status": "committed",
                        "committed_quantity": "2.5",
                    },
                    "entitlement": {**E_EXAMPLE, "usage": "90", "balance": "30"},
                },
                response_only=True,
                status_codes=["200"],
            ),
            _error_example(
                "Expired",
                409,
                "reservation_expired",
                "Reservation 'job-7c1e' expired at 2026-11-20T10:05:00+00:00; its units were "
                "freed.",
            ),
            _error_example(
                "Above the hold", 400, "invalid", "quantity: At most the held quantity (4)."
            ),
            _error_example("Unknown", 404, "reservation_not_found", "No reservation 'job-7c1e'."),
        ],
    )
    def post(self, request, external_id: str, feature_key: str, reservation_id: str):
        return Response(commit_answer(external_id, feature_key, reservation_id, request.data))


class ReservationDetailView(APIView):
    runtime_endpoint = True
    lean = Lean("DELETE", release_answer)

    @extend_schema(
        summary="A reservation as it stands now",
        tags=["reservations"],
        responses={200: ReservationAnswerOut, **ERRORS},
        examples=[
            OpenApiExample(
                "Held",
                {"reservation": RESERVATION_EXAMPLE, "entitlement": E_HELD},
                response_only=True,
            )
        ],
    )
    def get(self, request, external_id: str, feature_key: str, reservation_id: str):
        return Response(reservation_get_answer(external_id, feature_key, reservation_id))

    @extend_schema(
        summary="Release a reservation: its units count for nothing from now on",
        description="Again, or for a hold already expired: the same 200. A committed "
        "reservation: 409 `reservation_committed`.",
        tags=["reservations"],
        responses={200: ReservationAnswerOut, 409: ErrorOut, **ERRORS},
        examples=[
            OpenApiExample(
                "Released",
                {
                    "reservation": {**RESERVATION_EXAMPLE, "status": "released"},
                    "entitlement": E_EXAMPLE,
                },
                response_only=True,
            ),
            _error_example(
                "Committed",
                409,
                "reservation_committed",
                "Reservation 'job-7c1e' was committed; it cannot be released.",
            ),
        ],
    )
    def delete(self, request, external_id: str, feature_key: str, reservation_id: str):
        return Response(release_answer(external_id, feature_key, reservation_id))


class UsageEventIn(serializers.Serializer):
    event_id = serializers.CharField(max_length=255)
    customer = serializers.CharField(help_text="The customer's external_id.")
    feature = serializers.CharField(help_text="A metered feature's key.")
    quantity = serializers.CharField(help_text="A decimal >= 0 (the level, for `latest`).")
    timestamp = serializers.DateTimeField(required=False)
    properties = serializers.DictField(required=False)


class UsageBatchIn(serializers.Serializer):
    events = UsageEventIn(many=True, max_length=1000)


class UsageBatchOut(serializers.Serializer):
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    rejected = serializers.ListField(child=serializers.DictField())


class UsageBatchView(APIView):
    runtime_endpoint = True
    lean = Lean("POST", usage_batch_answer)

    @extend_schema(
        summary="Report usage: up to 1000 events, each idempotent on its event_id",
        description="Reported usage is recorded even past a hard limit (it already happened); "
        "it shows as overage. Bad events are rejected one by one with their index.",
        tags=["usage"],
        request=UsageBatchIn,
        responses={200: UsageBatchOut, 400: ErrorOut, 401: ErrorOut},
        examples=[
            OpenApiExample(
                "Two events",
                {
                    "events": [
                        {
                            "event_id": "dl-1",
                            "customer": "acme",
                            "feature": "data-transfer",
                            "quantity": "1.5",
                        },
                        {
                            "event_id": "st-1",
                            "customer": "acme",
                            "feature": "storage",
                            "quantity": "87.5",
                            "timestamp": "2026-11-20T10:00:00Z",
                        },
                    ]
                },
                request_only=True,
            ),
            OpenApiExample(
                "Result",
                {"accepted": 2, "duplicates": 0, "rejected": []},
                response_only=True,
            ),
        ],
    )
    def post(self, request):
        return Response(usage_batch_answer(request.data))


class UsageBucketsOut(serializers.Serializer):
    feature = serializers.CharField()
    window = serializers.ChoiceField(["hour", "day", "month"])
    buckets = serializers.ListField(
        child=inline_serializer(
            "UsageBucket", {"start": serializers.DateTimeField(), "usage": serializers.CharField()}
        )
    )


class UsageBucketsView(APIView):
    runtime_endpoint = True

    @extend_schema(
        summary="Usage of one feature over time (what the dashboard chart shows)",
        tags=["usage"],
        parameters=[
            OpenApiParameter("from", OpenApiTypes.DATETIME, description="Default: period start"),
            OpenApiParameter("to", OpenApiTypes.DATETIME, description="Default: period end"),
            OpenApiParameter("window", str, enum=["hour", "day", "month"], default="day"),
        ],
        responses={200: UsageBucketsOut, **ERRORS},
    )
    def get(self, request, external_id: str, feature_key: str):
        customer = customer_by_external_id(external_id)
        feature = engine.feature_by_key(feature_key)
        window = request.query_params.get("window", "day")
        if window not in selectors.BUCKET_WINDOWS:
            raise InvalidInput("window is one of hour, day, month.", code="invalid_window")
        start = _query_time(request, "from")
        end = _query_time(request, "to")
        buckets = selectors.usage_buckets(
            customer=customer, feature=feature, start=start, end=end, window=window
        )
        return Response(
            {
                "feature": feature.key,
                "window": window,
                "buckets": [
                    {"start": time_str(b.start), "usage": decimal_str(b.usage)} for b in buckets
                ],
            }
        )


class ReversalIn(serializers.Serializer):
    reason = serializers.CharField(
        max_length=500, help_text="Why the usage is given back (kept in the history)."
    )


class ReversalOut(serializers.Serializer):
    event_id = serializers.CharField()
    quantity = serializers.CharField(help_text="The event's quantity, given back (a decimal).")
    entitlement = EntitlementOut(help_text="E of the event's feature now.")


class ReversalView(APIView):
    """Management scope: DESIGN.md's runtime list (what an application server needs) does not
    name reversals; they are support's and billing's correction."""

    @extend_schema(
        summary="Reverse a usage event: give its units back",
        description="The usage of the windows the event fell in drops by its quantity; the "
        "units it took from grants go back to those same grants, unless they expired or were "
        "voided since. 201 the first time; the same event again answers 200 with the same "
        "body (the first reversal and its reason stand). The event stays in the ledger, "
        "marked reversed, and its `event_id` stays taken: a consume or report replaying it is "
        "a duplicate that counts nothing. Requires a `management` key. 404 "
        "`customer_not_found` / `event_not_found`; 409 `not_reversible` for an event of a "
        "`latest` feature (report the corrected level instead); 400 when `reason` is missing, "
        "blank or longer than 500 characters.",
        tags=["usage"],
        request=ReversalIn,
        responses={201: ReversalOut, 200: ReversalOut, 409: ErrorOut, **ERRORS},
        examples=[
            OpenApiExample(
                "Failed job", {"reason": "Job 8812 failed on our side"}, request_only=True
            ),
            OpenApiExample(
                "Reversed",
                {"event_id": "transfer-8f2c", "quantity": "2.5", "entitlement": E_EXAMPLE},
                response_only=True,
            ),
        ],
    )
    def post(self, request, external_id: str, event_id: str):
        data = _body(request.data)
        key = request.auth
        result = engine.usage_reverse(
            external_id,
            event_id,
            reason=data.get("reason"),
            api_key_name=getattr(key, "name", "") or "",
        )
        body = {
            "event_id": result.event_id,
            "quantity": decimal_str(result.quantity),
            "entitlement": entitlement_json(result.entitlement),
        }
        return Response(body, status=201 if result.created else 200)


def _query_time(request, name: str) -> dt.datetime | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        return engine.parse_timestamp(raw.replace(" ", "+"))
    except InvalidInput:
        raise InvalidInput(
            f"{name} must be an ISO 8601 date and time.", code="invalid_time"
        ) from None


# --- management: customers ----------------------------------------------------------------


class CustomerSerializer(serializers.ModelSerializer):
    external_id = UrlSafeIdField()
    plan = serializers.SerializerMethodField()

    class Meta:
        model = Customer
        fields = ["external_id", "name", "email", "currency", "plan", "created_at"]
        read_only_fields = ["created_at"]
        extra_kwargs = {"email": {"required": False}}

    def get_plan(self, customer) -> str | None:
        active = [s for s in customer.subscriptions.all() if s.status in SUBSCRIPTION_CURRENT]
        return active[0].plan.key if active else None


def _customer_queryset():
    return Customer.objects.prefetch_related("subscriptions__plan").order_by("name")


@extend_schema_view(
    get=extend_schema(
        summary="List customers",
        tags=["customers"],
        parameters=[OpenApiParameter("search", str, description="Name, email or external id")],
    ),
    post=extend_schema(summary="Create a customer", tags=["customers"]),
)
class CustomerListView(generics.ListCreateAPIView):
    serializer_class = CustomerSerializer
    filterset_fields = ["currency", "email"]

    def get_queryset(self):
        customers = _customer_queryset()
        term = self.request.query_params.get("search")
        if term:
            customers = selectors.customer_search(term=term, queryset=customers)
        return customers

    def perform_create(self, serializer):
        serializer.instance = services.customer_create(**serializer.validated_data)


@extend_schema_view(
    get=extend_schema(summary="Get a customer", tags=["customers"]),
    put=extend_schema(summary="Replace a customer's details", tags=["customers"]),
    patch=extend_schema(summary="Update a customer's details", tags=["customers"]),
)
class CustomerDetailView(generics.RetrieveUpdateAPIView):
    serializer_class = CustomerSerializer
    lookup_field = "external_id"

    def get_queryset(self):
        return _customer_queryset()

    def get_object(self):
        customer = self.get_queryset().filter(external_id=self.kwargs["external_id"]).first()
        if customer is None:
            raise NotFound(
                f"No customer {self.kwargs['external_id']!r}.", code="customer_not_found"
            )
        return customer

    def perform_update(self, serializer):
        serializer.instance = services.customer_update(
            customer=serializer.instance, **serializer.validated_data
        )


# --- management: overrides and grants -----------------------------------------------------


class OverrideSerializer(EntitlementValuesSerializer):
    id = serializers.IntegerField(read_only=True)
    starts_at = InstantField(required=False, allow_null=True)
    ends_at = InstantField(required=False, allow_null=True, future=True)

    class Meta:
        model = EntitlementOverride
        fields = ["id", *ENTITLEMENT_VALUE_FIELDS, "reason", "starts_at", "ends_at", "created_at"]
        read_only_fields = ["created_at"]
        extra_kwargs = {"value": {"required": False, "allow_blank": True}}


class GrantSerializer(serializers.ModelSerializer):
    id = serializers.IntegerField(read_only=True)
    feature = serializers.SlugRelatedField(slug_field="key", queryset=Feature.objects.all())
    quantity = DecimalStringField(positive=True)
    consumed = DecimalStringField(read_only=True)
    source = serializers.ChoiceField(GrantSource.choices, default=GrantSource.MANUAL)
    effective_at = InstantField(required=False)
    expires_at = InstantField(required=False, allow_null=True, future=True)

    class Meta:
        model = Grant
        fields = [
            "id",
            "feature",
            "quantity",
            "consumed",
            "source",
            "reason",
            "effective_at",
            "expires_at",
            "voided_at",
            "created_at",
        ]
        read_only_fields = ["voided_at", "created_at"]
        extra_kwargs = {"effective_at": {"required": False}, "reason": {"required": False}}


class _CustomerScoped:
    """Views nested under /customers/{external_id}/."""

    def customer(self) -> Customer:
        if not hasattr(self, "_customer"):
            self._customer = customer_by_external_id(self.kwargs["external_id"])
        return self._customer


@extend_schema_view(
    get=extend_schema(summary="List a customer's overrides", tags=["customers"]),
    post=extend_schema(
        summary="Override a feature for this customer (replaces the plan's values)",
        tags=["customers"],
        examples=[
            OpenApiExample(
                "Enterprise storage",
                {"feature": "storage", "limit": "2000", "reason": "Enterprise deal 2026-114"},
                request_only=True,
            )
        ],
    ),
)
class OverrideListView(_CustomerScoped, generics.ListCreateAPIView):
    serializer_class = OverrideSerializer
    queryset = EntitlementOverride.objects.none()  # for the schema; get_queryset scopes it
    filterset_fields = ["feature__key"]

    def get_queryset(self):
        return EntitlementOverride.objects.filter(customer=self.customer()).select_related(
            "feature"
        )

    def perform_create(self, serializer):
        serializer.instance = services.override_create(
            customer=self.customer(), **serializer.validated_data
        )


@extend_schema_view(
    get=extend_schema(summary="Get an override", tags=["customers"]),
    delete=extend_schema(summary="End an override now", tags=["customers"]),
)
class OverrideDetailView(_CustomerScoped, generics.RetrieveDestroyAPIView):
    serializer_class = OverrideSerializer
    queryset = EntitlementOverride.objects.none()

    def get_queryset(self):
        return EntitlementOverride.objects.filter(customer=self.customer()).select_related(
            "feature"
        )

    def get_object(self):
        return get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"])

    def perform_destroy(self, instance):
        services.override_end(override=instance)


@extend_schema_view(
    get=extend_schema(summary="List a customer's grants", tags=["customers"]),
    post=extend_schema(
        summary="Grant extra units of a metered feature",
        tags=["customers"],
        examples=[
            OpenApiExample(
                "20 GB for a month",
                {
                    "feature": "storage",
                    "quantity": "20",
                    "source": "promotion",
                    "reason": "Sorry for the outage",
                    "expires_at": "2026-12-31T00:00:00Z",
                },
                request_only=True,
            )
        ],
    ),
)
class GrantListView(_CustomerScoped, generics.ListCreateAPIView):
    serializer_class = GrantSerializer
    queryset = Grant.objects.none()
    filterset_fields = ["feature__key", "source"]

    def get_queryset(self):
        return Grant.objects.filter(customer=self.customer()).select_related("feature")

    @transaction.atomic
    def perform_create(self, serializer):
        serializer.instance = services.grant_create(
            customer=self.customer(), **serializer.validated_data
        )


@extend_schema_view(
    get=extend_schema(summary="Get a grant", tags=["customers"]),
    delete=extend_schema(summary="Void a grant from now", tags=["customers"]),
)
class GrantDetailView(_CustomerScoped, generics.RetrieveDestroyAPIView):
    serializer_class = GrantSerializer
    queryset = Grant.objects.none()

    def get_queryset(self):
        return Grant.objects.filter(customer=self.customer()).select_related("feature")

    def get_object(self):
        return get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"])

    def perform_destroy(self, instance):
        services.grant_void(grant=instance)
