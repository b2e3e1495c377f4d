"""What the plan editor's pages share (catalog/views.py: the editor; catalog/version_views.py:
a plan's versions): who may open them, the page's context for one version of a plan, the
version forms and impact preview, the URLs of rows and versions."""

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse

from core.roles import is_product_manager
from core.text import money_text

from . import selectors
from .forms import (
    AddFeatureForm,
    DuplicatePlanForm,
    EntitlementValuesForm,
    PublishForm,
    VersionPriceForm,
)
from .models import Feature, Plan, PlanEntitlement, PlanVersion, VersionStatus

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


def reach_sentence(reach: selectors.Reach, feature: Feature | None = None) -> str:
    """ "This change applies at once to 12 active subscribers" (and who an override keeps)."""
    n = reach.affected
    who = "active subscriber" if n == 1 else "active subscribers"
    text = f"This change applies at once to {n} {who}"
    if reach.overridden and feature is not None:
        they = "has an override" if reach.overridden == 1 else "have an override"
        text += f" ({reach.overridden} more {they} for {feature.name} and keep their own terms)"
    return text + "."


def row_context(entitlement: PlanEntitlement, plan: Plan, **extra) -> dict:
    return {
        "entitlement": entitlement,
        "summary": selectors.entitlement_summary(entitlement, interval=plan.interval),
        "overage": selectors.entitlement_overage_text(entitlement),
        **extra,
    }


def editor_context(
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
            rows.append(edit_row_context(plan, entitlement, editing[1], editing[2]))
        else:
            rows.append(row_context(entitlement, plan))
    features = selectors.features_addable(plan=plan, version=version)
    chosen = chosen_feature(request, features) if add_form is None else None
    if add_form is None:
        add_form = AddFeatureForm(
            prefix="add", features=features, initial={"feature": chosen.key if chosen else None}
        )
    if values_form is None:
        values_form = add_values_form(plan, chosen)
    reach = selectors.plan_change_reach(plan=plan)
    versions = list(selectors.plan_versions(plan=plan))
    version = next(v for v in versions if v.pk == version.pk)  # with its subscriber count
    return {
        "plan": plan,
        "version": version,
        "versions": versions,
        "draft": next((v for v in versions if v.is_draft), None),
        "editable": version.status != VersionStatus.SUPERSEDED,
        "add_url": add_url(plan, version),
        "price": selectors.price_text(plan, price=version.price),
        "rows": rows,
        "reach": reach,
        "add_form": add_form,
        "values_form": values_form,
        "add_feature": values_form.feature,
        "add_reach_text": version_reach_text(plan, version, values_form.feature),
        "has_features_to_add": features.exists(),
        "duplicate_form": DuplicatePlanForm(),
    }


def add_url(plan: Plan, version: PlanVersion) -> str:
    if version.status == VersionStatus.PUBLISHED:
        return reverse("catalog:entitlement_add", args=[plan.key])
    return reverse("catalog:version_entitlement_add", args=[plan.key, version.number])


def version_url(version: PlanVersion) -> str:
    if version.status == VersionStatus.PUBLISHED:
        return reverse("catalog:plan_detail", args=[version.plan.key])
    return reverse("catalog:plan_version", args=[version.plan.key, version.number])


DRAFT_NOTE = "A draft: no subscriber has these terms until it is published."


def version_reach_text(plan: Plan, version: PlanVersion, feature: Feature | None) -> str:
    if version.is_draft:
        return DRAFT_NOTE
    return reach_sentence(selectors.plan_change_reach(plan=plan, feature=feature), feature)


def chosen_feature(request, features) -> Feature | None:
    key = request.GET.get("add-feature") or request.GET.get("feature")
    return features.filter(key=key).first() if key else None


def add_values_form(plan: Plan, feature: Feature | None, data=None, initial=None):
    return EntitlementValuesForm(
        data,
        prefix="add",
        feature=feature,
        currency=str(plan.price.currency),
        initial=initial,
    )


def edit_row_context(
    plan: Plan, entitlement: PlanEntitlement, form: EntitlementValuesForm, lowering=None
) -> dict:
    reach_text = version_reach_text(plan, entitlement.version, entitlement.feature)
    return row_context(entitlement, plan, form=form, reach_text=reach_text, lowering=lowering)


def plan_get(key: str) -> Plan:
    return get_object_or_404(Plan, key=key)


def version_get(plan: Plan, number: int) -> PlanVersion:
    version = selectors.plan_version_get(plan=plan, number=number)
    if version is None:
        raise Http404(f"{plan.name} has no version {number}.")
    return version


def entitlement_get(plan: Plan, pk: int) -> PlanEntitlement:
    rows = PlanEntitlement.objects.select_related("feature", "version__plan")
    return get_object_or_404(rows, plan=plan, pk=pk)


def editable_or_409(entitlement: PlanEntitlement) -> None:
    if entitlement.version.status == VersionStatus.SUPERSEDED:
        raise VersionLocked(entitlement.version)


class VersionLocked(Exception):
    def __init__(self, version: PlanVersion):
        self.version = version


def locked_page(request, error: VersionLocked) -> HttpResponse:
    """A superseded version is what its subscribers were promised: shown, never changed."""
    version = error.version
    return render(
        request,
        "catalog/version_locked.html",
        {"plan": version.plan, "version": version},
        status=409,
    )


def version_page(request, plan: Plan, version: PlanVersion, status: int = 200, **bound):
    """A version's page; `bound` replaces one of its forms (bound, with its errors)."""
    context = editor_context(request, plan, version=version)
    context.update(version_forms(version, **bound))
    return render(request, PLAN_PAGE, context, status=status)


def version_forms(version: PlanVersion, **bound) -> dict:
    """The draft's price and publish forms, its impact preview, and "duplicate plan"."""
    context = {
        "duplicate_form": bound.get("duplicate_form") or DuplicatePlanForm(),
    }
    if version.is_draft:
        context["price_form"] = bound.get("price_form") or VersionPriceForm(
            initial={"amount": version.price.amount}, currency=str(version.price.currency)
        )
        context["publish_form"] = bound.get("publish_form") or PublishForm()
        context.update(impact_context(selectors.plan_version_impact(version=version)))
    return context


def terms_text(entitlement: PlanEntitlement | None, plan: Plan) -> str:
    if entitlement is None:
        return ""
    text = selectors.entitlement_summary(entitlement, interval=plan.interval)
    overage = selectors.entitlement_overage_text(entitlement)
    if entitlement.feature.kind == "metered" and not entitlement.unlimited:
        text += f", {entitlement.get_enforcement_display().split(':')[0].lower()}"
    return f"{text}, {overage}" if overage else text


def impact_context(impact: selectors.Impact) -> dict:
    plan = impact.version.plan
    change = impact.revenue.change
    if change.amount == 0:
        revenue_change = "no change"
    else:
        sign = "+" if change.amount > 0 else "−"
        revenue_change = f"{sign}{money_text(abs(change))} per {plan.interval}"
    return {
        "impact": impact,
        "impact_rows": [
            {
                "feature": c.feature,
                "before": terms_text(c.before, plan),
                "after": terms_text(c.after, plan),
                "over": c.customers_over,
            }
            for c in impact.changes
        ],
        "revenue_change": revenue_change,
    }


def row_url(plan: Plan, entitlement: PlanEntitlement) -> str:
    return version_url(entitlement.version) + f"#ent-{entitlement.pk}"
