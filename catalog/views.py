"""The plan editor for product managers (HTMX): plans, a plan's entitlement table edited
inline, "add feature", and the plan comparison as end customers see it.

One template per page with named partials; an htmx request gets the partial, any other the
whole page, so every action also works as a plain POST followed by a redirect. Writes go
through catalog.services; their ValidationErrors come back as form errors.
"""

import copy
from decimal import Decimal, InvalidOperation
from functools import wraps
from types import SimpleNamespace

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from core.errors import DomainError
from core.roles import is_product_manager

from . import selectors, services
from .forms import (
    AddFeatureForm,
    DuplicatePlanForm,
    EntitlementValuesForm,
    PublishForm,
    VersionPriceForm,
    errors_to_form,
)
from .models import Feature, Plan, PlanEntitlement, PlanStatus, PlanVersion, VersionStatus

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


def _editor_context(
    request,
    plan: Plan,
    *,
    version: PlanVersion | None = None,
    editing=None,
    add_form=None,
    values_form=None,
):
    """Everything the plan page shows, for one version of the plan (default: the published
    one). `editing` is (entitlement id, bound form) for the row shown as a form (the
    no-JavaScript edit)."""
    version = version or selectors.plan_version_current(plan=plan)
    rows = []
    for entitlement in selectors.plan_entitlements(plan=plan, version=version):
        if editing and editing[0] == entitlement.pk:
            rows.append(_edit_row(plan, entitlement, editing[1], editing[2]))
        else:
            rows.append(_row(entitlement, plan))
    features = selectors.features_addable(plan=plan, version=version)
    chosen = _chosen_feature(request, features) if add_form is None else None
    if add_form is None:
        add_form = AddFeatureForm(
            prefix="add", features=features, initial={"feature": chosen.key if chosen else None}
        )
    if values_form is None:
        values_form = _values_form(plan, chosen)
    reach = selectors.plan_change_reach(plan=plan)
    versions = list(selectors.plan_versions(plan=plan))
    version = next(v for v in versions if v.pk == version.pk)  # with its subscriber count
    return {
        "plan": plan,
        "version": version,
        "versions": versions,
        "draft": next((v for v in versions if v.is_draft), None),
        "editable": version.status != VersionStatus.SUPERSEDED,
        "add_url": _add_url(plan, version),
        "price": selectors.price_text(plan, price=version.price),
        "rows": rows,
        "reach": reach,
        "add_form": add_form,
        "values_form": values_form,
        "add_feature": values_form.feature,
        "add_reach_text": _version_reach_text(plan, version, values_form.feature),
        "has_features_to_add": features.exists(),
        "duplicate_form": DuplicatePlanForm(),
    }


def _add_url(plan: Plan, version: PlanVersion) -> str:
    if version.status == VersionStatus.PUBLISHED:
        return reverse("catalog:entitlement_add", args=[plan.key])
    return reverse("catalog:version_entitlement_add", args=[plan.key, version.number])


def _version_url(version: PlanVersion) -> str:
    if version.status == VersionStatus.PUBLISHED:
        return reverse("catalog:plan_detail", args=[version.plan.key])
    return reverse("catalog:plan_version", args=[version.plan.key, version.number])


DRAFT_NOTE = "A draft: no subscriber has these terms until it is published."


def _version_reach_text(plan: Plan, version: PlanVersion, feature: Feature | None) -> str:
    if version.is_draft:
        return DRAFT_NOTE
    return _reach_text(selectors.plan_change_reach(plan=plan, feature=feature), feature)


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


def _edit_row(
    plan: Plan, entitlement: PlanEntitlement, form: EntitlementValuesForm, lowering=None
) -> dict:
    reach_text = _version_reach_text(plan, entitlement.version, entitlement.feature)
    return _row(entitlement, plan, form=form, reach_text=reach_text, lowering=lowering)


def _plan_get(key: str) -> Plan:
    return get_object_or_404(Plan, key=key)


def _version_get(plan: Plan, number: int) -> PlanVersion:
    version = selectors.plan_version_get(plan=plan, number=number)
    if version is None:
        raise Http404(f"{plan.name} has no version {number}.")
    return version


def _entitlement_get(plan: Plan, pk: int) -> PlanEntitlement:
    rows = PlanEntitlement.objects.select_related("feature", "version__plan")
    return get_object_or_404(rows, plan=plan, pk=pk)


def _editable_or_409(entitlement: PlanEntitlement) -> None:
    if entitlement.version.status == VersionStatus.SUPERSEDED:
        raise VersionLocked(entitlement.version)


class VersionLocked(Exception):
    def __init__(self, version: PlanVersion):
        self.version = version


def _locked_page(request, error: VersionLocked) -> HttpResponse:
    """A superseded version is what its subscribers were promised: shown, never changed."""
    version = error.version
    return render(
        request,
        "catalog/version_locked.html",
        {"plan": version.plan, "version": version},
        status=409,
    )


@product_manager_required
def plan_detail(request: HttpRequest, key: str) -> HttpResponse:
    plan = _plan_get(key)
    return render(request, PLAN_PAGE, _editor_context(request, plan))


@product_manager_required
def plan_version(request: HttpRequest, key: str, number: int) -> HttpResponse:
    """One version of a plan: a draft to edit, preview and publish, or an earlier version as its
    subscribers have it. The published version is the plan page itself."""
    plan = _plan_get(key)
    version = _version_get(plan, number)
    if version.status == VersionStatus.PUBLISHED:
        return redirect("catalog:plan_detail", plan.key)
    return _version_page(request, plan, version)


def _version_page(request, plan: Plan, version: PlanVersion, status: int = 200, **bound):
    """A version's page; `bound` replaces one of its forms (bound, with its errors)."""
    context = _editor_context(request, plan, version=version)
    context.update(_version_forms(version, **bound))
    return render(request, PLAN_PAGE, context, status=status)


def _version_forms(version: PlanVersion, **bound) -> dict:
    """The draft's price and publish forms, its impact preview, and "duplicate plan"."""
    context = {
        "duplicate_form": bound.get("duplicate_form") or DuplicatePlanForm(),
    }
    if version.is_draft:
        context["price_form"] = bound.get("price_form") or VersionPriceForm(
            initial={"amount": version.price.amount}, currency=str(version.price.currency)
        )
        context["publish_form"] = bound.get("publish_form") or PublishForm()
        context.update(_impact_context(selectors.plan_version_impact(version=version)))
    return context


def _terms_text(entitlement: PlanEntitlement | None, plan: Plan) -> str:
    if entitlement is None:
        return ""
    text = selectors.entitlement_summary(entitlement, interval=plan.interval)
    overage = selectors.entitlement_overage_text(entitlement)
    if entitlement.feature.kind == "metered" and not entitlement.unlimited:
        text += f", {entitlement.get_enforcement_display().split(':')[0].lower()}"
    return f"{text}, {overage}" if overage else text


def _impact_context(impact: selectors.Impact) -> dict:
    plan = impact.version.plan
    change = impact.revenue.change
    if change.amount == 0:
        revenue_change = "no change"
    else:
        sign = "+" if change.amount > 0 else "−"
        revenue_change = f"{sign}{selectors.money_text(abs(change))} per {plan.interval}"
    return {
        "impact": impact,
        "impact_rows": [
            {
                "feature": c.feature,
                "before": _terms_text(c.before, plan),
                "after": _terms_text(c.after, plan),
                "over": c.customers_over,
            }
            for c in impact.changes
        ],
        "revenue_change": revenue_change,
    }


@product_manager_required
@require_http_methods(["POST"])
def version_draft_create(request: HttpRequest, key: str) -> HttpResponse:
    """Makes a draft copy of the published version (or opens the draft there is)."""
    plan = _plan_get(key)
    try:
        draft = services.plan_version_draft_create(plan=plan)
    except DomainError as error:
        messages.info(request, error.message)
        draft = selectors.plan_version_draft(plan=plan)
        if draft is None:
            return redirect("catalog:plan_detail", plan.key)
    else:
        messages.success(
            request,
            f"Draft version {draft.number} of {plan.name}: a copy of version {draft.number - 1}"
            " to change. Nobody gets it until you publish it.",
        )
    return redirect("catalog:plan_version", plan.key, draft.number)


@product_manager_required
@require_http_methods(["POST"])
def version_price(request: HttpRequest, key: str, number: int) -> HttpResponse:
    plan = _plan_get(key)
    version = _version_get(plan, number)
    form = VersionPriceForm(request.POST, currency=str(version.price.currency))
    if form.is_valid():
        try:
            services.plan_version_update(version=version, price=form.price())
        except (ValidationError, DomainError) as error:
            errors_to_form(form, error)
        else:
            messages.success(request, f"Version {version.number} costs {form.price()} now.")
            return redirect(reverse("catalog:plan_version", args=[key, number]) + "#price")
    return _version_page(request, plan, version, 400 if form.errors else 200, price_form=form)


@product_manager_required
@require_http_methods(["POST"])
def version_publish(request: HttpRequest, key: str, number: int) -> HttpResponse:
    plan = _plan_get(key)
    version = _version_get(plan, number)
    form = PublishForm(request.POST)
    if form.is_valid():
        try:
            moved = services.plan_version_publish(
                version=version, existing=form.cleaned_data["existing"]
            )
        except DomainError as error:
            messages.error(request, error.message)
            form = PublishForm()
        else:
            if form.cleaned_data["existing"] == services.EXISTING_MIGRATE:
                who = f"{moved} subscriber{'s' if moved != 1 else ''} moved to it now"
            else:
                who = "current subscribers keep their versions"
            messages.success(
                request,
                f"Published version {version.number} of {plan.name}: new subscribers "
                f"get it; {who}.",
            )
            return redirect("catalog:plan_detail", plan.key)
    status = 409 if not version.is_draft else 400
    return _version_page(request, plan, version, status, publish_form=form)


@product_manager_required
@require_http_methods(["POST"])
def version_duplicate(request: HttpRequest, key: str, number: int) -> HttpResponse:
    """Duplicate plan: a new plan, in draft, from this version."""
    plan = _plan_get(key)
    version = _version_get(plan, number)
    form = DuplicatePlanForm(request.POST)
    if form.is_valid():
        try:
            copy = services.plan_duplicate(version=version, **form.cleaned_data)
        except ValidationError as error:
            errors_to_form(form, error)
        else:
            messages.success(
                request,
                f"{copy.name} is a copy of {plan.name} version {version.number}, in draft: set "
                "its status in the admin when it is ready to sell.",
            )
            return redirect("catalog:plan_detail", copy.key)
    return _version_page(request, plan, version, 400, duplicate_form=form)


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
    editable = entitlement.version.status != VersionStatus.SUPERSEDED
    return {"row": _row(entitlement, plan), "focus_row": True, "editable": editable}


def _row_url(plan: Plan, entitlement: PlanEntitlement) -> str:
    return _version_url(entitlement.version) + f"#ent-{entitlement.pk}"


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
        "unlimited"
        if entitlement.unlimited
        else selectors.quantity_text(entitlement.limit, feature.unit)
    )
    after = selectors.quantity_text(values["limit"], feature.unit)
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
    plan = _plan_get(key)
    entitlement = _entitlement_get(plan, pk)
    try:
        _editable_or_409(entitlement)
    except VersionLocked as error:
        return _locked_page(request, error)
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
            {"plan": plan, "row": _edit_row(plan, entitlement, form, lowering)},
        )
    context = _editor_context(
        request, plan, version=entitlement.version, editing=(entitlement.pk, form, lowering)
    )
    if entitlement.version.status != VersionStatus.PUBLISHED:
        context.update(_version_forms(entitlement.version))
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
        text = f"Saved {entitlement.feature.name} on {plan.name}. " + _reach_text(
            reach, entitlement.feature
        ).replace("This change applies", "It applies")
    messages.success(request, text)
    if request.htmx:
        entitlement = _entitlement_get(plan, entitlement.pk)
        return render(
            request,
            f"{PLAN_PAGE}#entitlement-saved",
            {"plan": plan, **_one(plan, entitlement)},
        )
    return redirect(_row_url(plan, entitlement))


@product_manager_required
@require_http_methods(["GET", "POST"])
def entitlement_remove(request: HttpRequest, key: str, pk: int) -> HttpResponse:
    """GET: a confirmation page (htmx asks with hx-confirm instead). POST: removes it."""
    plan = _plan_get(key)
    entitlement = _entitlement_get(plan, pk)
    try:
        _editable_or_409(entitlement)
    except VersionLocked as error:
        return _locked_page(request, error)
    version = entitlement.version
    reach = selectors.plan_change_reach(plan=plan, feature=entitlement.feature)
    reach_text = _version_reach_text(plan, version, entitlement.feature)
    if request.method == "POST":
        name = entitlement.feature.name
        services.plan_entitlement_remove(entitlement=entitlement)
        if version.is_draft:
            text = f"Removed {name} from draft version {version.number}."
        else:
            text = f"Removed {name} from {plan.name}. " + _reach_text(
                reach, entitlement.feature
            ).replace("This change applies", "It applies")
        messages.success(request, text)
        if request.htmx:
            return render(request, f"{PLAN_PAGE}#entitlement-removed", {"plan": plan})
        return redirect(_version_url(version))
    return render(
        request,
        "catalog/entitlement_remove.html",
        {
            "plan": plan,
            "entitlement": entitlement,
            "back_url": _row_url(plan, entitlement),
            "reach_text": reach_text,
        },
    )


@product_manager_required
@require_http_methods(["GET", "POST"])
def entitlement_add(request: HttpRequest, key: str, number: int | None = None) -> HttpResponse:
    """GET (htmx, when the feature select changes): the value fields of that feature's kind and
    whom adding it reaches. POST: adds it through plan_add_entitlement, to the published
    version (in place) or, with `number`, to a draft."""
    plan = _plan_get(key)
    version = _version_get(plan, number) if number else selectors.plan_version_current(plan=plan)
    if version.status == VersionStatus.SUPERSEDED:
        return _locked_page(request, VersionLocked(version))
    features = selectors.features_addable(plan=plan, version=version)
    if request.method == "GET":
        if not request.htmx:
            target = _version_url(version)
            chosen = request.GET.get("add-feature", "")
            return redirect(f"{target}?add-feature={chosen}#add-feature" if chosen else target)
        feature = _chosen_feature(request, features)
        values_form = _values_form(plan, feature)
        return render(
            request,
            f"{PLAN_PAGE}#add-fields",
            {
                "plan": plan,
                "values_form": values_form,
                "add_feature": feature,
                "add_reach_text": _version_reach_text(plan, version, feature),
            },
        )
    add_form = AddFeatureForm(request.POST, prefix="add", features=features)
    feature = add_form.cleaned_data["feature"] if add_form.is_valid() else None
    values_form = _values_form(plan, feature, data=request.POST)
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
                text = f"Added {feature.name} to {plan.name}. " + _reach_text(
                    reach, feature
                ).replace("This change applies", "It applies")
            messages.success(request, text)
            if request.htmx:
                context = _editor_context(request, plan, version=version)
                context["added_pk"] = entitlement.pk
                return render(request, f"{PLAN_PAGE}#plan-editor", context)
            return redirect(_row_url(plan, entitlement))
    if feature is None and add_form.is_valid() is False and values_form.is_bound:
        values_form = _values_form(plan, None)
    context = _editor_context(
        request, plan, version=version, add_form=add_form, values_form=values_form
    )
    context["add_open"] = True
    if request.htmx:
        return render(request, f"{PLAN_PAGE}#plan-editor", context)
    if version.is_draft:
        context.update(_version_forms(version))
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
