"""Money and words: rounding to the minor unit, and the texts of amounts, quantities, days and
periods that invoices, pages and emails show. Pure functions, no database."""

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
    """`amount` rounded half-up (ties away from zero) to the currency's minor unit."""
    exponent = Decimal(1).scaleb(-currency_places(currency))
    return Money(Decimal(amount).quantize(exponent, rounding=ROUND_HALF_UP), str(currency))


def money_text(money: Money) -> str:
    """Money with as many decimals as it has (at least the currency's): `$0.0125`, `€50.00`."""
    return format_money(money, locale="en_US", currency_digits=False, decimal_quantization=False)


def quantity_text(value: Decimal | None, unit: str = "") -> str:
    """A quantity without trailing zeros, grouped by thousands: `87.5 GB`, `10,000`."""
    number = format(Decimal(value or 0).normalize(), ",f")
    return f"{number} {unit}".strip()


def day_text(at: dt.datetime) -> str:
    at = at.astimezone(dt.UTC)
    return f"{at:%b} {at.day}, {at.year}"


def period_text(start: dt.datetime | None, end: dt.datetime | None) -> str:
    if start is None:
        return ""
    if end is None:
        return f"since {day_text(start)}"
    return f"{day_text(start)} – {day_text(end)}"
