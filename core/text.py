"""The words of numbers, money and days that pages, invoices and emails show: one function per
rule (STYLE.md), pure, no database. The API's wire format is core.api's (`decimal_str`,
`time_str`, `money_json`)."""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal

from djmoney.money import Money
from moneyed import get_currency
from moneyed.l10n import format_money


def currency_places(currency: str) -> int:
    """Decimal places of the currency's minor unit: 2 for USD and EUR, 0 for JPY."""
    return len(str(get_currency(str(currency)).sub_unit)) - 1


def money_round(amount: Decimal, currency: str) -> Money:
    """`amount` rounded half-up (ties away from zero) to the currency's minor unit: what an
    invoice line charges, and what an email says it will."""
    exponent = Decimal(1).scaleb(-currency_places(currency))
    return Money(Decimal(amount).quantize(exponent, rounding=ROUND_HALF_UP), str(currency))


def money_text(money: Money | None) -> str:
    """`$50.00`, `$0.0125`: as many decimals as it has, at least the currency's ("" for
    none). An amount charged is rounded first (`money_round`); a unit price may be finer."""
    if money is None:
        return ""
    return format_money(money, locale="en_US", currency_digits=False, decimal_quantization=False)


def quantity_text(value: Decimal | None, unit: str = "") -> str:
    """`87.5 GB`, `1,000 GB`: no trailing zeros, grouped by thousands."""
    number = format(Decimal(value or 0).normalize(), ",f")
    return f"{number} {unit}".strip()


def day_text(at: dt.datetime | None) -> str:
    """`Dec 1, 2026` (UTC); "" for none."""
    if at is None:
        return ""
    at = at.astimezone(dt.UTC)
    return f"{at:%b} {at.day}, {at.year}"


def period_text(start: dt.datetime | None, end: dt.datetime | None) -> str:
    """`Nov 1, 2026 – Dec 1, 2026`, or `since Nov 1, 2026` when it has no end."""
    if start is None:
        return ""
    if end is None:
        return f"since {day_text(start)}"
    return f"{day_text(start)} – {day_text(end)}"
