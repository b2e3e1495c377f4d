"""Period arithmetic, all in UTC.

Billing periods keep the subscription's anchor day, clamped to the month's end and restored
after: an anchor of Jan 31 gives Feb 28 (29 in a leap year), then Mar 31. Reset windows are
`billing_period`, `month` (calendar), `week` (from Monday), `day` and `never`.
"""

import calendar
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FOREVER = datetime(9999, 12, 31, tzinfo=UTC)


class Window(NamedTuple):
    start: datetime
    end: datetime  # exclusive


def add_months(anchor: datetime, months: int) -> datetime:
    """`anchor` moved by whole months, its day clamped to the target month's length."""
    index = anchor.month - 1 + months
    year, month = anchor.year + index // 12, index % 12 + 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


def interval_months(interval: str) -> int:
    return 12 if interval == "year" else 1


def billing_period_at(anchor: datetime, interval: str, at: datetime) -> Window:
    """The billing period containing `at` for a subscription anchored at `anchor`.

    Periods are computed from the anchor each time (never from the previous period's end), so
    the anchor day comes back after a short month. Before the anchor, the first period.
    """
    step = interval_months(interval)
    if at < anchor:
        return Window(anchor, add_months(anchor, step))
    months = (at.year - anchor.year) * 12 + (at.month - anchor.month)
    n = max(0, months // step)
    start = add_months(anchor, n * step)
    if start > at:
        n -= 1
        start = add_months(anchor, n * step)
    end = add_months(anchor, (n + 1) * step)
    while end <= at:  # defensive; one step at most
        n += 1
        start, end = end, add_months(anchor, (n + 1) * step)
    return Window(start, end)


def day_window(at: datetime) -> Window:
    start = at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return Window(start, start + timedelta(days=1))


def week_window(at: datetime) -> Window:
    day = day_window(at).start
    start = day - timedelta(days=day.weekday())
    return Window(start, start + timedelta(days=7))


def month_window(at: datetime) -> Window:
    start = day_window(at).start.replace(day=1)
    return Window(start, add_months(start, 1))


def reset_window(
    reset: str,
    at: datetime,
    *,
    anchor: datetime | None,
    interval: str = "month",
) -> Window:
    """The reset window of kind `reset` containing `at`.

    `anchor` is the subscription's start; without a subscription, `billing_period` falls back
    to the calendar month and `never` to all time.
    """
    at = at.astimezone(UTC)
    if reset == "day":
        return day_window(at)
    if reset == "week":
        return week_window(at)
    if reset == "month":
        return month_window(at)
    if reset == "never":
        return Window(anchor or EPOCH, FOREVER)
    if anchor is None:
        return month_window(at)
    return billing_period_at(anchor, interval, at)
