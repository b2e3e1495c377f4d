"""The plan editor for product managers (HTMX): plans, a plan's entitlement table edited
inline, "add feature", and the plan comparison as end customers see it.

One template per page with named partials; an htmx request gets the partial, any other the
whole page, so every action also works as a plain POST followed by a redirect. Writes go
through catalog.services; their ValidationErrors come back as form errors.
"""

import copy
from decimal import Decimal, InvalidOperation
from types import SimpleNamespace

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from core.errors import DomainError
from core.text import quantity_text

from . import selectors, services
from .forms import (
    AddFeatureForm,
    EntitlementValuesForm,
    errors_to_form,
)
from .models import Plan, PlanEntitlement, PlanStatus, VersionStatus
from .pages import (
    PLAN_PAGE,
    VersionLocked,
    add_values_form,
    chosen_feature,
    edit_row_context,
    editable_or_409,
    editor_context,
    entitlement_get,
    locked_page,
    plan_get,
    product_manager_required,
    reach_sentence,
    row_context,
    row_url,
    version_forms,
    version_get,
    version_reach_text,
    version_url,
)


@product_manager_required
def plan_list(request: HttpRequest) -> HttpResponse:
    plans = [
        {"plan": plan, "price": selectors.price_text(plan)}
        for plan in selectors.plan_list_for_editor()
    ]
    return render(request, "catalog/plan_list.html", {"plans": plans})


@product_manager_required
def plan_detail(request: HttpRequest, key: str) -> HttpResponse:
    plan = plan_get(key)
    return render(request, PLAN_PAGE, editor_context(request, plan))


@product_manager_required
def entitlement_row(request: HttpRequest, key: str, pk: int) -> HttpResponse:
    """One row as shown (htmx: "Cancel" on an edited row); the page otherwise."""
    plan = plan_get(key)
    entitlement = entitlement_get(plan, pk)
    if not request.htmx:
        return redirect(row_url(plan, entitlement))
    return render(
        request, f"{PLAN_PAGE}#entitlement-row", {"plan": plan, **_one(plan, entitlement)}
    )


def _one(plan: Plan, entitlement: PlanEntitlement) -> dict:
    # The row comes back after an inline edit: keyboard focus returns to its Edit link.
    editable = entitlement.version.status != VersionStatus.SUPERSEDED
    return {"row": row_context(entitlement, plan), "focus_row": True, "editable": editable}


def _lowering(plan: Plan, entitlement: PlanEntitlement, values: dict) -> dict | None:
    """Before an in-place edit lowers a limit of the published version: whom it reaches and how
    many of them are already over the new limit (None when it does not lower one). Raises the
    model's ValidationError for values that could not be saved."""
    if entitlement.version.status != VersionStatus.PUBLISHED or not entitlement.feature.is_metered:
        return None
    candidate = copy.copy(entitlement)
    for name, value in values.items():
        setattr(candidate, name, value)
    candidate.full_clean()
    if not selectors.limit_lowered(entitlement, SimpleNamespace(**values)):
        return None
    feature = entitlement.feature
    reach = selectors.plan_change_reach(plan=plan, feature=feature)
    over = selectors.subscribers_over(
        version=entitlement.version, feature=feature, limit=values["limit"]
    )
    before = (
        "unlimited" if entitlement.unlimited else quantity_text(entitlement.limit, feature.unit)
    )
    after = quantity_text(values["limit"], feature.unit)
    n = reach.affected
    text = (
        f"Lowering {feature.name} from {before} to {after} applies at once to {n} "
        f"subscriber{'s' if n != 1 else ''}: {over} of them "
        f"{'is' if over == 1 else 'are'} already over {after}."
    )
    return {"text": text, "subscribers": n, "over": over, "limit": values["limit"]}


LOWER_CONFIRM = "confirm_lower"


@product_manager_required
@require_http_methods(["GET", "POST"])
def entitlement_edit(request: HttpRequest, key: str, pk: int) -> HttpResponse:
    """GET: the row as a form (with the number of subscribers it reaches). POST: saves through
    plan_entitlement_update; the row as shown again, and a message saying whom it reached.
    Lowering a limit of the published version first shows how many subscribers it reaches and
    how many are already over it; saving then takes a second POST that confirms that limit."""
    plan = plan_get(key)
    entitlement = entitlement_get(plan, pk)
    try:
        editable_or_409(entitlement)
    except VersionLocked as error:
        return locked_page(request, error)
    prefix = f"e{entitlement.pk}"
    form = EntitlementValuesForm(
        request.POST if request.method == "POST" else None,
        prefix=prefix,
        feature=entitlement.feature,
        currency=str(plan.price.currency),
        initial=EntitlementValuesForm.initial_from(entitlement),
    )
    lowering = None
    if request.method == "POST" and form.is_valid():
        values = form.values()
        try:
            # Valid values first: a warning about a limit that cannot be saved would mislead.
            lowering = _lowering(plan, entitlement, values)
        except ValidationError as error:
            errors_to_form(form, error)
        confirmed = lowering and _confirmed(request.POST.get(LOWER_CONFIRM), lowering["limit"])
        if form.is_valid() and (lowering is None or confirmed):
            try:
                entitlement = services.plan_entitlement_update(entitlement=entitlement, **values)
            except (ValidationError, DomainError) as error:
                errors_to_form(form, error)
            else:
                return _saved(request, plan, entitlement)
    if request.htmx:
        # The form row replaces the Edit link that had the focus: its first field takes it.
        first = next(iter(form.fields.values()))
        first.widget.attrs["autofocus"] = True
        return render(
            request,
            f"{PLAN_PAGE}#entitlement-form-row",
            {"plan": plan, "row": edit_row_context(plan, entitlement, form, lowering)},
        )
    context = editor_context(
        request, plan, version=entitlement.version, editing=(entitlement.pk, form, lowering)
    )
    if entitlement.version.status != VersionStatus.PUBLISHED:
        context.update(version_forms(entitlement.version))
    return render(request, PLAN_PAGE, context)


def _confirmed(posted: str | None, limit: Decimal) -> bool:
    """The PM confirmed this very limit (a different one is warned about again)."""
    try:
        return Decimal(posted or "") == limit
    except InvalidOperation:
        return False


def _saved(request, plan: Plan, entitlement: PlanEntitlement) -> HttpResponse:
    if entitlement.version.is_draft:
        text = f"Saved {entitlement.feature.name} in draft version {entitlement.version.number}."
    else:
        reach = selectors.plan_change_reach(plan=plan, feature=entitlement.feature)
        text = f"Saved {entitlement.feature.name} on {plan.name}. " + reach_sentence(
            reach, entitlement.feature
        ).replace("This change applies", "It applies")
    messages.success(request, text)
    if request.htmx:
        entitlement = entitlement_get(plan, entitlement.pk)
        return render(
            request,
            f"{PLAN_PAGE}#entitlement-saved",
            {"plan": plan, **_one(plan, entitlement)},
        )
    return redirect(row_url(plan, entitlement))


@product_manager_required
@require_http_methods(["GET", "POST"])
def entitlement_remove(request: HttpRequest, key: str, pk: int) -> HttpResponse:
    """GET: a confirmation page (htmx asks with hx-confirm instead). POST: removes it."""
    plan = plan_get(key)
    entitlement = entitlement_get(plan, pk)
    try:
        editable_or_409(entitlement)
    except VersionLocked as error:
        return locked_page(request, error)
    version = entitlement.version
    reach = selectors.plan_change_reach(plan=plan, feature=entitlement.feature)
    reach_text = version_reach_text(plan, version, entitlement.feature)
    if request.method == "POST":
        name = entitlement.feature.name
        services.plan_entitlement_remove(entitlement=entitlement)
        if version.is_draft:
            text = f"Removed {name} from draft version {version.number}."
        else:
            text = f"Removed {name} from {plan.name}. " + reach_sentence(
                reach, entitlement.feature
            ).replace("This change applies", "It applies")
        messages.success(request, text)
        if request.htmx:
            return render(request, f"{PLAN_PAGE}#entitlement-removed", {"plan": plan})
        return redirect(version_url(version))
    return render(
        request,
        "catalog/entitlement_remove.html",
        {
            "plan": plan,
            "entitlement": entitlement,
            "back_url": row_url(plan, entitlement),
            "reach_text": reach_text,
        },
    )


@product_manager_required
@require_http_methods(["GET", "POST"])
def entitlement_add(request: HttpRequest, key: str, number: int | None = None) -> HttpResponse:
    """GET (htmx, when the feature select changes): the value fields of that feature's kind and
    whom adding it reaches. POST: adds it through plan_add_entitlement, to the published
    version (in place) or, with `number`, to a draft."""
    plan = plan_get(key)
    version = version_get(plan, number) if number else selectors.plan_version_current(plan=plan)
    if version.status == VersionStatus.SUPERSEDED:
        return locked_page(request, VersionLocked(version))
    features = selectors.features_addable(plan=plan, version=version)
    if request.method == "GET":
        if not request.htmx:
            target = version_url(version)
            chosen = request.GET.get("add-feature", "")
            return redirect(f"{target}?add-feature={chosen}#add-feature" if chosen else target)
        feature = chosen_feature(request, features)
        values_form = add_values_form(plan, feature)
        return render(
            request,
            f"{PLAN_PAGE}#add-fields",
            {
                "plan": plan,
                "values_form": values_form,
                "add_feature": feature,
                "add_reach_text": version_reach_text(plan, version, feature),
            },
        )
    add_form = AddFeatureForm(request.POST, prefix="add", features=features)
    feature = add_form.cleaned_data["feature"] if add_form.is_valid() else None
    values_form = add_values_form(plan, feature, data=request.POST)
    if feature is not None and values_form.is_valid():
        try:
            entitlement = services.plan_add_entitlement(
                plan=plan, version=version, feature=feature, **values_form.values()
            )
        except (ValidationError, DomainError) as error:
            errors_to_form(values_form, error)
        else:
            if version.is_draft:
                text = f"Added {feature.name} to draft version {version.number}."
            else:
                reach = selectors.plan_change_reach(plan=plan, feature=feature)
                text = f"Added {feature.name} to {plan.name}. " + reach_sentence(
                    reach, feature
                ).replace("This change applies", "It applies")
            messages.success(request, text)
            if request.htmx:
                context = editor_context(request, plan, version=version)
                context["added_pk"] = entitlement.pk
                return render(request, f"{PLAN_PAGE}#plan-editor", context)
            return redirect(row_url(plan, entitlement))
    if feature is None and add_form.is_valid() is False and values_form.is_bound:
        values_form = add_values_form(plan, None)
    context = editor_context(
        request, plan, version=version, add_form=add_form, values_form=values_form
    )
    context["add_open"] = True
    if request.htmx:
        return render(request, f"{PLAN_PAGE}#plan-editor", context)
    if version.is_draft:
        context.update(version_forms(version))
    return render(request, PLAN_PAGE, context)


@product_manager_required
def plan_compare(request: HttpRequest) -> HttpResponse:
    """Active public plans side by side, as end customers see them."""
    plans = list(selectors.plan_list(public_only=True))
    for plan in plans:
        plan.price_text = selectors.price_text(plan)
    others = selectors.plan_list().exclude(status=PlanStatus.ACTIVE, public=True)
    return render(
        request,
        "catalog/plan_compare.html",
        {
            "plans": plans,
            "rows": selectors.plan_comparison(plans),
            "hidden_plans": others,
        },
    )
