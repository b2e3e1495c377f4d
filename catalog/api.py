"""Management API of the catalog: features, plans with their entitlements, top-up packs.
Views validate, call a service, serialize; writes never bypass catalog.services."""

from django.db import transaction
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_view
from rest_framework import generics, serializers

from core.api_fields import DecimalStringField, MoneyJSONField

from . import services
from .models import (
    Aggregation,
    Enforcement,
    Feature,
    Plan,
    PlanEntitlement,
    PlanInterval,
    PlanStatus,
    Reset,
    TopUpExpiry,
    TopUpPack,
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
ENTITLEMENT_VALUE_FIELDS = [
    "feature",
    "enabled",
    "limit",
    "unlimited",
    "reset",
    "enforcement",
    "overage_price",
    "notify_at",
    "value",
    "show_on_invoice",
]


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
    return Plan.objects.prefetch_related("entitlements__feature").order_by("rank", "name")


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
