"""Form fields for what every page (and the admin) accepts: the bounds of bounds.py, with the
same rules and messages as the API's fields."""

from decimal import Decimal

from django import forms
from django.core.exceptions import ValidationError
from djmoney.forms import MoneyField as MoneyFormField

from . import bounds


class ExactDecimalField(forms.DecimalField):
    """A decimal within bounds.DECIMAL_RULE, never negative (`positive`: never zero either).
    Text is taken as typed: spaces, exponents, separators, NaN and Infinity are refused, as
    the API refuses them. Also the admin's field for every model DecimalField."""

    def __init__(self, *, positive: bool = False, **kwargs):
        self.positive = positive
        kwargs.pop("min_value", None)  # the rule itself refuses negatives
        super().__init__(**kwargs)
        if "step" not in self.widget.attrs and isinstance(self.widget, forms.NumberInput):
            self.widget.attrs["step"] = "any"

    def to_python(self, value):
        if value in self.empty_values:
            return None
        if not isinstance(value, Decimal):
            value = str(value)
        try:
            return bounds.decimal_parse(value, positive=self.positive)
        except bounds.Refused as refused:
            raise ValidationError(f"This value {refused}.", code="invalid") from None


class InstantField(forms.DateTimeField):
    """A date and time within bounds.INSTANT_RULE (what the periods represent); `future`: also
    still to come (bounds.future_check; the field's name says which rule)."""

    default_validators = [bounds.validate_instant]

    def __init__(self, *, future: str | None = None, **kwargs):
        self.future = future
        super().__init__(**kwargs)

    def validate(self, value):
        super().validate(value)
        if self.future:
            future_validate(self.future, value)


def future_validate(field: str, value) -> None:
    """bounds.future_check as a form error (pages and the admin)."""
    try:
        bounds.future_check(field, value)
    except bounds.Refused as refused:
        raise ValidationError(str(refused), code="past") from None


def admin_decimal_overrides() -> dict:
    """`formfield_overrides` of the admin classes that edit decimals: every DecimalField takes
    the pages' strict field, and so does the amount of every money field."""
    from django.db import models
    from djmoney.models.fields import MoneyField

    return {
        MoneyField: {"form_class": ExactMoneyField},
        models.DecimalField: {"form_class": ExactDecimalField},
    }


class ExactMoneyField(MoneyFormField):
    """django-money's field (amount and currency) with the amount read by ExactDecimalField.
    Its own amount field is Django's DecimalField, which strips spaces and reads "1e3",
    "+5", "5." and "1_000" as numbers: the admin stored what the API refuses."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        loose, currency = self.fields
        exact = ExactDecimalField(
            max_digits=loose.max_digits,
            decimal_places=loose.decimal_places,
            required=loose.required,
            widget=loose.widget,  # the MoneyWidget renders this very widget
        )
        exact.error_messages = loose.error_messages
        self.fields = (exact, currency)
