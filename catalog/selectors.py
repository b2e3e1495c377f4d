"""Reads of the catalog for pages and API answers."""

from dataclasses import dataclass, field
from decimal import Decimal

from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone
from djmoney.money import Money
from moneyed.l10n import format_money

from core.text import money_text, quantity_text

from .models import (
    ENTITLEMENT_VALUE_NAMES,
    Enforcement,
    Feature,
    FeatureKind,
    Plan,
    PlanEntitlement,
    PlanInterval,
    PlanStatus,
    PlanVersion,
    Reset,
    TopUpPack,
    VersionStatus,
)
from .subscribers import subscribers  # a port the customers app provides

# The published version's rows: the plan's terms as offered now.
CURRENT = Q(version__status=VersionStatus.PUBLISHED)


def plan_list(*, public_only: bool = False) -> QuerySet[Plan]:
    plans = Plan.objects.annotate(
        entitlement_count=Count(
            "entitlements", filter=Q(entitlements__version__status=VersionStatus.PUBLISHED)
        )
    )
    if public_only:
        plans = plans.filter(status=PlanStatus.ACTIVE, public=True)
    return plans.order_by("rank", "name")


def plan_entitlements(*, plan: Plan, version: PlanVersion | None = None):
    """A version's entitlements (default: the published one's), by feature name."""
    rows = version.entitlements.all() if version is not None else plan.entitlements.filter(CURRENT)
    return rows.select_related("feature").order_by("feature__name")


# --- plan versions ----------------------------------------------------------------------------


def plan_version_current(*, plan: Plan) -> PlanVersion | None:
    """The published version: what new subscribers get."""
    return plan.versions.filter(status=VersionStatus.PUBLISHED).first()


def plan_version_draft(*, plan: Plan) -> PlanVersion | None:
    return plan.versions.filter(status=VersionStatus.DRAFT).first()


def plan_version_get(*, plan: Plan, number: int) -> PlanVersion | None:
    return plan.versions.filter(number=number).select_related("plan").first()


def plan_versions(*, plan: Plan) -> QuerySet[PlanVersion]:
    """Every version, newest first, with `subscriber_count` (current subscriptions on it:
    active or past due)."""
    return plan.versions.annotate(
        subscriber_count=Count(
            "subscriptions",
            filter=Q(subscriptions__status__in=CURRENT_SUBSCRIPTION),
            distinct=True,
        ),
        entitlement_count=Count("entitlements", distinct=True),
    ).order_by("-number")


def plan_version_entitlements(version_ids) -> QuerySet[PlanEntitlement]:
    """The entitlements of these versions (the engine loads its subscribers' terms here)."""
    return PlanEntitlement.objects.filter(version_id__in=version_ids)


def topup_packs_available(*, plan: Plan | None, feature: Feature | None = None):
    """Active packs offered on `plan` (a pack without plans is offered on every plan)."""
    packs = TopUpPack.objects.filter(active=True).select_related("feature")
    if plan is not None:
        packs = packs.filter(Q(plans=plan) | Q(plans__isnull=True)).distinct()
    if feature is not None:
        packs = packs.filter(feature=feature)
    return packs.order_by("feature__name", "quantity")


# --- the plan editor and the plan comparison (pages) ---------------------------------------

# The catalog imports nothing from customers; the editor still has to say how many subscribers
# a change reaches. It reads them through the reverse relations customers declares on Plan and
# Feature ("subscriptions", "overrides"), by name, without importing the customers app.
CURRENT_SUBSCRIPTION = ["active", "past_due"]  # customers.models.SUBSCRIPTION_CURRENT


def plan_list_for_editor() -> QuerySet[Plan]:
    """Every plan with `entitlement_count` and `subscriber_count` (active subscriptions)."""
    entitlements = (
        PlanEntitlement.objects.filter(CURRENT, plan=OuterRef("pk"))
        .order_by()
        .values("plan")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Plan.objects.annotate(
        entitlement_count=Coalesce(Subquery(entitlements), 0),
        subscriber_count=Count(
            "subscriptions",
            filter=Q(subscriptions__status__in=CURRENT_SUBSCRIPTION),
            distinct=True,
        ),
    ).order_by("rank", "name")


@dataclass(frozen=True)
class Reach:
    """Who a change to one of a plan's entitlements reaches, now: the plan's active subscribers
    (`subscribers`), of whom `overridden` keep their own terms for that feature."""

    subscribers: int
    overridden: int = 0

    @property
    def affected(self) -> int:
        return self.subscribers - self.overridden


def plan_change_reach(*, plan: Plan, feature: Feature | None = None) -> Reach:
    """How many current subscribers (active or past due) a change to `plan`'s published version
    (to its `feature`) applies to at once: those on that version (the grandfathered keep
    theirs)."""
    subscriptions = plan.subscriptions.filter(
        status__in=CURRENT_SUBSCRIPTION, plan_version__status=VersionStatus.PUBLISHED
    )
    total = subscriptions.count()
    if feature is None or total == 0:
        return Reach(subscribers=total)
    now = timezone.now()
    overridden = (
        subscriptions.filter(
            Q(customer__overrides__feature=feature),
            Q(customer__overrides__starts_at__isnull=True)
            | Q(customer__overrides__starts_at__lte=now),
            Q(customer__overrides__ends_at__isnull=True) | Q(customer__overrides__ends_at__gt=now),
        )
        .values("customer")
        .distinct()
        .count()
    )
    return Reach(subscribers=total, overridden=overridden)


def features_addable(*, plan: Plan, version: PlanVersion | None = None) -> QuerySet[Feature]:
    """Features a version of the plan (default: the published one) does not include yet."""
    version = version or plan_version_current(plan=plan)
    return Feature.objects.exclude(plan_entitlements__version=version).order_by("name")


def plan_is_upgrade(current: Plan, plan: Plan) -> bool:
    """Whether moving from `current` to `plan` is an upgrade: a higher rank (DESIGN.md). An
    upgrade applies at once with proration; any other change waits for the period end."""
    return plan.rank > current.rank


def price_text(plan: Plan, price: Money | None = None) -> str:
    """`$50.00 / month`: the plan's price (or `price`, a version's) per its interval."""
    amount = format_money(plan.price if price is None else price, locale="en_US")
    return f"{amount} / {'year' if plan.interval == PlanInterval.YEAR else 'month'}"


_RESET_WORDS = {
    Reset.MONTH: "a month",
    Reset.WEEK: "a week",
    Reset.DAY: "a day",
    Reset.NEVER: "in total",
}


def _per(reset: str, interval: str) -> str:
    if reset == Reset.BILLING_PERIOD:
        return "a year" if interval == PlanInterval.YEAR else "a month"
    return _RESET_WORDS.get(reset, "")


def entitlement_summary(entitlement, *, interval: str = PlanInterval.MONTH) -> str:
    """What an entitlement gives in a few words, as a customer reads it: `100 GB a month`,
    `Unlimited`, `Included`, `priority`. Works for plan entitlements and overrides alike."""
    feature = entitlement.feature
    if feature.kind == FeatureKind.BOOLEAN:
        return "Included" if entitlement.enabled else "Not included"
    if feature.kind == FeatureKind.CONFIG:
        return entitlement.value
    if entitlement.unlimited:
        return f"Unlimited {feature.unit}".strip()
    text = f"{quantity_text(entitlement.limit, feature.unit)} {_per(entitlement.reset, interval)}"
    if feature.aggregation == "latest" and entitlement.reset in (Reset.BILLING_PERIOD, Reset.NEVER):
        text = quantity_text(entitlement.limit, feature.unit)  # a level: "100 GB", not "a month"
    return text.strip()


def entitlement_overage_text(entitlement) -> str:
    """`then $0.10 per GB` for a soft limit with a price; `` otherwise."""
    if entitlement.feature.kind != FeatureKind.METERED or entitlement.unlimited:
        return ""
    if entitlement.enforcement != Enforcement.SOFT:
        return ""
    if entitlement.overage_price is None:
        return "no hard cap"
    return f"then {money_text(entitlement.overage_price)} per {entitlement.feature.unit or 'unit'}"


@dataclass(frozen=True)
class ComparisonCell:
    plan_id: int
    text: str
    included: bool
    note: str = ""


@dataclass(frozen=True)
class ComparisonRow:
    feature: Feature
    cells: list[ComparisonCell] = field(default_factory=list)


_KIND_ORDER = {FeatureKind.METERED: 0, FeatureKind.CONFIG: 1, FeatureKind.BOOLEAN: 2}


def plan_comparison(plans, versions: dict[int, int] | None = None) -> list[ComparisonRow]:
    """Rows of a side-by-side comparison of `plans` (in the order given): one per feature that
    any of them includes (allowances first, then settings, then gates, each by name), with one
    cell per plan as an end customer reads it: the published version's terms, or for a plan
    in `versions` (plan id -> version id) that version's (a customer's own, grandfathered)."""
    plans = list(plans)
    pinned = versions or {}
    rows_by_plan: dict[int, dict[int, PlanEntitlement]] = {plan.pk: {} for plan in plans}
    features: dict[int, Feature] = {}
    shown = Q(version_id__in=list(pinned.values())) | (CURRENT & ~Q(plan_id__in=list(pinned)))
    current = PlanEntitlement.objects.filter(shown, plan__in=plans).select_related("feature")
    for entitlement in current:
        rows_by_plan[entitlement.plan_id][entitlement.feature_id] = entitlement
        features[entitlement.feature_id] = entitlement.feature
    ordered = sorted(features.values(), key=lambda f: (_KIND_ORDER.get(f.kind, 9), f.name))
    rows = []
    for feature in ordered:
        cells = []
        for plan in plans:
            entitlement = rows_by_plan[plan.pk].get(feature.pk)
            if entitlement is None:
                cells.append(ComparisonCell(plan_id=plan.pk, text="—", included=False))
                continue
            included = (
                entitlement.enabled if feature.kind == FeatureKind.BOOLEAN else True
            ) and not (
                feature.kind == FeatureKind.METERED
                and not entitlement.unlimited
                and not entitlement.limit
            )
            cells.append(
                ComparisonCell(
                    plan_id=plan.pk,
                    text=entitlement_summary(entitlement, interval=plan.interval),
                    included=included,
                    note=entitlement_overage_text(entitlement),
                )
            )
        rows.append(ComparisonRow(feature=feature, cells=cells))
    return rows


# --- what publishing a version would do ------------------------------------------------------


@dataclass(frozen=True)
class FeatureChange:
    """One feature whose terms differ between the published version (`before`) and another
    (`after`); None where a side lacks it. `over` are the subscribers (customer ids) who have
    already used more than a lowered limit (None when the limit is not lowered)."""

    feature: Feature
    before: PlanEntitlement | None
    after: PlanEntitlement | None
    over: frozenset[int] | None = None

    @property
    def customers_over(self) -> int | None:
        return None if self.over is None else len(self.over)


@dataclass(frozen=True)
class Revenue:
    """The plan's subscribers' prices per period, now and if all moved to the version."""

    before: Money
    after: Money

    @property
    def change(self) -> Money:
        return self.after - self.before


@dataclass(frozen=True)
class Impact:
    version: PlanVersion
    subscribers: int  # active, on any version of the plan: whom `migrate` moves
    on_current: int  # of whom on the published version
    changes: list[FeatureChange]
    revenue: Revenue

    @property
    def customers_over(self) -> int:
        """Subscribers already over at least one lowered limit (each counted once)."""
        return len(frozenset().union(*(c.over for c in self.changes if c.over)))


def _values(row: PlanEntitlement | None) -> tuple | None:
    return None if row is None else tuple(getattr(row, n) for n in ENTITLEMENT_VALUE_NAMES)


def limit_lowered(before, after) -> bool:
    """True when `after` (an entitlement or its values) caps a metered feature lower than
    `before` did (a missing or unlimited `before` caps nothing)."""
    if after is None or after.unlimited or after.limit is None:
        return False
    if before is None or before.unlimited:
        return True
    return before.limit is None or after.limit < before.limit


def subscribers_over(*, version: PlanVersion, feature: Feature, limit: Decimal) -> int:
    """How many active subscribers on `version` have already used more of `feature` this
    period than `limit` (plus their grants): those a lower limit puts over it at once."""
    over = subscribers().over_limit(version_ids=[version.pk], feature_id=feature.pk, limit=limit)
    return len(over)


def plan_version_impact(*, version: PlanVersion) -> Impact:
    """What publishing `version` would do, before it is done: the plan's subscribers, each
    feature whose terms differ from the published version's (before -> after), how many
    subscribers are already over a lowered limit, and the revenue per period before and after
    if they all moved (`migrate`; with `keep` none move). Counts through catalog.subscribers."""
    plan = version.plan
    current = plan_version_current(plan=plan)
    others = [v for v in plan_versions(plan=plan) if v.status != VersionStatus.DRAFT]
    served = [v for v in others if v.subscriber_count]
    before_rows = {e.feature_id: e for e in plan_entitlements(plan=plan, version=current)}
    after_rows = {e.feature_id: e for e in plan_entitlements(plan=plan, version=version)}
    changes = []
    features = {f: e.feature for f, e in (before_rows | after_rows).items()}
    for feature in sorted(features.values(), key=lambda f: f.name):
        before, after = before_rows.get(feature.pk), after_rows.get(feature.pk)
        if _values(before) == _values(after):
            continue
        over = None
        if feature.kind == FeatureKind.METERED and limit_lowered(before, after):
            over = subscribers().over_limit(
                version_ids=[v.pk for v in served], feature_id=feature.pk, limit=after.limit
            )
        changes.append(FeatureChange(feature, before, after, over))
    currency = str(plan.price.currency)
    total = sum((v.price.amount * v.subscriber_count for v in served), Decimal("0"))
    count = sum(v.subscriber_count for v in served)
    return Impact(
        version=version,
        subscribers=count,
        on_current=next((v.subscriber_count for v in served if v.status == "published"), 0),
        changes=changes,
        revenue=Revenue(
            before=Money(total, currency), after=Money(version.price.amount * count, currency)
        ),
    )
