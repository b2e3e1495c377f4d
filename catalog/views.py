"""The plan editor for product managers (HTMX): plans, a plan's entitlement table edited
inline, "add feature", and the plan comparison as end customers see it.

One template per page with named partials; an htmx request gets the partial, any other the
whole page, so every action also works as a plain POST followed by a redirect. Writes go
through catalog.services; their ValidationErrors come back as form errors.
"""

from functools import wraps

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from core.roles import is_product_manager

from . import selectors, services
from .forms import AddFeatureForm, EntitlementValuesForm, errors_to_form
from .models import Feature, Plan, PlanEntitlement, PlanStatus

PLAN_PAGE = "catalog/plan_detail.html"


def product_manager_required(view):
    """Anonymous -> the login page; logged in without the Product managers group -> 403."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not is_product_manager(request.user):
            raise PermissionDenied("The plan editor is for product managers.")
        return view(request, *args, **kwargs)

    return wrapper


# --- plans ------------------------------------------------------------------------------------


@product_manager_required
def plan_list(request: HttpRequest) -> HttpResponse:
    plans = [
        {"plan": plan, "price": selectors.price_text(plan)}
        for plan in selectors.plan_list_for_editor()
    ]
    return render(request, "catalog/plan_list.html", {"plans": plans})


def _reach_text(reach: selectors.Reach, feature: Feature | None = None) -> str:
    """ "This change applies at once to 12 active subscribers" (and who an override keeps)."""
    n = reach.affected
    who = "active subscriber" if n == 1 else "active subscribers"
    text = f"This change applies at once to {n} {who}"
    if reach.overridden and feature is not None:
        they = "has an override" if reach.overridden == 1 else "have an override"
        text += f" ({reach.overridden} more {they} for {feature.name} and keep their own terms)"
    return text + "."


def _row(entitlement: PlanEntitlement, plan: Plan, **extra) -> dict:
    return {
        "entitlement": entitlement,
        "summary": selectors.entitlement_summary(entitlement, interval=plan.interval),
        "overage": selectors.entitlement_overage_text(entitlement),
        **extra,
    }


def _editor_context(request, plan: Plan, *, editing=None, add_form=None, values_form=None):
    """Everything the plan page shows. `editing` is (entitlement id, bound form) for the row
    shown as a form (the no-JavaScript edit)."""
    rows = []
    for entitlement in selectors.plan_entitlements(plan=plan):
        if editing and editing[0] == entitlement.pk:
            rows.append(_edit_row(plan, entitlement, editing[1]))
        else:
            rows.append(_row(entitlement, plan))
    features = selectors.features_addable(plan=plan)
    chosen = _chosen_feature(request, features) if add_form is None else None
    if add_form is None:
        add_form = AddFeatureForm(
            prefix="add", features=features, initial={"feature": chosen.key if chosen else None}
        )
    if values_form is None:
        values_form = _values_form(plan, chosen)
    reach = selectors.plan_change_reach(plan=plan)
    return {
        "plan": plan,
        "price": selectors.price_text(plan),
        "rows": rows,
        "reach": reach,
        "add_form": add_form,
        "values_form": values_form,
        "add_feature": values_form.feature,
        "add_reach_text": _reach_text(
            selectors.plan_change_reach(plan=plan, feature=values_form.feature),
            values_form.feature,
        ),
        "has_features_to_add": features.exists(),
    }


def _chosen_feature(request, features) -> Feature | None:
    key = request.GET.get("add-feature") or request.GET.get("feature")
    return features.filter(key=key).first() if key else None


def _values_form(plan: Plan, feature: Feature | None, data=None, initial=None):
    return EntitlementValuesForm(
        data,
        prefix="add",
        feature=feature,
        currency=str(plan.price.currency),
        initial=initial,
    )


def _edit_row(plan: Plan, entitlement: PlanEntitlement, form: EntitlementValuesForm) -> dict:
    reach = selectors.plan_change_reach(plan=plan, feature=entitlement.feature)
    return _row(entitlement, plan, form=form, reach_text=_reach_text(reach, entitlement.feature))


def _plan_get(key: str) -> Plan:
    return get_object_or_404(Plan, key=key)


def _entitlement_get(plan: Plan, pk: int) -> PlanEntitlement:
    return get_object_or_404(PlanEntitlement.objects.select_related("feature"), plan=plan, pk=pk)


@product_manager_required
def plan_detail(request: HttpRequest, key: str) -> HttpResponse:
    plan = _plan_get(key)
    return render(request, PLAN_PAGE, _editor_context(request, plan))


@product_manager_required
def entitlement_row(request: HttpRequest, key: str, pk: int) -> HttpResponse:
    """One row as shown (htmx: "Cancel" on an edited row); the page otherwise."""
    plan = _plan_get(key)
    entitlement = _entitlement_get(plan, pk)
    if not request.htmx:
        return redirect(_row_url(plan, entitlement))
    return render(
        request, f"{PLAN_PAGE}#entitlement-row", {"plan": plan, **_one(plan, entitlement)}
    )


def _one(plan: Plan, entitlement: PlanEntitlement) -> dict:
    # The row comes back after an inline edit: keyboard focus returns to its Edit link.
    return {"row": _row(entitlement, plan), "focus_row": True}


def _row_url(plan: Plan, entitlement: PlanEntitlement) -> str:
    return reverse("catalog:plan_detail", args=[plan.key]) + f"#ent-{entitlement.pk}"


@product_manager_required
@require_http_methods(["GET", "POST"])
def entitlement_edit(request: HttpRequest, key: str, pk: int) -> HttpResponse:
    """GET: the row as a form (with the number of subscribers it reaches). POST: saves through
    plan_entitlement_update; the row as shown again, and a message saying whom it reached."""
    plan = _plan_get(key)
    entitlement = _entitlement_get(plan, pk)
    prefix = f"e{entitlement.pk}"
    form = EntitlementValuesForm(
        request.POST if request.method == "POST" else None,
        prefix=prefix,
        feature=entitlement.feature,
        currency=str(plan.price.currency),
        initial=EntitlementValuesForm.initial_from(entitlement),
    )
    if request.method == "POST" and form.is_valid():
        try:
            entitlement = services.plan_entitlement_update(entitlement=entitlement, **form.values())
        except ValidationError as error:
            errors_to_form(form, error)
        else:
            reach = selectors.plan_change_reach(plan=plan, feature=entitlement.feature)
            messages.success(
                request,
                f"Saved {entitlement.feature.name} on {plan.name}. "
                + _reach_text(reach, entitlement.feature).replace(
                    "This change applies", "It applies"
                ),
            )
            if request.htmx:
                entitlement = _entitlement_get(plan, pk)
                return render(
                    request,
                    f"{PLAN_PAGE}#entitlement-saved",
                    {"plan": plan, **_one(plan, entitlement)},
                )
            return redirect(_row_url(plan, entitlement))
    if request.htmx:
        # The form row replaces the Edit link that had the focus: its first field takes it.
        first = next(iter(form.fields.values()))
        first.widget.attrs["autofocus"] = True
        return render(
            request,
            f"{PLAN_PAGE}#entitlement-form-row",
            {"plan": plan, "row": _edit_row(plan, entitlement, form)},
        )
    context = _editor_context(request, plan, editing=(entitlement.pk, form))
    return render(request, PLAN_PAGE, context)


@product_manager_required
@require_http_methods(["GET", "POST"])
def entitlement_remove(request: HttpRequest, key: str, pk: int) -> HttpResponse:
    """GET: a confirmation page (htmx asks with hx-confirm instead). POST: removes it."""
    plan = _plan_get(key)
    entitlement = _entitlement_get(plan, pk)
    reach = selectors.plan_change_reach(plan=plan, feature=entitlement.feature)
    if request.method == "POST":
        name = entitlement.feature.name
        services.plan_entitlement_remove(entitlement=entitlement)
        messages.success(
            request,
            f"Removed {name} from {plan.name}. "
            + _reach_text(reach, entitlement.feature).replace("This change applies", "It applies"),
        )
        if request.htmx:
            return render(request, f"{PLAN_PAGE}#entitlement-removed", {"plan": plan})
        return redirect("catalog:plan_detail", plan.key)
    return render(
        request,
        "catalog/entitlement_remove.html",
        {
            "plan": plan,
            "entitlement": entitlement,
            "reach_text": _reach_text(reach, entitlement.feature),
        },
    )


@product_manager_required
@require_http_methods(["GET", "POST"])
def entitlement_add(request: HttpRequest, key: str) -> HttpResponse:
    """GET (htmx, when the feature select changes): the value fields of that feature's kind and
    whom adding it reaches. POST: adds it through plan_add_entitlement."""
    plan = _plan_get(key)
    features = selectors.features_addable(plan=plan)
    if request.method == "GET":
        if not request.htmx:
            target = reverse("catalog:plan_detail", args=[plan.key])
            chosen = request.GET.get("add-feature", "")
            return redirect(f"{target}?add-feature={chosen}#add-feature" if chosen else target)
        feature = _chosen_feature(request, features)
        values_form = _values_form(plan, feature)
        reach = selectors.plan_change_reach(plan=plan, feature=feature)
        return render(
            request,
            f"{PLAN_PAGE}#add-fields",
            {
                "plan": plan,
                "values_form": values_form,
                "add_feature": feature,
                "add_reach_text": _reach_text(reach, feature),
            },
        )
    add_form = AddFeatureForm(request.POST, prefix="add", features=features)
    feature = add_form.cleaned_data["feature"] if add_form.is_valid() else None
    values_form = _values_form(plan, feature, data=request.POST)
    if feature is not None and values_form.is_valid():
        try:
            entitlement = services.plan_add_entitlement(
                plan=plan, feature=feature, **values_form.values()
            )
        except ValidationError as error:
            errors_to_form(values_form, error)
        else:
            reach = selectors.plan_change_reach(plan=plan, feature=feature)
            messages.success(
                request,
                f"Added {feature.name} to {plan.name}. "
                + _reach_text(reach, feature).replace("This change applies", "It applies"),
            )
            if request.htmx:
                context = _editor_context(request, plan)
                context["added_pk"] = entitlement.pk
                return render(request, f"{PLAN_PAGE}#plan-editor", context)
            return redirect(_row_url(plan, entitlement))
    if feature is None and add_form.is_valid() is False and values_form.is_bound:
        values_form = _values_form(plan, None)
    context = _editor_context(request, plan, add_form=add_form, values_form=values_form)
    context["add_open"] = True
    if request.htmx:
        return render(request, f"{PLAN_PAGE}#plan-editor", context)
    return render(request, PLAN_PAGE, context)


# --- comparison -------------------------------------------------------------------------------


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
