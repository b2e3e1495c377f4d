"""DRF fields shared by the apps' serializers: money, bounded decimals, instants, URL-safe ids
(the one rule of each lives in core.bounds)."""

from django.conf import settings
from djmoney.money import Money
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from . import bounds
from .api import decimal_str, money_json

MONEY_SCHEMA = {
    "type": "object",
    "properties": {
        "amount": {"type": "string", "example": "50.00"},
        "currency": {"type": "string", "example": "USD"},
    },
    "required": ["amount", "currency"],
}


@extend_schema_field(MONEY_SCHEMA)
class MoneyJSONField(serializers.Field):
    """Money as `{"amount": "50.00", "currency": "USD"}`; the amount within bounds.DECIMAL_RULE
    and the column's own size (`max_digits`, `decimal_places`)."""

    default_error_messages = {
        "invalid": 'Money is {{"amount": "<decimal>", "currency": "<ISO code>"}}.',
        "amount": "The amount {problem}.",
        "currency": "Unsupported currency {currency}; use one of {choices}.",
    }

    def __init__(self, *, max_digits: int = 12, decimal_places: int = 2, **kwargs):
        self.max_digits, self.decimal_places = max_digits, decimal_places
        super().__init__(**kwargs)

    def to_representation(self, value):
        return money_json(value)

    def to_internal_value(self, data):
        if not isinstance(data, dict) or set(data) - {"amount", "currency"}:
            self.fail("invalid")
        try:
            amount = bounds.decimal_parse(data.get("amount"))
        except bounds.Refused as refused:
            self.fail("amount", problem=refused)
        if amount >= bounds.decimal_ceiling(self.max_digits, self.decimal_places) or (
            -amount.normalize().as_tuple().exponent > self.decimal_places
        ):
            problem = (
                f"must be below {bounds.decimal_ceiling(self.max_digits, self.decimal_places)}"
                f" with at most {self.decimal_places} decimal places"
            )
            self.fail("amount", problem=problem)
        currency = data.get("currency") or settings.DEFAULT_CURRENCY
        if not isinstance(currency, str) or currency.upper() not in settings.CURRENCIES:
            self.fail("currency", currency=currency, choices=", ".join(settings.CURRENCIES))
        return Money(amount, currency.upper())


@extend_schema_field(
    {
        "type": "string",
        "pattern": r"^[0-9]{1,15}(\.[0-9]{1,4})?$",
        "example": "2.5",
        "description": bounds.DECIMAL_RULE[0].upper() + bounds.DECIMAL_RULE[1:] + ".",
    }
)
class DecimalStringField(serializers.Field):
    """A decimal written as a JSON string within bounds.DECIMAL_RULE, never negative (`positive`:
    never zero either); answered as a string without trailing zeros."""

    default_error_messages = {"invalid": "This value {problem}."}

    def __init__(self, *, positive: bool = False, **kwargs):
        self.positive = positive
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        try:
            return bounds.decimal_parse(data, positive=self.positive)
        except bounds.Refused as refused:
            self.fail("invalid", problem=refused)

    def to_representation(self, value):
        return decimal_str(value)


class InstantField(serializers.DateTimeField):
    """An ISO 8601 date and time within bounds.INSTANT_RULE (what the periods represent);
    `future`: also still to come (bounds.future_check)."""

    def __init__(self, *, future: bool = False, **kwargs):
        self.future = future
        super().__init__(**kwargs)

    def to_internal_value(self, value):
        instant = super().to_internal_value(value)
        try:
            bounds.instant_check(instant)
        except bounds.Refused as refused:
            raise serializers.ValidationError(f"The date and time {refused}.") from None
        try:
            return bounds.future_check(self.field_name, instant) if self.future else instant
        except bounds.Refused as refused:
            raise serializers.ValidationError(str(refused)) from None


class UrlSafeIdField(serializers.CharField):
    """An id or key that appears in URLs: bounds.URL_SAFE_RULE."""

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", 255)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        try:
            return bounds.url_safe_check(value)
        except bounds.Refused as refused:
            raise serializers.ValidationError(f"This id {refused}.") from None
