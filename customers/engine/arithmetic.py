"""The arithmetic of entitlements: every number a page, email, invoice or API answer shows.

PURE: plain values in, numbers out; no Django, no database. Terms and rows come in as plain
objects with the fields named below (the engine's CounterRow and GrantRow, or models), and
the constants are the catalog's choices as plain strings (catalog.models.FeatureKind etc.;
customers/tests/test_arithmetic.py checks they agree).

- `entitlement_compute`: limit, granted, usage, reserved, balance, overage, has_access of one
  entitlement (DESIGN.md "Effective entitlement");
- `capacity`, `grant_units`, `percent_used`, `percent_of`, `overage_of`: what 100% is and how
  far usage has gone (the dashboard, the support page, invoices and the alert email);
- `thresholds_crossed`, `may_cross`: which `notify_at` thresholds usage went across;
- `draw_plan`, `draw_apply`, `consume_decide`: the burn-down of a quantity against the
  allowance and then the grants, soonest-expiring first, and the gate's decision;
  `consume_fast_bounds`: that decision's simple case as bounds on usage, for a database to
  check in the statement that writes (PostgreSQL's consume in one round trip).
- `reversal_apply`: a usage event given back (the mirror of `draw_apply`).

The allowance left in a window is `limit - (used - drawn)`: `used - drawn` is what the
window's usage took from the allowance and overage. Without reversals that is `limit - used`
whenever grants are drawn (the allowance is used up first); after a reversal of an event that
drew on the allowance while later ones drew on grants, the allowance has room again although
`drawn > 0`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from djmoney.money import Money

ZERO = Decimal("0")
HUNDRED = Decimal("100")
# The catalog's choices (catalog.models), as plain strings so this module stays import-free.
METERED, BOOLEAN, CONFIG = "metered", "boolean", "config"
SUM, LATEST = "sum", "latest"
HARD, SOFT = "hard", "soft"
BILLING_PERIOD, NEVER = "billing_period", "never"


@dataclass(frozen=True)
class Terms:
    """The entitlement values in force for one feature: an override's or the plan's."""

    source: str  # "override" | "plan" | "grant" (units granted without any entitlement)
    enabled: bool = True
    limit: Decimal | None = None
    unlimited: bool = False
    reset: str = BILLING_PERIOD
    enforcement: str = HARD
    overage_price: Money | None = None
    notify_at: tuple[int, ...] = (80, 100)
    value: str = ""
    show_on_invoice: bool = False
    # Why access is refused whatever the numbers (`payment_overdue`), or None.
    denied: str | None = None


GRANT_ONLY_TERMS = Terms(source="grant", limit=ZERO, notify_at=(80, 100))


@dataclass(frozen=True)
class Entitlement:
    """One effective entitlement: the `E` of the API (DESIGN.md "HTTP API")."""

    feature: str
    name: str
    kind: str
    unit: str
    has_access: bool
    value: str | None = None
    unlimited: bool = False
    limit: Decimal | None = None
    granted: Decimal | None = None
    usage: Decimal | None = None
    balance: Decimal | None = None
    overage: Decimal | None = None
    reserved: Decimal | None = None  # held now by reservations (0 when metered and none)
    drawn: Decimal | None = None  # what the window's usage took from grants (sums); not in E
    enforcement: str | None = None
    source: str | None = None
    period_start: dt.datetime | None = None
    period_end: dt.datetime | None = None
    resets_at: dt.datetime | None = None
    # Not in the API's E, but what pages, notifications and invoices need.
    reset: str | None = None
    aggregation: str | None = None
    notify_at: tuple[int, ...] = ()
    show_on_invoice: bool = False
    overage_price: Money | None = None
    feature_id: int | None = None
    denied: str | None = None  # why access is refused whatever the numbers (payment_overdue)
    holds: int = 0  # how many reservations hold the `reserved` units

    @property
    def percent_used(self) -> Decimal | None:
        """Usage as a percent of allowance plus grants (past 100 when over); None when
        unlimited or not metered."""
        return percent_used(self)


@dataclass
class ConsumeResult:
    allowed: bool
    reason: str | None  # None | "limit_exceeded" | "no_access" | "payment_overdue"
    entitlement: Entitlement
    replayed: bool = False


@dataclass
class BatchResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict] = field(default_factory=list)


def active_grants(grants: Iterable, feature_id: int, at: dt.datetime) -> list:
    """Grants in force at `at`, in burn-down order: soonest-expiring first, never-expiring last."""
    active = [
        g
        for g in grants
        if g.feature_id == feature_id
        and g.effective_at <= at
        and (g.expires_at is None or at < g.expires_at)
        and (g.voided_at is None or at < g.voided_at)
    ]
    far = dt.datetime.max.replace(tzinfo=dt.UTC)
    return sorted(active, key=lambda g: (g.expires_at or far, g.effective_at, g.pk or 0))


def level_of(counters: dict, kind: str) -> Decimal:
    """A `latest` feature's level: the last report in the window, else the last report ever
    (a level such as storage in use carries over into a new period until reported again)."""
    for candidate in (counters.get(kind), counters.get(NEVER)):
        if candidate is not None and candidate.level is not None:
            return candidate.level
    return ZERO


def effective_kind(terms: Terms) -> str:
    return terms.reset


def entitlement_compute(
    feature,
    terms: Terms | None,
    counters: dict,
    grants: list,
    windows: dict,
    reserved: Decimal = ZERO,
    holds: int = 0,
) -> Entitlement:
    """One effective entitlement (DESIGN.md) from the terms in force, the counters of the
    windows containing the moment (by window kind), the grants in force in burn-down order
    and the windows by kind. `reserved`: units held now (by `holds` reservations); the balance
    excludes them. Terms `denied` keep their numbers without access."""
    if terms is not None and terms.denied:
        allowed = entitlement_compute(
            feature, replace(terms, denied=None), counters, grants, windows, reserved, holds
        )
        return replace(allowed, has_access=False, denied=terms.denied)
    base = {
        "feature": feature.key,
        "name": feature.name,
        "kind": feature.kind,
        "unit": feature.unit,
        "feature_id": feature.pk,
        "aggregation": feature.aggregation if feature.kind == METERED else None,
    }
    if terms is None and not (feature.kind == METERED and grants):
        return Entitlement(has_access=False, **base)
    if feature.kind == BOOLEAN:
        return Entitlement(
            has_access=terms.enabled,
            source=terms.source,
            show_on_invoice=terms.show_on_invoice,
            **base,
        )
    if feature.kind == CONFIG:
        return Entitlement(
            has_access=True,
            value=terms.value,
            source=terms.source,
            show_on_invoice=terms.show_on_invoice,
            **base,
        )

    terms = terms or GRANT_ONLY_TERMS
    kind = effective_kind(terms)
    window = windows[kind]
    counter = counters.get(kind)
    limit = None if terms.unlimited else (terms.limit or ZERO)
    if feature.aggregation == LATEST:
        usage = level_of(counters, kind)
        granted = sum((g.quantity for g in grants), ZERO)
        if limit is None:
            balance = overage = None
        else:
            total = limit + granted
            balance = max(ZERO, total - usage - reserved)
            overage = overage_of(usage, total)
    else:
        usage = counter.used if counter else ZERO
        drawn = counter.drawn if counter else ZERO
        granted = sum((g.quantity - g.consumed for g in grants), ZERO)
        if limit is None:
            balance = overage = None
        else:
            balance = max(ZERO, allowance_left(limit, usage, drawn) + granted - reserved)
            overage = max(ZERO, usage - limit - drawn)
    has_access = limit is None or balance > 0 or terms.enforcement == SOFT
    resets = kind != NEVER
    return Entitlement(
        has_access=has_access,
        unlimited=limit is None,
        limit=limit,
        granted=granted,
        usage=usage,
        balance=balance,
        overage=ZERO if overage is None and limit is None else overage,
        reserved=reserved,
        drawn=None if feature.aggregation == LATEST else drawn,
        holds=holds if reserved else 0,
        enforcement=terms.enforcement,
        source=terms.source,
        period_start=window.start,
        period_end=window.end if resets else None,
        resets_at=window.end if resets else None,
        reset=kind,
        notify_at=terms.notify_at,
        show_on_invoice=terms.show_on_invoice,
        overage_price=terms.overage_price,
        **base,
    )


def allowance_left(limit: Decimal, used: Decimal, drawn: Decimal) -> Decimal:
    """What is left of a window's allowance: its usage less what grants covered (`drawn`)
    counts against it."""
    return max(ZERO, limit - (used - drawn))


@dataclass
class Draw:
    """The effect one usage quantity would have: what to add where. Applied only if allowed.
    `takes`: (grant, units) taken from grants; `overage`: units past the allowance and every
    grant (reported usage, or a soft limit); the rest drew on the allowance."""

    allowed: bool
    reason: str | None
    quantity: Decimal
    level: Decimal | None = None
    takes: list[tuple] = field(default_factory=list)
    overage: Decimal = ZERO

    @property
    def recorded(self) -> Decimal:
        """What the ledger records: the new level of a `latest` feature, else the quantity."""
        return self.level if self.level is not None else self.quantity


def draw_plan(
    feature,
    terms: Terms | None,
    counters: dict,
    grants: list,
    quantity: Decimal,
    *,
    enforce: bool,
    as_level: bool,
    reserved: Decimal = ZERO,
) -> Draw:
    """Burn-down of `quantity` against allowance, then grants soonest-expiring first. With
    `enforce` (a consume, a hold), a hard limit denies what the balance cannot cover once the
    `reserved` units (held by reservations) are set aside. `as_level`: the quantity is a
    reported level of a `latest` feature rather than an increment."""
    if enforce and terms is not None and terms.denied:
        return Draw(False, terms.denied, quantity)
    if terms is None and not grants:
        if enforce:
            return Draw(False, "no_access", quantity)
        terms = GRANT_ONLY_TERMS  # reported usage without access is still recorded
    terms = terms or GRANT_ONLY_TERMS
    kind = effective_kind(terms)
    hard = enforce and terms.enforcement == HARD and not terms.unlimited
    if feature.aggregation == LATEST:
        level = quantity if as_level else level_of(counters, kind) + quantity
        capacity = (terms.limit or ZERO) + sum((g.quantity for g in grants), ZERO)
        if hard and level + reserved > capacity:
            return Draw(False, "limit_exceeded", quantity, level=level)
        return Draw(True, None, quantity, level=level)
    if terms.unlimited:
        return Draw(True, None, quantity)
    counter = counters[kind]
    allowance = allowance_left(terms.limit or ZERO, counter.used, counter.drawn)
    rest = quantity - min(quantity, allowance)
    takes = []
    for grant in grants:
        if rest <= 0:
            break
        take = min(rest, grant.quantity - grant.consumed)
        if take > 0:
            takes.append((grant, take))
            rest -= take
    over = reserved > 0 and quantity + reserved > balance_of(allowance, grants)
    if hard and (rest > 0 or over):
        return Draw(False, "limit_exceeded", quantity)
    return Draw(True, None, quantity, takes=takes, overage=rest)


def overage_adding(terms: Terms | None, counters: dict, quantity: Decimal) -> Decimal:
    """The overage of adding `quantity` of a sum without grants (the batch's fast path, which
    skips `draw_plan`): what the allowance left does not cover. Read before adding."""
    terms = terms or GRANT_ONLY_TERMS
    if terms.unlimited:
        return ZERO
    counter = counters[effective_kind(terms)]
    left = allowance_left(terms.limit or ZERO, counter.used, counter.drawn)
    return quantity - min(quantity, left)


def balance_of(allowance: Decimal, grants: list) -> Decimal:
    """What is left of the allowance and the grants in force, before any reservation."""
    return allowance + sum((g.quantity - g.consumed for g in grants), ZERO)


def draw_apply(draw: Draw, terms: Terms | None, counters: dict, at: dt.datetime) -> None:
    # `used` is the sum of the ledger's quantities, and a `latest` event records the level.
    recorded = draw.recorded
    for counter in counters.values():
        counter.used += recorded
        if draw.level is not None and (counter.level_at is None or at >= counter.level_at):
            counter.level, counter.level_at = draw.level, at
    drawn = sum((take for _, take in draw.takes), ZERO)
    if drawn:
        counters[effective_kind(terms or GRANT_ONLY_TERMS)].drawn += drawn
    for grant, take in draw.takes:
        grant.consumed += take


def grant_gives_back(grant, now: dt.datetime) -> bool:
    """Whether units taken from `grant` go back to it now: not once it expired or was voided."""
    expired = grant.expires_at is not None and grant.expires_at <= now
    voided = grant.voided_at is not None and grant.voided_at <= now
    return not expired and not voided


def reversal_apply(
    quantity: Decimal, takes: list[tuple], kind: str | None, counters: dict, now: dt.datetime
) -> dict:
    """A usage event of a sum given back, the mirror of `draw_apply`: every counter whose
    window contains the event (`counters`, by kind) drops `used` by its `quantity`; the units
    it took from grants (`takes`: (grant, units)) leave the `drawn` of the counter of `kind`
    (the entitlement's window when it was recorded) and go back to grants that have not
    expired or been voided by `now`. Changes them in memory; answers {grant id: units given
    back}."""
    for counter in counters.values():
        counter.used -= quantity
    drawn = sum((take for _, take in takes), ZERO)
    if drawn and kind in counters:
        counters[kind].drawn -= drawn
    given: dict = {}
    for grant, take in takes:
        if grant_gives_back(grant, now):
            grant.consumed -= take
            given[grant.pk] = given.get(grant.pk, ZERO) + take
    return given


def consume_result(draw: Draw, entitlement: Entitlement) -> ConsumeResult:
    if draw.reason == "no_access":
        entitlement = replace(entitlement, has_access=False)
    return ConsumeResult(draw.allowed, draw.reason, entitlement)


def may_cross(terms: Terms | None, counters: dict, quantity: Decimal) -> bool:
    """Whether adding `quantity` to a sum without grants may cross a `notify_at` threshold:
    `percent_of` usage before and after against the allowance (the capacity when there are no
    grants), the arithmetic of `percent_used`. True whenever unsure (no terms, no positive
    limit), so the caller then takes the full path."""
    if terms is None:
        return True
    if terms.unlimited or not terms.notify_at:
        return False
    counter = counters[effective_kind(terms)]
    # The capacity without grants in force: the allowance plus what grants covered earlier.
    limit = (terms.limit or ZERO) + counter.drawn
    if limit <= 0:
        return True
    before = counter.used
    low, high = percent_of(before, limit), percent_of(before + quantity, limit)
    return any(low < Decimal(t) <= high for t in terms.notify_at)


def thresholds_crossed(before: Entitlement, after: Entitlement) -> list[int]:
    """The `notify_at` thresholds that usage went across from `before` to `after`."""
    if after.percent_used is None or before.percent_used is None:
        return []
    low, high = before.percent_used, after.percent_used
    return [t for t in after.notify_at if low < Decimal(t) <= high]


def consume_decide(
    feature,
    terms: Terms | None,
    counters: dict,
    grants: list,
    windows: dict,
    quantity,
    at,
    held: tuple[Decimal, int] = (ZERO, 0),
) -> tuple[Draw, Entitlement, Entitlement]:
    """The gate's decision on `quantity` (a consume, under its hard limit, beside the units
    `held` by reservations: (reserved, holds)): the draw, and the entitlement before and after
    it (the same when denied). An allowed draw is applied to `counters` and `grants` in memory;
    the caller writes them, or drops them (a dry run)."""
    reserved, holds = held
    draw = draw_plan(
        feature, terms, counters, grants, quantity, enforce=True, as_level=False, reserved=reserved
    )
    before = entitlement_compute(feature, terms, counters, grants, windows, reserved, holds)
    if not draw.allowed:
        return draw, before, before
    draw_apply(draw, terms, counters, at)
    after = entitlement_compute(feature, terms, counters, grants, windows, reserved, holds)
    return draw, before, after


def hold_decide(
    feature,
    terms: Terms | None,
    counters: dict,
    grants: list,
    windows: dict,
    quantity: Decimal,
    held: tuple[Decimal, int],
) -> tuple[Draw, Entitlement]:
    """A reservation's decision: the gate's (`draw_plan` under its hard limit, beside the
    units already `held`), nothing drawn. Answers the draw and the entitlement after the hold
    (with it among the held units), or before it when denied."""
    reserved, holds = held
    draw = draw_plan(
        feature, terms, counters, grants, quantity, enforce=True, as_level=False, reserved=reserved
    )
    if draw.allowed:
        reserved, holds = reserved + quantity, holds + 1
    return draw, entitlement_compute(feature, terms, counters, grants, windows, reserved, holds)


def commit_decide(
    feature,
    terms: Terms | None,
    counters: dict,
    grants: list,
    windows: dict,
    quantity: Decimal,
    at,
    held: tuple[Decimal, int],
    hold: Decimal,
) -> tuple[Draw, Entitlement, Entitlement]:
    """A reservation's commit of `quantity` (of the `hold` units it held, among those
    `held`): recorded like a consume, allowance first, then grants, but never denied (the hold
    guaranteed it). Answers the draw (applied in memory) and the entitlement before (the hold
    still held) and after (the usage recorded, the hold gone)."""
    reserved, holds = held
    before = entitlement_compute(feature, terms, counters, grants, windows, reserved, holds)
    draw = draw_plan(feature, terms, counters, grants, quantity, enforce=False, as_level=False)
    draw_apply(draw, terms, counters, at)
    rest = (reserved - hold, holds - 1)
    return draw, before, entitlement_compute(feature, terms, counters, grants, windows, *rest)


@dataclass(frozen=True)
class FastBounds:
    """The values of `used` (the effective window's counter, with nothing drawn from grants)
    for which `consume_decide`, with no grants in force and `reserved` units held by
    reservations, allows a quantity as it is and crosses no `notify_at` threshold: `used <=
    max_used` (None: no bound), or `used + reserved <= max_used` when `held_counts` (a hard
    limit sets the held units aside), and `used` in none of the `gaps` [lo, hi). A database
    may then check and write in one statement, under its lock."""

    max_used: Decimal | None
    gaps: tuple[tuple[Decimal, Decimal], ...]
    held_counts: bool = False

    def holds(self, used: Decimal, reserved: Decimal = ZERO) -> bool:
        taken = used + reserved if self.held_counts else used
        over = self.max_used is not None and taken > self.max_used
        return not over and not any(lo <= used < hi for lo, hi in self.gaps)


def consume_fast_bounds(feature, terms: Terms | None, quantity: Decimal) -> FastBounds | None:
    """`FastBounds` of a consume of `quantity` for the simple case, else None (the full
    decision must run): a sum under terms that grant access by themselves (not denied) and a
    positive limit or none. With no grants and nothing drawn,
    capacity is the limit, so a threshold `t` is crossed exactly when used < t% of the limit
    <= used + quantity (Python's decimals divide exactly at these sizes: 15 digits, 4 places);
    the allowance covers the quantity, so that the draw is neither denied (a hard limit) nor
    overage (a soft one, whose overage draw the full path records), exactly when used +
    quantity <= limit (`draw_plan`); under a hard limit the units held by reservations are set
    aside, so also when used + reserved + quantity <= limit. `test_arithmetic` checks this
    against `consume_decide` on random inputs."""
    if feature.kind != METERED or feature.aggregation != SUM or terms is None or terms.denied:
        return None
    if terms.unlimited:
        return FastBounds(None, ())
    limit = terms.limit or ZERO
    if limit <= 0:
        return None
    gaps = []
    for t in terms.notify_at:
        at_t = Decimal(t) * limit / HUNDRED  # the usage at which percent_used is t
        gaps.append((at_t - quantity, at_t))
    return FastBounds(limit - quantity, tuple(gaps), held_counts=terms.enforcement == HARD)


# --- capacity: what 100% of an allowance is ------------------------------------------------
# Capacity is the allowance plus the grants in the entitlement's window, never derived from
# usage: past a soft limit the balance is 0, so `usage + balance` would make capacity grow with
# usage ("541 GB of 541 GB" for a 500 GB limit). `e` is an Entitlement (or anything with its
# fields: kind, aggregation, unlimited, limit, granted, usage, overage, has_access).


def grant_units(e) -> Decimal:
    """Units of grants in the entitlement's window: for a level, the grants in force (they add
    capacity and are never consumed); for a sum, what is left of them plus what the window's
    usage drew from them (usage past the allowance that is not overage)."""
    granted = e.granted or ZERO
    if e.aggregation == LATEST or e.limit is None:
        return granted
    drawn = getattr(e, "drawn", None)
    if drawn is None:  # a figure without it (an invoice line's): what usage says was drawn
        drawn = max(ZERO, (e.usage or ZERO) - e.limit - (e.overage or ZERO))
    return granted + drawn


def capacity(e) -> Decimal | None:
    """The allowance plus `grant_units`: what 100% means. None when unlimited or not metered."""
    if e.kind != METERED or e.unlimited or e.limit is None:
        return None
    return e.limit + grant_units(e)


def percent_of(usage: Decimal, capacity: Decimal, *, blocked: bool = False) -> Decimal:
    """`usage` as a percent of `capacity`, past 100 when over it. A zero capacity is 100% as
    soon as anything is used or access is blocked (nothing is left), else 0%."""
    if capacity <= 0:
        return HUNDRED if usage > 0 or blocked else ZERO
    return usage * 100 / capacity


def percent_used(e) -> Decimal | None:
    """Usage as a percent of `capacity(e)`; None when unlimited or not metered."""
    total = capacity(e)
    if total is None or e.usage is None:
        return None
    return percent_of(e.usage, total, blocked=not e.has_access)


def overage_of(usage: Decimal, capacity: Decimal) -> Decimal:
    """Usage beyond the allowance and grants (DESIGN.md's `overage`), never negative."""
    return max(ZERO, usage - capacity)
