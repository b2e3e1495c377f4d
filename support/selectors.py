"""Reads for the support pages: search results, a customer's entitlements as rows with usage
bars, grants, overrides, notifications and the history of changes. The arithmetic is the
engine's (customers.engine.entitlements_resolve); this module only arranges it for a page."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

from django.core.paginator import Page, Paginator
from django.db.models import Prefetch, QuerySet
from django.utils import timezone

from catalog.models import Aggregation, Feature, FeatureKind, Plan, PlanStatus
from catalog.selectors import entitlement_overage_text, entitlement_summary, plan_is_upgrade
from core.text import quantity_text
from customers.engine import Entitlement, arithmetic, entitlements_resolve
from customers.models import (
    SUBSCRIPTION_CURRENT,
    Customer,
    EntitlementOverride,
    Grant,
    Subscription,
    UsageDraw,
    UsageEvent,
    UsageReversal,
)
from customers.selectors import customer_search

try:  # usage alerts (DESIGN.md "Notifications"); the page works without them
    from customers.models import Notification
except ImportError:  # pragma: no cover
    Notification = None

SEARCH_LIMIT = 25
WARN_AT = Decimal("80")
FULL_AT = Decimal("100")


# --- search -----------------------------------------------------------------------------------


def _with_active_plan(customers: QuerySet[Customer]) -> QuerySet[Customer]:
    active = Subscription.objects.filter(status__in=SUBSCRIPTION_CURRENT).select_related("plan")
    return customers.prefetch_related(Prefetch("subscriptions", active, to_attr="active_subs"))


def customers_matching(term: str, *, limit: int = SEARCH_LIMIT) -> list[Customer]:
    """Up to `limit` customers whose name, email or external id contains `term`, by name,
    each with `active_subs` (its active subscription, with the plan)."""
    return list(_with_active_plan(customer_search(term=term)).order_by("name", "pk")[:limit])


def customers_recent(*, limit: int = 8) -> list[Customer]:
    return list(_with_active_plan(Customer.objects.order_by("-created_at", "-pk"))[:limit])


# --- entitlements -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EntitlementRow:
    """One effective entitlement as the customer page shows it."""

    e: Entitlement
    percent: Decimal | None  # of allowance plus grants; None when unlimited or not metered
    level: str  # "" | "warn" (past 80%) | "danger" (at or past 100%)

    @property
    def bar_width(self) -> str:
        return f"{min(self.percent or Decimal(0), FULL_AT):.1f}"

    @property
    def percent_text(self) -> str:
        return f"{(self.percent or Decimal(0)).quantize(Decimal(1))}%"

    @property
    def metered(self) -> bool:
        return self.e.kind == FeatureKind.METERED

    @property
    def capacity(self) -> Decimal | None:
        """What 100% is: the allowance plus the grants in force."""
        return arithmetic.capacity(self.e)

    def q(self, value) -> str:
        return quantity_text(value, self.e.unit)

    @property
    def used_text(self) -> str:
        return self.q(self.e.usage)

    @property
    def limit_text(self) -> str:
        return self.q(self.e.limit)

    @property
    def granted_text(self) -> str:
        return self.q(self.e.granted)

    @property
    def left_text(self) -> str:
        return self.q(max(self.e.balance or Decimal(0), Decimal(0)))

    @property
    def overage_text(self) -> str:
        return self.q(self.e.overage) if self.e.overage else ""


def entitlement_rows(customer: Customer, at: dt.datetime | None = None) -> list[EntitlementRow]:
    rows = []
    for e in entitlements_resolve(customer, at=at):
        percent = e.percent_used
        level = ""
        if percent is not None:
            level = "danger" if percent >= FULL_AT else "warn" if percent >= WARN_AT else ""
        rows.append(EntitlementRow(e=e, percent=percent, level=level))
    return rows


# --- grants and overrides ---------------------------------------------------------------------


@dataclass(frozen=True)
class GrantRow:
    grant: Grant
    status: str  # active | scheduled | expired | void | used
    remaining_text: str
    quantity_text: str

    @property
    def can_void(self) -> bool:
        return self.status in ("active", "scheduled")


def grant_rows(customer: Customer, *, now: dt.datetime | None = None) -> list[GrantRow]:
    now = now or timezone.now()
    rows = []
    grants = (
        Grant.objects.filter(customer=customer)
        .select_related("feature", "topup_pack", "created_by")
        .order_by("-effective_at", "-pk")
    )
    for grant in grants:
        if grant.voided_at is not None and grant.voided_at <= now:
            status = "void"
        elif grant.expires_at is not None and grant.expires_at <= now:
            status = "expired"
        elif grant.effective_at > now:
            status = "scheduled"
        elif grant.remaining <= 0:
            status = "used"
        else:
            status = "active"
        unit = grant.feature.unit
        rows.append(
            GrantRow(
                grant=grant,
                status=status,
                remaining_text=quantity_text(grant.remaining, unit),
                quantity_text=quantity_text(grant.quantity, unit),
            )
        )
    return rows


# --- usage events -----------------------------------------------------------------------------

USAGE_PAGE_SIZE = 25


@dataclass(frozen=True)
class DrawPart:
    """Where some of an event's units went: "allowance", "grant" (with the grant) or
    "overage"."""

    kind: str
    quantity_text: str
    grant: Grant | None = None
    gives_back: bool = True  # a grant's units would go back to it now (not expired or void)


@dataclass(frozen=True)
class UsageEventRow:
    event: UsageEvent
    quantity_text: str
    parts: list[DrawPart]  # empty for a reported level (a `latest` feature)
    reversal: UsageReversal | None

    @property
    def reversible(self) -> bool:
        return self.reversal is None and self.event.feature.aggregation != Aggregation.LATEST


def usage_event_features() -> list[Feature]:
    """The features usage can be filtered by: the metered ones (the catalog is small)."""
    return list(Feature.objects.filter(kind=FeatureKind.METERED).order_by("name"))


def usage_event_page(
    customer: Customer, *, feature: Feature | None = None, page=1
) -> tuple[Page, list[UsageEventRow]]:
    """The customer's usage events, newest first, USAGE_PAGE_SIZE a page (of `feature` only,
    when given), each with where its units went, from the draw ledger: the allowance (its
    quantity less its draws), each grant it drew on, overage; and its reversal, if any. A
    page number out of range is the nearest page."""
    events = _usage_events(customer)
    if feature is not None:
        events = events.filter(feature=feature)
    current = Paginator(events, USAGE_PAGE_SIZE).get_page(page)
    return current, _usage_event_rows(current.object_list)


def usage_event_rows_of(customer: Customer, event_ids: list[int]) -> list[UsageEventRow]:
    """The rows of these events (ids) of the customer, as `usage_event_page` shows them."""
    return _usage_event_rows(_usage_events(customer).filter(pk__in=event_ids))


def _usage_events(customer: Customer) -> QuerySet[UsageEvent]:
    return (
        UsageEvent.objects.filter(customer=customer)
        .select_related("feature", "reversal", "reversal__created_by")
        .prefetch_related(
            Prefetch("draws", UsageDraw.objects.select_related("grant__topup_pack").order_by("pk"))
        )
        .order_by("-timestamp", "-pk")
    )


def _usage_event_rows(events) -> list[UsageEventRow]:
    now = timezone.now()
    rows = []
    for event in events:
        unit = event.feature.unit
        parts = []
        if event.feature.aggregation != Aggregation.LATEST:
            draws = list(event.draws.all())
            allowance = event.quantity - sum((d.quantity for d in draws), Decimal("0"))
            if allowance > 0 or not draws:
                parts.append(DrawPart("allowance", quantity_text(allowance, unit)))
            for draw in draws:
                kind = "grant" if draw.grant_id else "overage"
                back = draw.grant is None or arithmetic.grant_gives_back(draw.grant, now)
                parts.append(DrawPart(kind, quantity_text(draw.quantity, unit), draw.grant, back))
        rows.append(
            UsageEventRow(
                event=event,
                quantity_text=quantity_text(event.quantity, unit),
                parts=parts,
                reversal=getattr(event, "reversal", None),
            )
        )
    return rows


@dataclass(frozen=True)
class OverrideRow:
    override: EntitlementOverride
    status: str  # active | scheduled | ended
    summary: str
    overage: str

    @property
    def can_end(self) -> bool:
        return self.status != "ended"


def override_rows(customer: Customer, *, now: dt.datetime | None = None) -> list[OverrideRow]:
    now = now or timezone.now()
    rows = []
    overrides = (
        EntitlementOverride.objects.filter(customer=customer)
        .select_related("feature", "created_by")
        .order_by("-created_at", "-pk")
    )
    for override in overrides:
        if override.ends_at is not None and override.ends_at <= now:
            status = "ended"
        elif override.starts_at is not None and override.starts_at > now:
            status = "scheduled"
        else:
            status = "active"
        rows.append(
            OverrideRow(
                override=override,
                status=status,
                summary=entitlement_summary(override),
                overage=entitlement_overage_text(override),
            )
        )
    return rows


def notifications_sent(customer: Customer, *, limit: int = 20) -> list:
    if Notification is None:
        return []
    return list(
        Notification.objects.filter(customer=customer)
        .select_related("feature")
        .order_by("-created_at", "-pk")[:limit]
    )


# --- plans a customer may move to ---------------------------------------------------------------


@dataclass(frozen=True)
class PlanOption:
    plan: Plan
    direction: str  # "subscribe" | "upgrade" | "downgrade" | "current"

    GROUPS = {
        "subscribe": "Plans",
        "upgrade": "Upgrade now",
        "downgrade": "Downgrade at the period end",
        "current": "Keep the current plan",
    }

    @property
    def label(self) -> str:
        return (
            f"{self.plan.name}, {self.plan.price}/{'yr' if self.plan.interval == 'year' else 'mo'}"
        )

    @property
    def group(self) -> str:
        return self.GROUPS[self.direction]


def plan_options(customer: Customer, subscription: Subscription | None) -> list[PlanOption]:
    """Active plans in the customer's currency (and, with a subscription, its interval), by
    rank. The current plan is offered only to drop a scheduled downgrade."""
    plans = Plan.objects.filter(status=PlanStatus.ACTIVE, price_currency=customer.currency)
    if subscription is None:
        return [PlanOption(plan, "subscribe") for plan in plans.order_by("rank", "name")]
    plans = plans.filter(interval=subscription.plan.interval).order_by("rank", "name")
    options = []
    for plan in plans:
        if plan.pk == subscription.plan_id:
            if subscription.scheduled_plan_id:
                options.append(PlanOption(plan, "current"))
            continue
        direction = "upgrade" if plan_is_upgrade(subscription.plan, plan) else "downgrade"
        options.append(PlanOption(plan, direction))
    return options


# --- history ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    field: str
    old: str
    new: str


@dataclass(frozen=True)
class HistoryEntry:
    when: dt.datetime
    who: str
    subject: str  # "Subscription", "Override: Storage", "Grant: 20 GB Storage"
    action: str  # "created" | "changed" | "deleted"
    changes: list[Change] = field(default_factory=list)
    detail: str = ""  # what a new row says: its plan, or its reason


_ACTIONS = {"+": "created", "~": "changed", "-": "deleted"}
_SKIP_FIELDS = {"updated_at", "created_at", "id"}


def _text(record, name: str, value) -> str:
    if value is None or value == "":
        return "—"
    model_field = record.instance_type._meta.get_field(name)
    if model_field.choices:
        return str(dict(model_field.flatchoices).get(value, value))
    if model_field.is_relation:
        related = model_field.related_model.objects.filter(pk=value).first()
        return str(related) if related is not None else f"#{value}"
    if isinstance(value, dt.datetime):
        return f"{value.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"
    if isinstance(value, Decimal):
        return quantity_text(value)
    return str(value)


def _reversal_entries(customer: Customer, limit: int) -> list[HistoryEntry]:
    reversals = (
        UsageReversal.objects.filter(event__customer=customer)
        .select_related("event__feature", "created_by")
        .order_by("-created_at", "-pk")[:limit]
    )
    entries = []
    for r in reversals:
        user = r.created_by
        who = (user.get_full_name() or user.get_username()) if user else r.who
        quantity = quantity_text(r.quantity, r.event.feature.unit)
        entries.append(
            HistoryEntry(
                when=r.created_at,
                who=who,
                subject=f"Usage event {r.event.event_id}: {quantity} of {r.event.feature.name}",
                action="reversed",
                detail=r.reason,
            )
        )
    return entries


def _subject(model_name: str, record) -> str:
    if model_name == "subscription":
        return "Subscription"
    if model_name == "customer":
        return "Customer"
    feature = record.feature.name if record.feature_id else "?"
    if model_name == "grant":
        return f"Grant: {quantity_text(record.quantity, record.feature.unit)} of {feature}"
    return f"Override: {feature}"


def customer_history(customer: Customer, *, limit: int = 50) -> list[HistoryEntry]:
    """The changes to the customer, its subscriptions, overrides and grants, and its usage
    reversals, newest first:
    who made each (history_user), when, and each changed field's old and new value."""
    sources = {
        "customer": Customer.history.filter(id=customer.pk),
        "subscription": Subscription.history.filter(customer_id=customer.pk),
        "override": EntitlementOverride.history.filter(customer_id=customer.pk),
        "grant": Grant.history.filter(customer_id=customer.pk),
    }
    entries = []
    for model_name, records in sources.items():
        records = records.select_related("history_user").order_by("id", "history_date", "pk")
        if model_name in ("override", "grant"):
            records = records.select_related("feature")
        elif model_name == "subscription":
            records = records.select_related("plan")
        previous_by_id: dict[int, object] = {}
        for record in records:
            previous = previous_by_id.get(record.id)
            changes = []
            if previous is not None and record.history_type == "~":
                delta = record.diff_against(previous)
                changes = [
                    Change(
                        field=record.instance_type._meta.get_field(c.field).verbose_name,
                        old=_text(record, c.field, c.old),
                        new=_text(record, c.field, c.new),
                    )
                    for c in delta.changes
                    if c.field not in _SKIP_FIELDS
                ]
                if not changes:
                    previous_by_id[record.id] = record
                    continue
            user = record.history_user
            detail = ""
            if record.history_type == "+":
                detail = record.plan.name if model_name == "subscription" else ""
                detail = detail or getattr(record, "reason", "")
            entries.append(
                HistoryEntry(
                    when=record.history_date,
                    who=(user.get_full_name() or user.get_username()) if user else "system",
                    subject=_subject(model_name, record),
                    action=_ACTIONS.get(record.history_type, record.history_type),
                    changes=changes,
                    detail=detail,
                )
            )
            previous_by_id[record.id] = record
    entries += _reversal_entries(customer, limit)
    entries.sort(key=lambda e: e.when, reverse=True)
    return entries[:limit]
