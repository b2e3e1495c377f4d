"""Plan versions through the API (DESIGN.md "Plan versions"): list and draft, edit a draft,
the impact preview, publish with keep or migrate, duplicate plan. Views validate, call
catalog.services or catalog.selectors, serialize."""

from drf_spectacular.utils import (
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import generics, serializers
from rest_framework.response import Response

from core.api import money_json
from core.api_fields import MoneyJSONField
from core.errors import NotFound

from . import selectors, services
from .api import EntitlementSerializer, PlanSerializer, plan_queryset
from .models import (
    Plan,
    PlanVersion,
    VersionStatus,
)


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

    @extend_schema_field(serializers.IntegerField(help_text="Current subscriptions on it."))
    def get_subscribers(self, version) -> int:
        return version.subscriptions.filter(status__in=selectors.CURRENT_SUBSCRIPTION).count()

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
        return Response(PlanSerializer(plan_queryset().get(pk=plan.pk)).data, status=201)
