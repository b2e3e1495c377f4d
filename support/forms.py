"""Forms of the support pages. They parse input; the services (the same as the API's) validate
and write, and their errors come back onto these forms."""

import uuid

from django import forms

from catalog.forms import EntitlementValuesForm, FeatureChoiceField
from catalog.models import Feature, FeatureKind, TopUpPack
from core.bounds import validate_url_safe
from core.forms import ExactDecimalField, InstantField
from core.text import quantity_text
from customers.models import REVERSAL_REASON_MAX

from .selectors import PlanOption

DATETIME_WIDGET = forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")


class SearchForm(forms.Form):
    q = forms.CharField(
        required=False,
        max_length=200,
        label="Find a customer",
        widget=forms.TextInput(
            attrs={
                "type": "search",
                "placeholder": "Name, email or external id",
                "autocomplete": "off",
                "spellcheck": "false",
            }
        ),
    )


class PlanChoiceForm(forms.Form):
    """The plan to move to (or subscribe to); `options` are support.selectors.PlanOption."""

    plan = forms.ChoiceField(label="New plan")

    def __init__(self, *args, options=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.options = {option.plan.key: option for option in options}
        groups: dict[str, list] = {label: [] for label in PlanOption.GROUPS.values()}
        for key, option in self.options.items():
            groups[option.group].append((key, option.label))
        self.fields["plan"].choices = [("", "Choose a plan…")] + [
            (label, choices) for label, choices in groups.items() if choices
        ]

    @property
    def option(self):
        return self.options.get(self.cleaned_data.get("plan")) if self.is_valid() else None


class GrantForm(forms.Form):
    """Free units of a metered feature (a manual grant)."""

    feature = FeatureChoiceField(
        queryset=Feature.objects.filter(kind=FeatureKind.METERED).order_by("name"),
        to_field_name="key",
        empty_label="Choose a feature…",
    )
    quantity = ExactDecimalField(
        positive=True,
        max_digits=20,
        decimal_places=4,
        widget=forms.NumberInput(attrs={"step": "any", "inputmode": "decimal"}),
    )
    reason = forms.CharField(
        max_length=500, help_text="Why, for the history: the ticket or the goodwill."
    )
    expires_at = InstantField(
        future="expires_at",
        required=False,
        label="Expires (UTC)",
        help_text="Empty: never.",
        widget=DATETIME_WIDGET,
    )

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("Say why the units are granted.")
        return reason


class PackChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, pack: TopUpPack) -> str:
        amount = quantity_text(pack.quantity, pack.feature.unit)
        return f"{pack.name}: {amount} of {pack.feature.name} for {pack.price}"


class TopUpForm(forms.Form):
    """A paid top-up: the pack, and the idempotency key made when the form was shown, so that a
    double submit buys once."""

    pack = PackChoiceField(
        queryset=TopUpPack.objects.none(), to_field_name="key", empty_label="Choose a pack…"
    )
    idempotency_key = forms.CharField(
        widget=forms.HiddenInput, max_length=255, validators=[validate_url_safe]
    )

    def __init__(self, *args, packs=None, **kwargs):
        kwargs.setdefault("initial", {}).setdefault("idempotency_key", new_idempotency_key())
        super().__init__(*args, **kwargs)
        if packs is not None:
            self.fields["pack"].queryset = packs


def new_idempotency_key() -> str:
    return f"support-{uuid.uuid4().hex}"


class OverrideForm(forms.Form):
    """Which feature to override, why and when; the values come from an
    EntitlementValuesForm for the feature's kind."""

    feature = FeatureChoiceField(
        queryset=Feature.objects.order_by("name"),
        to_field_name="key",
        empty_label="Choose a feature…",
    )
    reason = forms.CharField(max_length=500, help_text="The deal or the reason, e.g. the contract.")
    starts_at = InstantField(
        required=False, label="Starts (UTC)", help_text="Empty: now.", widget=DATETIME_WIDGET
    )
    ends_at = InstantField(
        future="ends_at",
        required=False,
        label="Ends (UTC)",
        help_text="Empty: until ended.",
        widget=DATETIME_WIDGET,
    )

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("Say why: the deal or the reason for the override.")
        return reason


def override_values_form(feature, currency: str, data=None) -> EntitlementValuesForm:
    return EntitlementValuesForm(data, prefix="ov", feature=feature, currency=currency)


class InvoiceVoidForm(forms.Form):
    """Support's confirmation of "Void (and refund)": why, for the invoice's history."""

    reason = forms.CharField(
        max_length=500,
        label="Reason",
        help_text="Kept on the invoice and in its history; the customer sees it.",
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )


class UsageReverseForm(forms.Form):
    """Support's confirmation of "Reverse" on a usage event: why, for its history."""

    reason = forms.CharField(
        max_length=REVERSAL_REASON_MAX,
        label="Reason",
        help_text="Kept with the reversal and in the customer's history.",
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("Say why the usage is given back.")
        return reason
