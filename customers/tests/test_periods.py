"""Period arithmetic: billing periods keep the anchor day (clamped to short months and restored
after), reset windows of every kind, all in UTC."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from customers.periods import (
    EPOCH,
    FOREVER,
    Window,
    add_months,
    billing_period_at,
    reset_window,
)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- add_months ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("months", "expected"),
    [
        (1, utc(2025, 2, 28, 9, 30)),  # clamped to the short month
        (2, utc(2025, 3, 31, 9, 30)),  # and restored after it
        (3, utc(2025, 4, 30, 9, 30)),
        (11, utc(2025, 12, 31, 9, 30)),
        (12, utc(2026, 1, 31, 9, 30)),  # across the year end
        (13, utc(2026, 2, 28, 9, 30)),
        (-1, utc(2024, 12, 31, 9, 30)),  # backwards too
        (-11, utc(2024, 2, 29, 9, 30)),  # a leap year's February
    ],
)
def test_add_months_clamps_the_anchor_day_and_restores_it(months, expected):
    assert add_months(utc(2025, 1, 31, 9, 30), months) == expected


def test_add_months_gives_february_29_in_a_leap_year():
    assert add_months(utc(2024, 1, 31), 1) == utc(2024, 2, 29)
    assert add_months(utc(2024, 1, 30), 1) == utc(2024, 2, 29)
    assert add_months(utc(2023, 1, 29), 1) == utc(2023, 2, 28)


def test_add_months_keeps_the_time_of_day_and_zone():
    moved = add_months(utc(2025, 5, 15, 23, 59, 59, 999999), 1)

    assert moved == utc(2025, 6, 15, 23, 59, 59, 999999)
    assert moved.tzinfo is UTC


# --- billing periods -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (utc(2025, 1, 31, 10), (utc(2025, 1, 31, 10), utc(2025, 2, 28, 10))),
        (utc(2025, 2, 15), (utc(2025, 1, 31, 10), utc(2025, 2, 28, 10))),
        (utc(2025, 2, 28, 9, 59), (utc(2025, 1, 31, 10), utc(2025, 2, 28, 10))),
        (utc(2025, 2, 28, 10), (utc(2025, 2, 28, 10), utc(2025, 3, 31, 10))),  # end exclusive
        (utc(2025, 3, 31, 9), (utc(2025, 2, 28, 10), utc(2025, 3, 31, 10))),
        (utc(2025, 4, 1), (utc(2025, 3, 31, 10), utc(2025, 4, 30, 10))),
        (utc(2025, 12, 31, 11), (utc(2025, 12, 31, 10), utc(2026, 1, 31, 10))),
        (utc(2028, 2, 29, 12), (utc(2028, 2, 29, 10), utc(2028, 3, 31, 10))),  # leap year
    ],
)
def test_monthly_periods_of_a_january_31_anchor(at, expected):
    assert billing_period_at(utc(2025, 1, 31, 10), "month", at) == Window(*expected)


def test_monthly_periods_of_a_february_29_anchor_come_back_to_the_29th():
    anchor = utc(2024, 2, 29)

    assert billing_period_at(anchor, "month", utc(2024, 3, 10)) == (
        utc(2024, 2, 29),
        utc(2024, 3, 29),
    )
    assert billing_period_at(anchor, "month", utc(2025, 2, 28)) == (
        utc(2025, 2, 28),
        utc(2025, 3, 29),
    )
    assert billing_period_at(anchor, "month", utc(2025, 2, 27)) == (
        utc(2025, 1, 29),
        utc(2025, 2, 28),
    )


def test_monthly_periods_tile_time_without_gaps_for_two_years():
    anchor = utc(2024, 1, 31, 8)
    window = billing_period_at(anchor, "month", anchor)
    for _ in range(24):
        following = billing_period_at(anchor, "month", window.end)
        assert following.start == window.end
        assert billing_period_at(anchor, "month", window.end - timedelta(microseconds=1)) == window
        window = following
    assert window.start == utc(2026, 1, 31, 8)


def test_yearly_periods_of_a_february_29_anchor_are_clamped_and_restored():
    anchor = utc(2024, 2, 29, 12)

    assert billing_period_at(anchor, "year", utc(2024, 6, 1)) == (anchor, utc(2025, 2, 28, 12))
    assert billing_period_at(anchor, "year", utc(2025, 3, 1)) == (
        utc(2025, 2, 28, 12),
        utc(2026, 2, 28, 12),
    )
    assert billing_period_at(anchor, "year", utc(2028, 2, 29, 12)) == (
        utc(2028, 2, 29, 12),
        utc(2029, 2, 28, 12),
    )
    assert billing_period_at(anchor, "year", utc(2028, 2, 29, 11)) == (
        utc(2027, 2, 28, 12),
        utc(2028, 2, 29, 12),
    )


def test_yearly_periods_of_a_january_31_anchor():
    anchor = utc(2025, 1, 31)

    assert billing_period_at(anchor, "year", utc(2025, 12, 31)) == (anchor, utc(2026, 1, 31))
    assert billing_period_at(anchor, "year", utc(2026, 1, 31)) == (
        utc(2026, 1, 31),
        utc(2027, 1, 31),
    )


def test_before_the_anchor_is_the_first_period():
    anchor = utc(2025, 3, 15)

    assert billing_period_at(anchor, "month", utc(2025, 1, 1)) == (anchor, utc(2025, 4, 15))


# --- reset windows ---------------------------------------------------------------------------


def test_day_window_is_the_utc_day():
    assert reset_window("day", utc(2024, 2, 28, 23, 59), anchor=None) == (
        utc(2024, 2, 28),
        utc(2024, 2, 29),
    )
    assert reset_window("day", utc(2024, 2, 29, 0, 0), anchor=None) == (
        utc(2024, 2, 29),
        utc(2024, 3, 1),
    )


def test_day_window_converts_other_zones_to_utc():
    tokyo = timezone(timedelta(hours=9))

    # 08:00 on Mar 1 in Tokyo is still Feb 29 in UTC.
    assert reset_window("day", datetime(2024, 3, 1, 8, tzinfo=tokyo), anchor=None) == (
        utc(2024, 2, 29),
        utc(2024, 3, 1),
    )


@pytest.mark.parametrize(
    "at",
    [utc(2025, 12, 29), utc(2025, 12, 31, 12), utc(2026, 1, 1), utc(2026, 1, 4, 23, 59)],
)
def test_week_window_runs_from_monday_across_the_year_end(at):
    # Monday Dec 29, 2025 to Monday Jan 5, 2026.
    assert reset_window("week", at, anchor=None) == (utc(2025, 12, 29), utc(2026, 1, 5))


def test_week_window_starts_on_monday_at_midnight():
    assert reset_window("week", utc(2026, 1, 5), anchor=None).start == utc(2026, 1, 5)
    assert reset_window("week", utc(2026, 1, 4, 23, 59, 59), anchor=None).start == utc(2025, 12, 29)


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (utc(2024, 2, 29, 23), (utc(2024, 2, 1), utc(2024, 3, 1))),
        (utc(2025, 2, 28, 23), (utc(2025, 2, 1), utc(2025, 3, 1))),
        (utc(2025, 12, 31, 23, 59), (utc(2025, 12, 1), utc(2026, 1, 1))),
        (utc(2026, 1, 1), (utc(2026, 1, 1), utc(2026, 2, 1))),
    ],
)
def test_month_window_is_the_calendar_month(at, expected):
    assert reset_window("month", at, anchor=utc(2023, 1, 31)) == expected


def test_never_window_runs_from_the_subscription_start_for_ever():
    anchor = utc(2025, 1, 31)

    assert reset_window("never", utc(2030, 6, 1), anchor=anchor) == (anchor, FOREVER)
    assert reset_window("never", utc(2030, 6, 1), anchor=None) == (EPOCH, FOREVER)


def test_billing_period_window_follows_the_anchor_and_falls_back_to_the_calendar_month():
    anchor = utc(2025, 1, 31, 10)

    assert reset_window("billing_period", utc(2025, 3, 1), anchor=anchor) == (
        utc(2025, 2, 28, 10),
        utc(2025, 3, 31, 10),
    )
    assert reset_window("billing_period", utc(2025, 3, 1), anchor=anchor, interval="year") == (
        anchor,
        utc(2026, 1, 31, 10),
    )
    assert reset_window("billing_period", utc(2025, 3, 1), anchor=None) == (
        utc(2025, 3, 1),
        utc(2025, 4, 1),
    )
