"""Forms of the plan editor. They parse and shape input; the services validate and write.

`EntitlementValuesForm` is shared with the support pages (a customer override has the same
values as a plan entitlement): it shows the fields of the feature's kind, or every field,
grouped by kind, when no feature is chosen yet (the form then works without JavaScript).
"""

from decimal import Decimal
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from djmoney.money import Money

from core.forms import ExactDecimalField

from .models import DEFAULT_NOTIFY_AT, Enforcement, Feature, FeatureKind, Reset

METERED_FIELDS = ("limit", "unlimited", "reset", "enforcement", "overage_price", "notify_at")
FIELDS_BY_KIND = {
    FeatureKind.BOOLEAN: ("enabled",),
    FeatureKind.METERED: METERED_FIELDS,
    FeatureKind.CONFIG: ("value",),
}
# The models' choices, in words short enough for a select in a narrow column.
RESET_CHOICES = [
    (Reset.BILLING_PERIOD, "Each billing period"),
    (Reset.MONTH, "Each calendar month"),
    (Reset.WEEK, "Each week (Monday)"),
    (Reset.DAY, "Each day"),
    (Reset.NEVER, "Never"),
]
ENFORCEMENT_CHOICES = [
    (Enforcement.HARD, "Hard: deny"),
    (Enforcement.SOFT, "Soft: bill overage"),
]
KIND_LABELS = {
    FeatureKind.METERED: "Metered features",
    FeatureKind.BOOLEAN: "Gates",
    FeatureKind.CONFIG: "Config values",
}


def notify_at_parse(text: str) -> list[int]:
    """`"80, 100"` -> `[80, 100]`; raises ValidationError for anything but whole percentages."""
    parts = [p.strip().rstrip("%") for p in (text or "").replace(";", ",").split(",")]
    parts = [p for p in parts if p]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValidationError("Whole percentages separated by commas, e.g. 80, 100.") from None
    if any(not 0 < v <= 100 for v in values):
        raise ValidationError("Each threshold is a percentage from 1 to 100.")
    return sorted(set(values))


def plain_decimal(value: Decimal | None) -> Decimal | None:
    """100.0000 -> 100, 0.1250 -> 0.125: no trailing zeros and no exponent (1E+2)."""
    if value is None:
        return None
    value = value.normalize()
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value


def notify_at_text(values) -> str:
    return ", ".join(str(v) for v in values or [])


class EntitlementValuesForm(forms.Form):
    """The values of one feature for a plan (or an override): the fields of its kind.

    `values()` gives the keyword arguments of catalog.services.plan_add_entitlement /
    plan_entitlement_update (and customers.services.override_create)."""

    enabled = forms.BooleanField(
        required=False, initial=True, label="Enabled", help_text="The gate is open."
    )
    limit = ExactDecimalField(
        required=False,
        max_digits=20,
        decimal_places=4,
        label="Limit",
        widget=forms.NumberInput(attrs={"step": "any", "inputmode": "decimal"}),
    )
    unlimited = forms.BooleanField(required=False, label="Unlimited")
    reset = forms.ChoiceField(choices=RESET_CHOICES, initial=Reset.BILLING_PERIOD, label="Resets")
    enforcement = forms.ChoiceField(
        choices=ENFORCEMENT_CHOICES, initial=Enforcement.HARD, label="Enforcement"
    )
    overage_price = ExactDecimalField(
        required=False,
        max_digits=12,
        decimal_places=4,
        label="Overage price per unit",
        help_text="Soft limits only.",
        widget=forms.NumberInput(attrs={"step": "any", "inputmode": "decimal"}),
    )
    notify_at = forms.CharField(
        required=False,
        initial=notify_at_text(DEFAULT_NOTIFY_AT),
        label="Notify at (%)",
        help_text="Thresholds, e.g. 80, 100.",
    )
    value = forms.CharField(required=False, max_length=255, label="Value")
    show_on_invoice = forms.BooleanField(required=False, label="Show on invoice")

    def __init__(self, *args, feature: Feature | None = None, currency: str = "USD", **kwargs):
        super().__init__(*args, **kwargs)
        self.feature = feature
        self.currency = currency
        if feature is not None:
            keep = {*FIELDS_BY_KIND[feature.kind], "show_on_invoice"}
            for name in list(self.fields):
                if name in EntitlementValuesForm.base_fields and name not in keep:
                    del self.fields[name]
            if feature.unit and "limit" in self.fields:
                self.fields["limit"].label = f"Limit ({feature.unit})"
                self.fields["overage_price"].label = f"Overage price per {feature.unit}"
        if "overage_price" in self.fields:
            self.fields["overage_price"].label += f" ({currency})"

    @classmethod
    def initial_from(cls, entitlement) -> dict[str, Any]:
        """Initial data from a PlanEntitlement or an EntitlementOverride."""
        price = entitlement.overage_price
        return {
            "enabled": entitlement.enabled,
            "limit": plain_decimal(entitlement.limit),
            "unlimited": entitlement.unlimited,
            "reset": entitlement.reset,
            "enforcement": entitlement.enforcement,
            "overage_price": plain_decimal(price.amount) if price is not None else None,
            "notify_at": notify_at_text(entitlement.notify_at),
            "value": entitlement.value,
            "show_on_invoice": entitlement.show_on_invoice,
        }

    def kind_groups(self) -> list[tuple[str, list]]:
        """(label, bound fields) per kind, for the form without a chosen feature."""
        groups = []
        for kind, names in FIELDS_BY_KIND.items():
            fields = [self[name] for name in names if name in self.fields]
            if fields:
                groups.append((KIND_LABELS[kind], fields))
        return groups

    def clean_notify_at(self) -> list[int]:
        return notify_at_parse(self.cleaned_data.get("notify_at", ""))

    def clean(self):
        cleaned = super().clean()
        if self.feature is None:
            raise ValidationError("Choose a feature.")
        return cleaned

    def values(self) -> dict[str, Any]:
        """The service's keyword arguments for the feature's kind (valid forms only)."""
        data = self.cleaned_data
        names = [*FIELDS_BY_KIND[self.feature.kind], "show_on_invoice"]
        values = {name: data.get(name) for name in names}
        if self.feature.kind == FeatureKind.METERED:
            if values["unlimited"]:
                values["limit"] = None  # a limit typed before ticking "unlimited" is moot
            price = values["overage_price"]
            values["overage_price"] = Money(price, self.currency) if price is not None else None
            values["notify_at"] = data.get("notify_at") or []
        elif self.feature.kind == FeatureKind.CONFIG:
            values["value"] = (values["value"] or "").strip()
        return values


def errors_to_form(form: forms.Form, error: Exception) -> None:
    """Shows a service's ValidationError (by field where the form has the field) or a domain
    error's message on the form."""
    if isinstance(error, ValidationError) and hasattr(error, "error_dict"):
        for field, messages in error.message_dict.items():
            target = field if field in form.fields else None
            for message in messages:
                form.add_error(target, message)
    elif isinstance(error, ValidationError):
        for message in error.messages:
            form.add_error(None, message)
    else:
        form.add_error(None, getattr(error, "message", str(error)))


class FeatureChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Feature) -> str:
        kind = {"boolean": "gate", "metered": obj.unit or "metered", "config": "value"}
        return f"{obj.name} ({kind.get(obj.kind, obj.kind)})"


class AddFeatureForm(forms.Form):
    """Which feature to add to a plan; its values come from an EntitlementValuesForm."""

    feature = FeatureChoiceField(
        queryset=Feature.objects.none(),
        to_field_name="key",
        empty_label="Choose a feature…",
        label="Feature",
    )

    def __init__(self, *args, features=None, **kwargs):
        super().__init__(*args, **kwargs)
        if features is not None:
            self.fields["feature"].queryset = features
