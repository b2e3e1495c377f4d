"""What 100% of an allowance is, and how far usage has gone: one rule for the dashboard, the
support page, invoices and the usage alert email (STYLE.md: one rule, one function).

Plain values in, numbers out: no database. `e` is an `engine.Entitlement` (anything with its
fields: kind, aggregation, unlimited, limit, granted, usage, overage, has_access).

Capacity is the allowance plus the grants in the entitlement's window, never derived from
usage: past a soft limit the engine's balance is 0, so `usage + balance` would make capacity
grow with usage ("541 GB of 541 GB" for a 500 GB limit).
"""

from decimal import Decimal

ZERO = Decimal("0")
HUNDRED = Decimal("100")
METERED = "metered"  # catalog.models.FeatureKind.METERED; kept a literal to stay import-free
LATEST = "latest"  # catalog.models.Aggregation.LATEST


def grant_units(e) -> Decimal:
    """Units of grants in the entitlement's window: for a level, the grants in force (they add
    capacity and are never consumed); for a sum, what is left of them plus what the window's
    usage drew from them (usage past the allowance that is not overage)."""
    granted = e.granted or ZERO
    if e.aggregation == LATEST or e.limit is None:
        return granted
    drawn = (e.usage or ZERO) - e.limit - (e.overage or ZERO)
    return granted + max(ZERO, drawn)


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
