"""What the product accepts, whatever the path (API, page, admin, command) and the database
(DESIGN.md "Numbers, dates and the embedded database").

- Decimals: plain text (`"2.5"`), finite, at most 15 significant digits and 4 decimal places.
  SQLite keeps a decimal as a float and reads it back through a 15-digit context, so anything
  longer would come back changed, or not at all (`decimal.InvalidOperation` on load). The same
  bound holds in the model (validators), the serializers, the forms and a database check.
- Instants: within the years that the period arithmetic represents (`INSTANT_MIN` to
  `INSTANT_MAX`); a usage event from the year 9999 overflowed the periods.
- Ids and keys that appear in URLs: a URL-safe character set, so every page that names them
  can be reached again.
- Text: no NUL byte (PostgreSQL cannot store one; SQLite would, and the two must agree).
"""

import datetime as dt
import re
from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError
from django.db.models import Q
from django.utils import timezone

MAX_DIGITS = 15
MAX_PLACES = 4
DECIMAL_RULE = f'a decimal such as "2.5": at most {MAX_DIGITS} digits, {MAX_PLACES} after the point'
_PLAIN_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?\Z")

INSTANT_MIN = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
INSTANT_MAX = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)  # exclusive
INSTANT_RULE = "between 2000-01-01T00:00:00Z and 2099-12-31T23:59:59Z"

URL_SAFE_RULE = "letters, digits and - _ . ~ : @ only (no spaces or slashes)"
_URL_SAFE = re.compile(r"[A-Za-z0-9._~:@-]+\Z")


class Refused(ValueError):
    """An input outside the bounds; `str()` is a sentence for the user (without the field)."""


def decimal_problem(value: Decimal) -> str | None:
    """Why `value` cannot be stored exactly on both databases, or None when it can."""
    if not value.is_finite():
        return f"must be {DECIMAL_RULE} (not NaN or infinity)"
    normal = value.normalize()
    places = max(0, -normal.as_tuple().exponent)
    whole = abs(value).to_integral_value(rounding="ROUND_FLOOR")
    whole_digits = len(str(whole)) if whole else 0
    if places > MAX_PLACES:
        return f"has more than {MAX_PLACES} decimal places; it must be {DECIMAL_RULE}"
    if whole_digits + places > MAX_DIGITS:
        return f"has more than {MAX_DIGITS} digits; it must be {DECIMAL_RULE}"
    return None


def decimal_parse(raw, *, positive: bool = False) -> Decimal:
    """The exact, non-negative decimal written in `raw` (text; a Decimal from our own code).

    Refused (`Refused`): anything but plain digits with an optional point (whitespace,
    exponents, `NaN`, `Infinity`, hex, thousands separators, signs, JSON numbers, booleans,
    lists), negatives, zero when `positive`, and values outside the bound.
    """
    if isinstance(raw, Decimal):
        value = raw
    elif isinstance(raw, str):
        if not _PLAIN_DECIMAL.match(raw):
            raise Refused(
                f"must be {DECIMAL_RULE} (digits and an optional point: no spaces, signs,"
                " exponents, separators, NaN or Infinity)"
            )
        value = Decimal(raw)
    else:
        raise Refused(f"must be {DECIMAL_RULE}, written as a JSON string")
    problem = decimal_problem(value)
    if problem:
        raise Refused(problem)
    if value.is_signed():  # "-0" too: a sign is never part of a quantity
        raise Refused("must not be negative")
    if positive and value == 0:
        raise Refused("must be greater than zero")
    return value


def validate_decimal(value) -> None:
    """Model validator for every decimal (and money amount) the product accepts."""
    amount = getattr(value, "amount", value)  # djmoney passes Money
    if amount is None:
        return
    try:
        problem = decimal_problem(Decimal(amount))
    except (InvalidOperation, TypeError, ValueError):
        problem = f"must be {DECIMAL_RULE}"
    if problem:
        raise ValidationError(f"This value {problem}.", code="invalid")


def decimal_ceiling(max_digits: int, decimal_places: int) -> Decimal:
    """The magnitude a column's values stay below: what both databases store and read back."""
    return Decimal(10) ** min(MAX_DIGITS, max_digits - decimal_places)


def decimal_bound_q(field: str, *, max_digits: int, decimal_places: int) -> Q:
    """The database check of a decimal column (null passes, as a CHECK lets NULL through)."""
    ceiling = decimal_ceiling(max_digits, decimal_places)
    return Q(**{f"{field}__lt": ceiling, f"{field}__gt": -ceiling})


def instant_check(value: dt.datetime) -> dt.datetime:
    """`value` if the periods can represent it; Refused otherwise."""
    if not INSTANT_MIN <= value < INSTANT_MAX:
        raise Refused(f"must be {INSTANT_RULE}")
    return value


def validate_instant(value) -> None:
    if value is None:
        return
    try:
        instant_check(value)
    except Refused as refused:
        raise ValidationError(f"The date and time {refused}.", code="invalid") from None


FUTURE_RULES = {
    "ends_at": "The end must be in the future: this override would never apply.",
    "expires_at": "The expiry must be in the future: these units would never count.",
}


def future_check(field: str, value: dt.datetime | None) -> dt.datetime | None:
    """`value` if it is still to come. Checked where a person or a client gives the date (API,
    forms, admin), not in the models: services also run at a given time (`at`), and a row that
    ended in the past stays valid."""
    if value is not None and value <= timezone.now():
        raise Refused(FUTURE_RULES[field])
    return value


def url_safe_check(value: str) -> str:
    if not isinstance(value, str) or not _URL_SAFE.match(value) or value in {".", ".."}:
        raise Refused(f"may contain {URL_SAFE_RULE}")
    return value


def validate_url_safe(value) -> None:
    try:
        url_safe_check(value)
    except Refused as refused:
        raise ValidationError(f"This id {refused}.", code="invalid") from None


def text_unstorable(value) -> bool:
    """True when `value` (text, or JSON made of dicts and lists) holds a NUL character or a lone
    surrogate: text PostgreSQL cannot store."""
    if isinstance(value, str):
        if "\x00" in value:
            return True
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(text_unstorable(k) or text_unstorable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(text_unstorable(v) for v in value)
    return False
