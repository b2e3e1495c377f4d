"""Reads for the end customer's dashboard: what each page shows, shaped for the templates.

Every number comes from the engine (`customers.engine`), billing or the catalog; nothing here
recomputes an entitlement. Every read is scoped to one customer, so a page can only ever show
that customer's rows.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field, replace
from decimal import Decimal

from django.utils import timezone

from billing.models import Invoice, InvoicePurpose, InvoiceStatus, TopUpPurchase
from catalog.models import (
    Feature,
    FeatureKind,
    Plan,
    PlanEntitlement,
    PlanStatus,
    Reset,
    TopUpPack,
)
from catalog.selectors import (
    CURRENT,
    plan_comparison,
    plan_is_upgrade,
    price_text,
    topup_packs_available,
)
from core.text import day_text, money_text, quantity_text
from customers.engine import Entitlement, arithmetic, entitlements_resolve
from customers.models import (
    SUBSCRIPTION_CURRENT,
    Customer,
    CustomerUser,
    Notification,
    Subscription,
)
from customers.selectors import usage_buckets

WARN_AT_DEFAULT = 80
SEVERITY = {"danger": 0, "warn": 1}
ZERO = Decimal("0")


def customer_of(user) -> Customer | None:
    """The customer `user` logs in for, or None (anonymous, staff, anyone unlinked)."""
    if not user.is_authenticated:
        return None
    link = CustomerUser.objects.select_related("customer").filter(user_id=user.pk).first()
    return link.customer if link else None


def subscription_of(customer: Customer) -> Subscription | None:
    return (
        Subscription.objects.filter(customer=customer, status__in=SUBSCRIPTION_CURRENT)
        .select_related("plan", "scheduled_plan")
        .first()
    )


# --- usage cards ---------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageCard:
    """One entitlement as a card shows it. `state`: ok | warn | danger | unlimited | off |
    paused (payment overdue)."""

    entitlement: Entitlement
    state: str
    percent: int | None = None  # whole percent used, rounded down (84.9 shows as 84)
    bar_width: str = "0"  # CSS percent, capped at 100
    warning: str = ""
    can_buy: bool = False

    @property
    def metered(self) -> bool:
        return self.entitlement.kind == FeatureKind.METERED

    @property
    def anchor(self) -> str:
        return f"usage-{self.entitlement.feature}"

    @property
    def value_now(self) -> int:
        """The progress bar's aria-valuenow: the percent, within 0..100."""
        return max(0, min(100, self.percent or 0))


def _warn_at(e: Entitlement) -> int:
    below_full = [t for t in e.notify_at if 0 < t < 100]
    return min(below_full) if below_full else WARN_AT_DEFAULT


PAUSED_WARNING = "Paused until the overdue invoice is paid."


def usage_card(e: Entitlement, *, can_buy: bool = False) -> UsageCard:
    if e.kind != FeatureKind.METERED:
        state = "paused" if e.denied else ("ok" if e.has_access else "off")
        return UsageCard(entitlement=e, state=state)
    if e.denied:
        # The numbers stand; access waits for the payment (BILLING_PAST_DUE_ACCESS=deny).
        card = usage_card(replace(e, denied=None, has_access=True))
        return replace(card, state="paused", warning=PAUSED_WARNING, can_buy=False)
    if e.unlimited:
        return UsageCard(entitlement=e, state="unlimited", can_buy=can_buy)
    exact = e.percent_used if e.percent_used is not None else ZERO
    percent = int(exact)  # rounded down: "100%" only once it really is full
    width = min(Decimal("100"), max(ZERO, exact))
    state, warning = "ok", ""
    if not e.has_access or exact >= 100:
        state = "danger"
        warning = f"You have used {percent}% of your {e.name}."
        if e.enforcement == "soft":
            if e.overage_price is not None:
                warning += (
                    f" Use beyond your allowance is billed at {money_text(e.overage_price)} "
                    f"per {e.unit or 'unit'}."
                )
        elif e.aggregation == "latest":
            # A level (storage in use) does not reset: it goes down when they use less.
            warning += " More is blocked until you use less, buy more or upgrade."
        elif e.resets_at:
            warning += f" More is blocked until it resets on {day_text(e.resets_at)}."
        else:
            warning += " More is blocked."
    elif exact >= _warn_at(e):
        state = "warn"
        warning = f"You have used {percent}% of your {e.name}."
    return UsageCard(
        entitlement=e,
        state=state,
        percent=percent,
        bar_width=f"{width.quantize(Decimal('0.1'))}",
        warning=warning,
        can_buy=can_buy,
    )


@dataclass(frozen=True)
class Overview:
    customer: Customer
    subscription: Subscription | None
    metered: list[UsageCard]
    included: list[UsageCard]
    updated_at: dt.datetime

    @property
    def warnings(self) -> list[UsageCard]:
        return [c for c in self.metered if c.warning]


def overview(customer: Customer, *, at: dt.datetime | None = None) -> Overview:
    """The cards of the overview: metered allowances first, then gates and settings. Seven
    queries whatever the usage (the engine's five, the subscription, the packs on sale)."""
    at = at or timezone.now()
    subscription = subscription_of(customer)
    entitlements = entitlements_resolve(customer, at=at)
    buyable = set()
    if subscription is not None:
        buyable = set(
            topup_packs_available(plan=subscription.plan)
            .filter(price_currency=customer.currency)
            .values_list("feature__key", flat=True)
        )
    metered, included = [], []
    for e in entitlements:
        card = usage_card(e, can_buy=e.feature in buyable)
        (metered if card.metered else included).append(card)
    # What needs attention first: over the limit, then past a threshold, then by name.
    metered.sort(key=lambda card: SEVERITY.get(card.state, 9))
    return Overview(customer, subscription, metered, included, at)


def entitlement_of(customer: Customer, feature_key: str) -> Entitlement | None:
    return next((e for e in entitlements_resolve(customer) if e.feature == feature_key), None)


# --- usage chart ---------------------------------------------------------------------------

CHART_WIDTH, CHART_HEIGHT = 400, 200
PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 46, 392, 14, 172
MAX_CHART_DAYS = 62
RECENT_DAYS = 30


@dataclass(frozen=True)
class ChartBar:
    day: dt.date
    value: Decimal
    x: float
    y: float
    width: float
    height: float
    label: str
    future: bool = False


@dataclass(frozen=True)
class ChartTick:
    position: float
    label: str


@dataclass(frozen=True)
class UsageChart:
    """A daily usage chart of one metered feature, laid out in SVG user units."""

    feature: str
    name: str
    unit: str
    measure: str  # what a bar is: "level" | "running total" | "daily use"
    bars: list[ChartBar]
    y_ticks: list[ChartTick]
    x_ticks: list[ChartTick]
    limit_y: float | None
    limit_label: str
    summary: str
    future_x: float | None = None
    width: int = CHART_WIDTH
    height: int = CHART_HEIGHT
    plot_left: int = PLOT_LEFT
    plot_right: int = PLOT_RIGHT
    plot_top: int = PLOT_TOP
    plot_bottom: int = PLOT_BOTTOM
    rows: list[tuple[str, str]] = field(default_factory=list)

    @property
    def dom_id(self) -> str:
        return f"chart-{self.feature}"

    @property
    def plot_height(self) -> int:
        return self.plot_bottom - self.plot_top

    @property
    def future_width(self) -> float | None:
        return None if self.future_x is None else round(self.plot_right - self.future_x, 1)


def _nice_top(value: float) -> tuple[float, float]:
    """A round axis maximum at or above `value` and its step (four steps or so)."""
    if value <= 0:
        return 1.0, 0.25
    raw = value / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return math.ceil(value / step - 1e-9) * step, step


def _chart_range(e: Entitlement, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The period when it is a sensible number of days, else the last 30 days."""
    start, end = e.period_start, e.period_end
    if (
        e.reset in (Reset.BILLING_PERIOD, Reset.MONTH, Reset.WEEK)
        and start is not None
        and end is not None
        and (end - start).days <= MAX_CHART_DAYS
    ):
        return start, end
    today = now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - dt.timedelta(days=RECENT_DAYS - 1), today + dt.timedelta(days=1)


def usage_chart(
    customer: Customer, e: Entitlement, feature: Feature, *, now: dt.datetime | None = None
) -> UsageChart:
    """One bar per day of the chart's range (days still to come are empty). A level
    (`latest`) shows each day's last level; a sum shows the running total of the period, so
    both compare with the limit line (a daily allowance shows each day's use). Two queries."""
    now = now or timezone.now()
    start, end = _chart_range(e, now)
    buckets = usage_buckets(customer=customer, feature=feature, start=start, end=end, window="day")
    today = now.astimezone(dt.UTC).date()
    if feature.aggregation == "latest":
        measure, values = "level", [b.usage for b in buckets]
    elif e.reset == Reset.DAY:
        measure, values = "daily use", [b.usage for b in buckets]
    else:
        measure, total, values = "running total", ZERO, []
        if e.reset == Reset.NEVER:
            # The range is the last 30 days of an allowance that never resets: start the running
            # total from what was used before the range.
            total = max(ZERO, (e.usage or ZERO) - sum((b.usage for b in buckets), ZERO))
        for b in buckets:
            total += b.usage
            values.append(total)
    days = [b.start.astimezone(dt.UTC).date() for b in buckets]
    future = [day > today for day in days]
    values = [ZERO if is_future else v for v, is_future in zip(values, future, strict=True)]

    capacity = arithmetic.capacity(e)  # the limit line: allowance plus grants
    peak = max([float(v) for v in values] + [float(capacity or 0)] + [0.0])
    top, step = _nice_top(peak * 1.05 if peak else 0)
    plot_w, plot_h = PLOT_RIGHT - PLOT_LEFT, PLOT_BOTTOM - PLOT_TOP

    def y_of(value: float) -> float:
        return round(PLOT_BOTTOM - plot_h * value / top, 1)

    n = max(1, len(values))
    slot = plot_w / n
    bar_w = round(max(1.0, slot * 0.72), 1)
    unit = e.unit
    bars = []
    for i, (day, value, is_future) in enumerate(zip(days, values, future, strict=True)):
        x = round(PLOT_LEFT + i * slot + (slot - bar_w) / 2, 1)
        y = y_of(float(value))
        day_label = f"{day:%b} {day.day}"
        label = (
            f"{day_label}: not yet" if is_future else f"{day_label}: {quantity_text(value, unit)}"
        )
        bars.append(ChartBar(day, value, x, y, bar_w, round(PLOT_BOTTOM - y, 1), label, is_future))
    y_ticks = []
    tick = 0.0
    while tick <= top + 1e-9:
        y_ticks.append(ChartTick(y_of(tick), quantity_text(Decimal(str(round(tick, 6))))))
        tick += step
    label_every = 7 if n > 10 else 1
    x_ticks = [
        ChartTick(round(PLOT_LEFT + i * slot + slot / 2, 1), f"{day:%b} {day.day}")
        for i, day in enumerate(days)
        if i % label_every == 0
    ]
    first_future = next((i for i, f in enumerate(future) if f), None)
    future_x = round(PLOT_LEFT + first_future * slot, 1) if first_future is not None else None

    limit_y = y_of(float(capacity)) if capacity is not None else None
    limit_label = f"Limit {quantity_text(capacity, unit)}" if capacity is not None else ""
    current = next(
        (v for v, f in zip(reversed(values), reversed(future), strict=True) if not f), ZERO
    )
    first, last = (days[0], days[-1]) if days else (today, today)
    summary = (
        f"{e.name}, {measure} per day from {first:%b} {first.day} to {last:%b} {last.day}: "
        f"{quantity_text(current, unit)} now"
        + (f", against a limit of {quantity_text(capacity, unit)}." if capacity else ", unlimited.")
    )
    rows = [(f"{b.day:%b} {b.day.day}", quantity_text(b.value, unit)) for b in bars if not b.future]
    return UsageChart(
        feature=e.feature,
        name=e.name,
        unit=unit,
        measure=measure,
        bars=bars,
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        limit_y=limit_y,
        limit_label=limit_label,
        summary=summary,
        future_x=future_x,
        rows=rows,
    )


def usage_charts(customer: Customer, cards: list[UsageCard]) -> list[UsageChart]:
    """A chart per metered card, in the cards' order."""
    keys = [c.entitlement.feature for c in cards if c.metered]
    features = {f.key: f for f in Feature.objects.filter(key__in=keys)}
    now = timezone.now()
    return [
        usage_chart(customer, c.entitlement, features[c.entitlement.feature], now=now)
        for c in cards
        if c.metered and c.entitlement.feature in features
    ]


# --- top-ups -------------------------------------------------------------------------------


def topup_packs_for(
    customer: Customer, subscription: Subscription | None, *, feature: Feature | None = None
):
    """Packs this customer may buy now: active, offered on their plan, in their currency."""
    if subscription is None:
        return TopUpPack.objects.none()
    return topup_packs_available(plan=subscription.plan, feature=feature).filter(
        price_currency=customer.currency
    )


def topup_pack_for(
    customer: Customer, subscription: Subscription | None, pack_key: str
) -> TopUpPack | None:
    """One pack the customer may buy, or None: a pack not offered to them does not exist for
    them."""
    return topup_packs_for(customer, subscription).filter(key=pack_key).first()


def topup_expiry_text(pack: TopUpPack, subscription: Subscription | None) -> str:
    if pack.expiry == "never":
        return "Never expires"
    if pack.expiry == "days":
        return f"Expires {pack.expiry_days} days after purchase"
    if subscription is not None:
        end = day_text(subscription.current_period_end)
        return f"Expires at the end of this billing period ({end})"
    return "Expires at the end of the billing period"


def topup_purchase_of(customer: Customer, key: str) -> TopUpPurchase | None:
    return (
        TopUpPurchase.objects.filter(customer=customer, idempotency_key=key)
        .select_related("invoice", "grant", "pack", "pack__feature")
        .first()
    )


# --- plans ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanChangeLine:
    kind: str  # added | removed | changed
    text: str


@dataclass
class PlanOption:
    """A plan as the comparison shows it to this customer."""

    plan: Plan
    price: str
    relation: str  # current | upgrade | downgrade
    scheduled: bool
    changes: list[PlanChangeLine] = field(default_factory=list)
    # What the customer uses now beyond this plan's allowance (a downgrade's catch).
    warnings: list[str] = field(default_factory=list)


@dataclass
class PlanChoice:
    """The plans offered to a customer, and the side-by-side rows of what each includes."""

    options: list[PlanOption]
    rows: list  # catalog.selectors.ComparisonRow, one cell per option

    @property
    def plans(self) -> list[Plan]:
        return [option.plan for option in self.options]


def plans_offered(subscription: Subscription) -> list[Plan]:
    """Public active plans the customer may switch to (same currency and interval) and their
    current plan even when it is not public any more, by rank."""
    plans = Plan.objects.filter(
        status=PlanStatus.ACTIVE,
        public=True,
        price_currency=subscription.customer.currency,
        interval=subscription.plan.interval,
    ).exclude(pk=subscription.plan_id)
    return sorted([*plans, subscription.plan], key=lambda p: (p.rank, p.name))


def plan_offered(subscription: Subscription, plan_key: str) -> Plan | None:
    return next((p for p in plans_offered(subscription) if p.key == plan_key), None)


def plan_choice(customer: Customer, subscription: Subscription) -> PlanChoice:
    """Each plan with what would change for this customer moving there from their plan.
    Features under their own custom terms (an override in force) do not change with the plan;
    they are said to stay. A move to a plan whose allowance is below what they use now says so."""
    plans = plans_offered(subscription)
    # Their own plan as they have it: the version they are on (perhaps not the latest).
    rows = plan_comparison(plans, versions={subscription.plan_id: subscription.plan_version_id})
    current_index = next(i for i, p in enumerate(plans) if p.pk == subscription.plan_id)
    entitlements = entitlements_resolve(customer)
    custom = {e.feature for e in entitlements if e.source == "override"}
    limits = {
        (pe.plan_id, pe.feature_id): pe
        for pe in PlanEntitlement.objects.filter(
            CURRENT, plan__in=plans, feature__kind=FeatureKind.METERED
        )
    }
    options = []
    for i, plan in enumerate(plans):
        relation = (
            "current"
            if i == current_index
            else ("upgrade" if plan_is_upgrade(subscription.plan, plan) else "downgrade")
        )
        own = subscription.plan_version.price if relation == "current" else None
        option = PlanOption(
            plan=plan,
            price=price_text(plan, price=own),
            relation=relation,
            scheduled=plan.pk == subscription.scheduled_plan_id,
        )
        if relation != "current":
            option.changes = _changes(rows, current_index, i, custom)
            option.warnings = _over_allowance(plan, entitlements, limits, custom)
        options.append(option)
    return PlanChoice(options=options, rows=rows)


def _over_allowance(plan: Plan, entitlements, limits, custom: set[str]) -> list[str]:
    warnings = []
    for e in entitlements:
        if e.kind != FeatureKind.METERED or e.feature in custom or not e.usage:
            continue
        pe = limits.get((plan.pk, e.feature_id))
        if pe is None:
            warnings.append(
                f"You use {quantity_text(e.usage, e.unit)} of {e.name} now; "
                f"{plan.name} does not include it."
            )
            continue
        if pe.unlimited:
            continue
        limit = pe.limit or ZERO
        if e.usage > limit:
            warnings.append(
                f"You use {quantity_text(e.usage, e.unit)} of {e.name} now; "
                f"{plan.name} includes {quantity_text(limit, e.unit)}."
            )
    return warnings


def _changes(rows, frm: int, to: int, custom: set[str]) -> list[PlanChangeLine]:
    changes = []
    for row in rows:
        before, after = row.cells[frm], row.cells[to]
        name = row.feature.name
        if before.text == after.text and before.note == after.note:
            continue
        if row.feature.key in custom:
            changes.append(PlanChangeLine("kept", f"{name}: your custom terms stay"))
        elif after.included and not before.included:
            suffix = "" if row.feature.kind == FeatureKind.BOOLEAN else f" ({after.text})"
            changes.append(PlanChangeLine("added", f"{name}{suffix}"))
        elif before.included and not after.included:
            was = "" if row.feature.kind == FeatureKind.BOOLEAN else f" ({before.text})"
            changes.append(PlanChangeLine("removed", f"{name}{was}"))
        else:
            old = " ".join(x for x in (before.text, before.note) if x)
            new = " ".join(x for x in (after.text, after.note) if x)
            changes.append(PlanChangeLine("changed", f"{name}: {old} → {new}"))
    return changes


def plan_change_invoice(customer: Customer, number: str) -> Invoice | None:
    """The customer's own plan-change invoice `number`, or None."""
    return (
        Invoice.objects.filter(customer=customer, number=number, purpose=InvoicePurpose.PLAN_CHANGE)
        .exclude(status=InvoiceStatus.DRAFT)
        .first()
    )


def plan_change_invoice_latest(
    customer: Customer, plan: Plan, *, within: dt.timedelta = dt.timedelta(minutes=10)
) -> Invoice | None:
    """The proration invoice of a move to `plan` issued in the last minutes: what a repeated
    "confirm upgrade" (a double click) is shown instead of an error."""
    return (
        Invoice.objects.filter(
            customer=customer,
            purpose=InvoicePurpose.PLAN_CHANGE,
            lines__plan=plan,
            issued_at__gte=timezone.now() - within,
        )
        .exclude(status__in=[InvoiceStatus.DRAFT, InvoiceStatus.VOID])
        .order_by("-issued_at", "-pk")
        .first()
    )


# --- notifications -------------------------------------------------------------------------


def notifications_of(customer: Customer):
    return Notification.objects.filter(customer=customer).select_related("feature")


def notification_of(customer: Customer, pk: int) -> Notification | None:
    return notifications_of(customer).filter(pk=pk).first()
