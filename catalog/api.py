"""Management API of the catalog: features, plans with their entitlements, top-up packs.
Views validate, call a service, serialize; writes never bypass catalog.services."""

from django.db import transaction
from django.db.models import Prefetch
from drf_spectacular.utils import (
    OpenApiExample,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import generics, serializers
from rest_framework.response import Response

from core.api import money_json
from core.api_fields import DecimalStringField, MoneyJSONField
from core.errors import NotFound

from . import selectors, services
from .models import (
    ENTITLEMENT_VALUE_NAMES,
    Aggregation,
    Enforcement,
    Feature,
    Plan,
    PlanEntitlement,
    PlanInterval,
    PlanStatus,
    PlanVersion,
    Reset,
    TopUpExpiry,
    TopUpPack,
    VersionStatus,
)


class FeatureSerializer(serializers.ModelSerializer):
    key = serializers.SlugField(max_length=64)
    unit = serializers.CharField(max_length=32, required=False, allow_blank=True, default="")
    aggregation = serializers.ChoiceField(Aggregation.choices, default=Aggregation.SUM)

    class Meta:
        model = Feature
        fields = ["key", "name", "description", "kind", "unit", "aggregation"]
        extra_kwargs = {"description": {"required": False}}


# The values of an entitlement, validated by the feature's kind in the model: shared by a plan's
# entitlements here and a customer's overrides (customers.api).
ENTITLEMENT_VALUE_FIELDS = ["feature", *ENTITLEMENT_VALUE_NAMES]


class EntitlementValuesSerializer(serializers.ModelSerializer):
    feature = serializers.SlugRelatedField(slug_field="key", queryset=Feature.objects.all())
    limit = DecimalStringField(required=False, allow_null=True)
    overage_price = MoneyJSONField(required=False, allow_null=True, max_digits=12, decimal_places=4)
    notify_at = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=100), required=False
    )
    reset = serializers.ChoiceField(Reset.choices, default=Reset.BILLING_PERIOD)
    enforcement = serializers.ChoiceField(Enforcement.choices, default=Enforcement.HARD)


class EntitlementSerializer(EntitlementValuesSerializer):
    kind = serializers.CharField(source="feature.kind", read_only=True)

    class Meta:
        model = PlanEntitlement
        fields = ["feature", "kind", *ENTITLEMENT_VALUE_FIELDS[1:]]
        extra_kwargs = {"value": {"required": False, "allow_blank": True}}


PLAN_EXAMPLE = {
    "key": "basic",
    "name": "Basic Storage",
    "description": "100 GB for a small team.",
    "price": {"amount": "50.00", "currency": "USD"},
    "interval": "month",
    "status": "active",
    "public": True,
    "rank": 20,
    "entitlements": [
        {
            "feature": "storage",
            "kind": "metered",
            "enabled": True,
            "limit": "100",
            "unlimited": False,
            "reset": "billing_period",
            "enforcement": "hard",
            "overage_price": None,
            "notify_at": [80, 100],
            "value": "",
            "show_on_invoice": True,
        }
    ],
}


class PlanSerializer(serializers.ModelSerializer):
    key = serializers.SlugField(max_length=64)
    price = MoneyJSONField()
    interval = serializers.ChoiceField(PlanInterval.choices, default=PlanInterval.MONTH)
    status = serializers.ChoiceField(PlanStatus.choices, default=PlanStatus.DRAFT)
    entitlements = EntitlementSerializer(many=True, required=False)

    class Meta:
        model = Plan
        fields = [
            "key",
            "name",
            "description",
            "price",
            "interval",
            "status",
            "public",
            "rank",
            "entitlements",
        ]
        extra_kwargs = {"description": {"required": False}}

    def validate_entitlements(self, value):
        keys = [item["feature"].key for item in value]
        duplicated = sorted({k for k in keys if keys.count(k) > 1})
        if duplicated:
            raise serializers.ValidationError(
                f"One entitlement per feature; repeated: {', '.join(duplicated)}."
            )
        return value


class TopUpPackSerializer(serializers.ModelSerializer):
    key = serializers.SlugField(max_length=64)
    feature = serializers.SlugRelatedField(slug_field="key", queryset=Feature.objects.all())
    quantity = DecimalStringField(positive=True)
    price = MoneyJSONField()
    expiry = serializers.ChoiceField(TopUpExpiry.choices, default=TopUpExpiry.PERIOD_END)
    plans = serializers.SlugRelatedField(
        slug_field="key", queryset=Plan.objects.all(), many=True, required=False
    )

    class Meta:
        model = TopUpPack
        fields = ["key", "name", "feature", "quantity", "price", "expiry", "expiry_days"]
        fields += ["plans", "active"]


def _immutable_key(serializer, instance):
    new_key = serializer.validated_data.get("key", instance.key)
    if new_key != instance.key:
        raise serializers.ValidationError({"key": ["The key cannot change once created."]})
    serializer.validated_data.pop("key", None)


# --- features -----------------------------------------------------------------------------


@extend_schema_view(
    get=extend_schema(summary="List features", tags=["catalog"]),
    post=extend_schema(
        summary="Create a feature",
        tags=["catalog"],
        examples=[
            OpenApiExample(
                "Metered",
                {"key": "api-calls", "name": "API calls", "kind": "metered", "unit": "calls"},
                request_only=True,
            )
        ],
    ),
)
class FeatureListView(generics.ListCreateAPIView):
    serializer_class = FeatureSerializer
    queryset = Feature.objects.order_by("name")
    filterset_fields = ["kind"]

    def perform_create(self, serializer):
        serializer.instance = services.feature_create(**serializer.validated_data)


@extend_schema_view(
    get=extend_schema(summary="Get a feature", tags=["catalog"]),
    put=extend_schema(summary="Replace a feature (the key cannot change)", tags=["catalog"]),
    patch=extend_schema(summary="Update a feature (the key cannot change)", tags=["catalog"]),
    delete=extend_schema(summary="Delete a feature no plan or customer uses", tags=["catalog"]),
)
class FeatureDetailView(generics.RetrieveUpdateDestroyAPIView):
    serializer_class = FeatureSerializer
    queryset = Feature.objects.all()
    lookup_field = "key"
    lookup_url_kwarg = "feature_key"

    def perform_update(self, serializer):
        _immutable_key(serializer, serializer.instance)
        serializer.instance = services.feature_update(
            feature=serializer.instance, **serializer.validated_data
        )

    def perform_destroy(self, instance):
        instance.delete()


# --- plans --------------------------------------------------------------------------------


def _plan_queryset():
    # A plan's entitlements are its published version's (what new subscribers get).
    current = PlanEntitlement.objects.filter(selectors.CURRENT).select_related("feature")
    return Plan.objects.prefetch_related(Prefetch("entitlements", current)).order_by("rank", "name")


@extend_schema_view(
    get=extend_schema(summary="List plans with their entitlements", tags=["catalog"]),
    post=extend_schema(
        summary="Create a plan with its entitlements",
        tags=["catalog"],
        examples=[OpenApiExample("Basic Storage", PLAN_EXAMPLE)],
    ),
)
class PlanListView(generics.ListCreateAPIView):
    serializer_class = PlanSerializer
    filterset_fields = ["status", "interval", "public"]

    def get_queryset(self):
        return _plan_queryset()

    def perform_create(self, serializer):
        data = dict(serializer.validated_data)
        serializer.instance = services.plan_create(
            entitlements=data.pop("entitlements", []), **data
        )


@extend_schema_view(
    get=extend_schema(summary="Get a plan", tags=["catalog"]),
    put=extend_schema(summary="Replace a plan; `entitlements` replaces the set", tags=["catalog"]),
    patch=extend_schema(
        summary="Update a plan; `entitlements`, if given, replaces the set (applies at once to "
        "every subscriber)",
        tags=["catalog"],
    ),
    delete=extend_schema(summary="Delete a plan nobody subscribes to", tags=["catalog"]),
)
class PlanDetailView(generics.RetrieveUpdateDestroyAPIView):
    serializer_class = PlanSerializer
    lookup_field = "key"
    lookup_url_kwarg = "plan_key"

    def get_queryset(self):
        return _plan_queryset()

    @transaction.atomic
    def perform_update(self, serializer):
        _immutable_key(serializer, serializer.instance)
        data = dict(serializer.validated_data)
        entitlements = data.pop("entitlements", None)
        plan = services.plan_update(plan=serializer.instance, **data)
        if entitlements is not None:
            services.plan_set_entitlements(plan=plan, entitlements=entitlements)
        serializer.instance = _plan_queryset().get(pk=plan.pk)

    def perform_destroy(self, instance):
        instance.delete()


# --- top-up packs -------------------------------------------------------------------------


@extend_schema_view(
    get=extend_schema(summary="List top-up packs", tags=["catalog"]),
    post=extend_schema(summary="Create a top-up pack", tags=["catalog"]),
)
class TopUpPackListView(generics.ListCreateAPIView):
    serializer_class = TopUpPackSerializer
    queryset = TopUpPack.objects.select_related("feature").prefetch_related("plans")
    filterset_fields = ["active", "expiry"]

    def perform_create(self, serializer):
        serializer.instance = services.topup_pack_create(**serializer.validated_data)


@extend_schema_view(
    get=extend_schema(summary="Get a top-up pack", tags=["catalog"]),
    put=extend_schema(summary="Replace a top-up pack", tags=["catalog"]),
    patch=extend_schema(summary="Update a top-up pack", tags=["catalog"]),
    delete=extend_schema(summary="Delete a top-up pack never sold", tags=["catalog"]),
)
class TopUpPackDetailView(generics.RetrieveUpdateDestroyAPIView):
    serializer_class = TopUpPackSerializer
    queryset = TopUpPack.objects.select_related("feature").prefetch_related("plans")
    lookup_field = "key"
    lookup_url_kwarg = "pack_key"

    def perform_update(self, serializer):
        _immutable_key(serializer, serializer.instance)
        serializer.instance = services.topup_pack_update(
            pack=serializer.instance, **serializer.validated_data
        )

    def perform_destroy(self, instance):
        instance.delete()


# --- plan versions (DESIGN.md "Plan versions") ---------------------------------------------


class PlanVersionSerializer(serializers.Serializer):
    """A version: its number and status, then the plan's fields with the version's price and
    entitlements."""

    version = serializers.IntegerField(source="number", read_only=True)
    status = serializers.ChoiceField(VersionStatus.choices, read_only=True)
    published_at = serializers.DateTimeField(read_only=True, allow_null=True)
    subscribers = serializers.SerializerMethodField()
    key = serializers.CharField(source="plan.key", read_only=True)
    name = serializers.CharField(source="plan.name", read_only=True)
    description = serializers.CharField(source="plan.description", read_only=True)
    price = MoneyJSONField(read_only=True)
    interval = serializers.CharField(source="plan.interval", read_only=True)
    public = serializers.BooleanField(source="plan.public", read_only=True)
    rank = serializers.IntegerField(source="plan.rank", read_only=True)
    entitlements = serializers.SerializerMethodField()

    @extend_schema_field(serializers.IntegerField(help_text="Active subscriptions on it."))
    def get_subscribers(self, version) -> int:
        return version.subscriptions.filter(status="active").count()

    @extend_schema_field(EntitlementSerializer(many=True))
    def get_entitlements(self, version) -> list[dict]:
        rows = selectors.plan_entitlements(plan=version.plan, version=version)
        return EntitlementSerializer(rows, many=True).data


class PlanVersionUpdateSerializer(serializers.Serializer):
    price = MoneyJSONField(required=False)
    entitlements = EntitlementSerializer(many=True, required=False)

    validate_entitlements = PlanSerializer.validate_entitlements


class PublishSerializer(serializers.Serializer):
    existing = serializers.ChoiceField(
        [services.EXISTING_KEEP, services.EXISTING_MIGRATE],
        help_text="`keep`: current subscribers stay on their version (grandfathered); "
        "`migrate`: they all move to this one now, prices from their next period.",
    )


class PublishOut(PlanVersionSerializer):
    migrated = serializers.IntegerField(read_only=True, help_text="Subscribers moved to it.")


class DuplicateSerializer(serializers.Serializer):
    key = serializers.SlugField(max_length=64)
    name = serializers.CharField(max_length=200)


class FeatureChangeOut(serializers.Serializer):
    feature = serializers.CharField()
    before = EntitlementSerializer(allow_null=True)
    after = EntitlementSerializer(allow_null=True)
    customers_over_new_limit = serializers.IntegerField(
        allow_null=True,
        help_text="Subscribers already over a lowered limit (null when it is not lowered).",
    )


class RevenueOut(serializers.Serializer):
    interval = serializers.CharField()
    before = MoneyJSONField(help_text="What the plan's subscribers pay per period now.")
    after = MoneyJSONField(help_text="What they would pay if they all moved to this version.")
    change = MoneyJSONField()


class ImpactOut(serializers.Serializer):
    plan = serializers.CharField()
    version = serializers.IntegerField()
    subscribers = serializers.IntegerField(help_text="Active subscribers, on any version.")
    subscribers_on_published = serializers.IntegerField()
    customers_over = serializers.IntegerField(
        help_text="Subscribers already over at least one lowered limit, each counted once."
    )
    changes = FeatureChangeOut(many=True)
    revenue = RevenueOut()


def impact_json(impact: selectors.Impact) -> dict:
    plan = impact.version.plan
    return {
        "plan": plan.key,
        "version": impact.version.number,
        "subscribers": impact.subscribers,
        "subscribers_on_published": impact.on_current,
        "customers_over": impact.customers_over,
        "changes": [
            {
                "feature": change.feature.key,
                "before": EntitlementSerializer(change.before).data if change.before else None,
                "after": EntitlementSerializer(change.after).data if change.after else None,
                "customers_over_new_limit": change.customers_over,
            }
            for change in impact.changes
        ],
        "revenue": {
            "interval": plan.interval,
            "before": money_json(impact.revenue.before),
            "after": money_json(impact.revenue.after),
            "change": money_json(impact.revenue.change),
        },
    }


def _plan_or_404(plan_key: str) -> Plan:
    plan = Plan.objects.filter(key=plan_key).first()
    if plan is None:
        raise NotFound(f"No plan {plan_key!r}.", code="plan_not_found")
    return plan


def _version_or_404(plan_key: str, n: int) -> PlanVersion:
    version = selectors.plan_version_get(plan=_plan_or_404(plan_key), number=n)
    if version is None:
        raise NotFound(f"Plan {plan_key!r} has no version {n}.", code="version_not_found")
    return version


VERSIONS = "plan versions"


@extend_schema_view(
    get=extend_schema(
        summary="List a plan's versions, newest first",
        tags=[VERSIONS],
        responses={200: PlanVersionSerializer(many=True)},
    ),
    post=extend_schema(
        summary="Make a draft: a copy of the published version (409 `draft_exists`)",
        tags=[VERSIONS],
        request=None,
        responses={201: PlanVersionSerializer},
    ),
)
class PlanVersionListView(generics.GenericAPIView):
    queryset = PlanVersion.objects.none()  # for the schema: the views look versions up
    serializer_class = PlanVersionSerializer

    def get(self, request, plan_key: str):
        plan = _plan_or_404(plan_key)
        versions = self.paginate_queryset(plan.versions.select_related("plan").order_by("-number"))
        return self.get_paginated_response(PlanVersionSerializer(versions, many=True).data)

    def post(self, request, plan_key: str):
        draft = services.plan_version_draft_create(plan=_plan_or_404(plan_key))
        return Response(PlanVersionSerializer(draft).data, status=201)


@extend_schema_view(
    get=extend_schema(summary="Get a version of a plan", tags=[VERSIONS]),
    patch=extend_schema(
        summary="Edit a draft: its price, and `entitlements` (if given) replaces its set; a "
        "published version answers 409 `version_not_draft`",
        tags=[VERSIONS],
        request=PlanVersionUpdateSerializer,
        responses={200: PlanVersionSerializer},
    ),
)
class PlanVersionDetailView(generics.GenericAPIView):
    queryset = PlanVersion.objects.none()  # for the schema: the views look versions up
    serializer_class = PlanVersionSerializer

    def get(self, request, plan_key: str, n: int):
        return Response(PlanVersionSerializer(_version_or_404(plan_key, n)).data)

    def patch(self, request, plan_key: str, n: int):
        version = _version_or_404(plan_key, n)
        incoming = PlanVersionUpdateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        version = services.plan_version_update(version=version, **incoming.validated_data)
        return Response(PlanVersionSerializer(version).data)


@extend_schema_view(
    get=extend_schema(
        summary="What publishing this version would do: subscribers, each feature before -> "
        "after, customers already over a lowered limit, revenue per period",
        tags=[VERSIONS],
        responses={200: ImpactOut},
    )
)
class PlanVersionImpactView(generics.GenericAPIView):
    queryset = PlanVersion.objects.none()  # for the schema: the views look versions up
    serializer_class = ImpactOut

    def get(self, request, plan_key: str, n: int):
        impact = selectors.plan_version_impact(version=_version_or_404(plan_key, n))
        return Response(impact_json(impact))


@extend_schema_view(
    post=extend_schema(
        summary="Publish a draft: new subscribers get it; `existing` keeps current subscribers "
        "on their version or migrates them now (409 `version_not_draft` if not a draft)",
        tags=[VERSIONS],
        request=PublishSerializer,
        responses={200: PublishOut},
    )
)
class PlanVersionPublishView(generics.GenericAPIView):
    queryset = PlanVersion.objects.none()  # for the schema: the views look versions up
    serializer_class = PublishSerializer

    def post(self, request, plan_key: str, n: int):
        version = _version_or_404(plan_key, n)
        incoming = PublishSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        migrated = services.plan_version_publish(
            version=version, existing=incoming.validated_data["existing"]
        )
        version.refresh_from_db()
        return Response({**PlanVersionSerializer(version).data, "migrated": migrated})


@extend_schema_view(
    post=extend_schema(
        summary="Duplicate plan: a new plan, in draft, from this version's price and entitlements",
        tags=[VERSIONS],
        request=DuplicateSerializer,
        responses={201: PlanSerializer},
    )
)
class PlanVersionDuplicateView(generics.GenericAPIView):
    queryset = PlanVersion.objects.none()  # for the schema: the views look versions up
    serializer_class = DuplicateSerializer

    def post(self, request, plan_key: str, n: int):
        version = _version_or_404(plan_key, n)
        incoming = DuplicateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        plan = services.plan_duplicate(version=version, **incoming.validated_data)
        return Response(PlanSerializer(_plan_queryset().get(pk=plan.pk)).data, status=201)
