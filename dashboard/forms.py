from django import forms

from core.bounds import validate_url_safe


class TopUpConfirmForm(forms.Form):
    """The confirm step of a top-up. The key is made when the form is shown, so submitting
    it twice (a double click, a resubmit) names the same purchase and buys once."""

    idempotency_key = forms.CharField(
        max_length=255, widget=forms.HiddenInput, validators=[validate_url_safe]
    )


class PlanChangeConfirmForm(forms.Form):
    """The confirm step of a plan change; `from_plan` is the plan the preview was made from,
    so a stale confirm (the plan changed meanwhile, e.g. a double click) is noticed."""

    from_plan = forms.SlugField(max_length=64, widget=forms.HiddenInput)
