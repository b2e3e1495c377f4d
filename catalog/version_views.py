"""A plan's versions in the plan editor (DESIGN.md "Plan versions"): a draft's page (price,
entitlements, the impact preview, publish with keep or migrate), earlier versions read-only, and
"duplicate plan". Writes go through catalog.services; their errors come back as form errors or
messages."""

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from core.errors import DomainError

from . import selectors, services
from .forms import (
    DuplicatePlanForm,
    PublishForm,
    VersionPriceForm,
    errors_to_form,
)
from .models import VersionStatus
from .pages import (
    plan_get,
    product_manager_required,
    version_get,
    version_page,
)


@product_manager_required
def plan_version(request: HttpRequest, key: str, number: int) -> HttpResponse:
    """One version of a plan: a draft to edit, preview and publish, or an earlier version as its
    subscribers have it. The published version is the plan page itself."""
    plan = plan_get(key)
    version = version_get(plan, number)
    if version.status == VersionStatus.PUBLISHED:
        return redirect("catalog:plan_detail", plan.key)
    return version_page(request, plan, version)


@product_manager_required
@require_http_methods(["POST"])
def version_draft_create(request: HttpRequest, key: str) -> HttpResponse:
    """Makes a draft copy of the published version (or opens the draft there is)."""
    plan = plan_get(key)
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
    plan = plan_get(key)
    version = version_get(plan, number)
    form = VersionPriceForm(request.POST, currency=str(version.price.currency))
    if form.is_valid():
        try:
            services.plan_version_update(version=version, price=form.price())
        except (ValidationError, DomainError) as error:
            errors_to_form(form, error)
        else:
            messages.success(request, f"Version {version.number} costs {form.price()} now.")
            return redirect(reverse("catalog:plan_version", args=[key, number]) + "#price")
    return version_page(request, plan, version, 400 if form.errors else 200, price_form=form)


@product_manager_required
@require_http_methods(["POST"])
def version_publish(request: HttpRequest, key: str, number: int) -> HttpResponse:
    plan = plan_get(key)
    version = version_get(plan, number)
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
    return version_page(request, plan, version, status, publish_form=form)


@product_manager_required
@require_http_methods(["POST"])
def version_duplicate(request: HttpRequest, key: str, number: int) -> HttpResponse:
    """Duplicate plan: a new plan, in draft, from this version."""
    plan = plan_get(key)
    version = version_get(plan, number)
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
    return version_page(request, plan, version, 400, duplicate_form=form)
