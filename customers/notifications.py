"""Threshold crossings of metered entitlements (DESIGN.md "Notifications")."""

from decimal import Decimal


def thresholds_crossed(before, after) -> list[int]:
    """The `notify_at` thresholds that usage went across from `before` to `after`."""
    if after.percent_used is None or before.percent_used is None:
        return []
    low, high = before.percent_used, after.percent_used
    return [t for t in after.notify_at if low < Decimal(t) <= high]


def thresholds_record(*, customer, feature, before, after) -> None:
    """Called by the engine inside the usage transaction."""
    thresholds_crossed(before, after)
