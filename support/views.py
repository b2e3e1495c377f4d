"""Pages for support agents (HTMX): find a customer as you type; a customer's page with every
effective entitlement and where it comes from, their grants, overrides, notifications,
invoices, recent usage events (where their units went) and history; and the actions support
takes: change plan (with the proration preview), grant units (free, or a paid top-up), add or
end an override, void a grant, reverse a usage event.

Each action is a POST form with a CSRF token, through the same services as the API (so it is
recorded in history with the acting user by simple_history's middleware). Success: a message
and a redirect to the customer page, or, under htmx, the customer's sections re-rendered in
place. Errors: the form again, with them.
"""

from decimal import Decimal
from functools import wraps

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import reswap, retarget

from billing import selectors as billing_selectors
from billing.models import InvoiceStatus
from billing.services.payments import invoice_refund_void
from billing.services.purchases import topup_purchase
from billing.services.subscriptions import (
    proration_preview,
    subscription_change_plan,
    subscription_create,
)
from catalog.forms import errors_to_form
from catalog.models import Feature, Plan
from catalog.selectors import entitlement_summary, plan_version_current, topup_packs_available
from core.errors import DomainError, NotFound
from core.roles import is_support
from core.text import quantity_text
from customers import engine
from customers import services as customer_services
from customers.models import Customer, EntitlementOverride, Grant, GrantSource, UsageEvent

from . import selectors
from .forms import (
    GrantForm,
    InvoiceVoidForm,
    OverrideForm,
    PlanChoiceForm,
    SearchForm,
    TopUpForm,
    UsageReverseForm,
    override_values_form,
)

CUSTOMER_PAGE = "support/customer.html"


def support_required(view):
    """Anonymous -> the login page; logged in without the Support group -> 403."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not is_support(request.user):
            raise PermissionDenied("These pages are for support agents.")
        return view(request, *args, **kwargs)

    return wrapper


# --- search -----------------------------------------------------------------------------------


@support_required
@require_GET
def search(request: HttpRequest) -> HttpResponse:
    """Search as you type: the results partial under htmx, the whole page otherwise."""
    form = SearchForm(request.GET)
    term = form.cleaned_data["q"].strip() if form.is_valid() else ""
    context = {
        "form": form,
        "term": term,
        "results": selectors.customers_matching(term) if term else [],
        "recent": [] if term else selectors.customers_recent(),
        "limit": selectors.SEARCH_LIMIT,
    }
    if request.htmx:
        return render(request, "support/search.html#results", context)
    return render(request, "support/search.html", context)


# --- the customer page ------------------------------------------------------------------------


def _customer_get(pk: int) -> Customer:
    return get_object_or_404(Customer, pk=pk)


def _customer_url(customer: Customer, anchor: str = "") -> str:
    url = reverse("support:customer", args=[customer.pk])
    return f"{url}#{anchor}" if anchor else url


def _page_context(request, customer: Customer, **forms) -> dict:
    """Everything the customer page shows; `forms` replaces the action forms (bound, with
    errors) or adds the change-plan preview."""
    subscription = customer_services.subscription_active(customer)
    plan = subscription.plan if subscription else None
    packs = topup_packs_available(plan=plan) if plan else topup_packs_available(plan=None).none()
    override_feature = forms.pop("override_feature", None)
    context = {
        **_usage_context(request, customer),
        "customer": customer,
        "subscription": subscription,
        "entitlements": selectors.entitlement_rows(customer),
        "grants": selectors.grant_rows(customer),
        "overrides": selectors.override_rows(customer),
        "notifications": selectors.notifications_sent(customer),
        "notifications_available": selectors.Notification is not None,
        "invoices": billing_selectors.invoice_list(customer=customer)[:20],
        "history": selectors.customer_history(customer),
        "past_due_denies": settings.BILLING_PAST_DUE_ACCESS == "deny",
        "plan_form": PlanChoiceForm(options=selectors.plan_options(customer, subscription)),
        "grant_form": GrantForm(prefix="grant"),
        "topup_form": TopUpForm(prefix="topup", packs=packs),
        "has_packs": packs.exists(),
        "override_form": OverrideForm(prefix="ov"),
        "override_values": override_values_form(override_feature, customer.currency),
        "override_feature": override_feature,
        "preview": None,
        "latest_version": plan_version_current(plan=plan) if plan else None,
    }
    context.update(forms)
    return context


@support_required
@require_POST
def version_move(request: HttpRequest, pk: int) -> HttpResponse:
    """Moves the customer to the latest version of their plan: its entitlements now, its price
    from their next period."""
    customer = _customer_get(pk)
    subscription = customer_services.subscription_active(customer)
    if subscription is None:
        messages.error(request, f"{customer.name} has no active subscription.")
        return _refresh(request, customer, "plan")
    try:
        subscription = customer_services.subscription_version_move(subscription=subscription)
    except DomainError as error:
        messages.error(request, error.message)
        return _refresh(request, customer, "plan")
    version = subscription.plan_version
    return _done(
        request,
        customer,
        f"{customer.name} is on version {version.number} of {subscription.plan.name} now: its "
        f"entitlements apply at once, its price ({version.price}) from the next period.",
        "plan",
    )


@support_required
@require_GET
def customer(request: HttpRequest, pk: int) -> HttpResponse:
    customer = _customer_get(pk)
    return render(request, CUSTOMER_PAGE, _page_context(request, customer))


def _done(request, customer: Customer, message: str, anchor: str = "") -> HttpResponse:
    """After an action: the message, then the page (a redirect), or under htmx the customer's
    sections re-rendered in place (whatever panel the form was in)."""
    messages.success(request, message)
    if not request.htmx:
        return redirect(_customer_url(customer, anchor))
    response = render(request, f"{CUSTOMER_PAGE}#customer-main", _page_context(request, customer))
    return reswap(retarget(response, "#customer-main"), "outerHTML")


def _failed(request, customer: Customer, partial: str, **forms) -> HttpResponse:
    """An action's form again with its errors: the panel under htmx, else the whole page."""
    context = _page_context(request, customer, **forms)
    if request.htmx:
        return render(request, f"{CUSTOMER_PAGE}#{partial}", context)
    return render(request, CUSTOMER_PAGE, context)


# --- change plan ------------------------------------------------------------------------------


def _preview(customer: Customer, subscription, option) -> dict:
    """What choosing `option` would do: an upgrade's proration lines and total, or the date a
    downgrade takes effect. Raises DomainError when the change is not possible."""
    if subscription is None:
        return {"kind": "subscribe", "plan": option.plan}
    if option.direction == "upgrade":
        preview = proration_preview(subscription=subscription, plan=option.plan)
        return {"kind": "upgrade", "plan": option.plan, "proration": preview}
    if option.direction == "current":
        return {"kind": "keep", "plan": option.plan, "until": subscription.current_period_end}
    return {"kind": "downgrade", "plan": option.plan, "at": subscription.current_period_end}


@support_required
@require_http_methods(["GET", "POST"])
def change_plan(request: HttpRequest, pk: int) -> HttpResponse:
    """GET ?plan=<key>: the preview (the panel under htmx, else the page). POST plan=<key>:
    subscription_change_plan (an upgrade at once with a proration invoice; a downgrade
    scheduled for the period end), or subscription_create without a subscription."""
    customer = _customer_get(pk)
    subscription = customer_services.subscription_active(customer)
    options = selectors.plan_options(customer, subscription)
    data = request.POST if request.method == "POST" else request.GET
    form = PlanChoiceForm(data, options=options)
    option = form.option
    preview = None
    if option is not None:
        try:
            preview = _preview(customer, subscription, option)
        except DomainError as error:
            errors_to_form(form, error)
    if request.method == "POST" and preview is not None:
        try:
            if subscription is None:
                subscription_create(customer=customer, plan=option.plan)
                return _done(request, customer, f"Subscribed to {option.plan.name}.", "plan")
            change = subscription_change_plan(subscription=subscription, plan=option.plan)
        except (DomainError, ValidationError) as error:
            errors_to_form(form, error)
        else:
            return _done(request, customer, _change_message(change, option.plan), "plan")
    return _failed(request, customer, "panel-plan", plan_form=form, preview=preview)


def _change_message(change, plan: Plan) -> str:
    if change.scheduled:
        end = change.subscription.current_period_end
        return (
            f"Downgrade to {plan.name} scheduled for the period end, "
            f"{end:%b} {end.day}, {end.year}. Nothing is charged now."
        )
    if change.invoice is not None:
        return (
            f"Upgraded to {plan.name}. Proration invoice {change.invoice.number} issued "
            f"for {change.invoice.total}."
        )
    return f"Staying on {plan.name}: the scheduled change is cancelled."


# --- grants and top-ups -----------------------------------------------------------------------


@support_required
@require_POST
def grant_add(request: HttpRequest, pk: int) -> HttpResponse:
    """Free units: customers.services.grant_create, source manual, with the reason."""
    customer = _customer_get(pk)
    form = GrantForm(request.POST, prefix="grant")
    if form.is_valid():
        data = form.cleaned_data
        try:
            grant = customer_services.grant_create(
                customer=customer,
                feature=data["feature"],
                quantity=data["quantity"],
                source=GrantSource.MANUAL,
                reason=data["reason"],
                expires_at=data["expires_at"],
                created_by=request.user,
            )
        except (DomainError, ValidationError) as error:
            errors_to_form(form, error)
        else:
            return _done(request, customer, f"Granted {grant}.", "entitlements")
    return _failed(request, customer, "panel-grant", grant_form=form)


@support_required
@require_POST
def topup_sell(request: HttpRequest, pk: int) -> HttpResponse:
    """A paid top-up: topup_purchase with the form's idempotency key (made when the
    form was shown), so that submitting twice buys once."""
    customer = _customer_get(pk)
    subscription = customer_services.subscription_active(customer)
    packs = topup_packs_available(plan=subscription.plan if subscription else None)
    form = TopUpForm(request.POST, prefix="topup", packs=packs)
    if form.is_valid():
        try:
            purchase = topup_purchase(
                customer=customer,
                pack=form.cleaned_data["pack"],
                idempotency_key=form.cleaned_data["idempotency_key"],
            )
        except (DomainError, ValidationError) as error:
            errors_to_form(form, error)
        else:
            return _done(
                request,
                customer,
                f"Sold {purchase.pack.name}: invoice {purchase.invoice.number} "
                f"({purchase.invoice.total}), paid.",
                "entitlements",
            )
    return _failed(request, customer, "panel-grant", topup_form=form)


@support_required
@require_POST
def grant_void(request: HttpRequest, pk: int, grant_pk: int) -> HttpResponse:
    customer = _customer_get(pk)
    grant = get_object_or_404(Grant, customer=customer, pk=grant_pk)
    try:
        customer_services.grant_void(grant=grant)
    except DomainError as error:
        messages.error(request, error.message)
        return _refresh(request, customer, "grants")
    return _done(request, customer, f"Voided the grant of {grant}.", "grants")


def _refresh(request, customer: Customer, anchor: str) -> HttpResponse:
    if not request.htmx:
        return redirect(_customer_url(customer, anchor))
    response = render(request, f"{CUSTOMER_PAGE}#customer-main", _page_context(request, customer))
    return reswap(retarget(response, "#customer-main"), "outerHTML")


# --- overrides --------------------------------------------------------------------------------


@support_required
@require_http_methods(["GET", "POST"])
def override_add(request: HttpRequest, pk: int) -> HttpResponse:
    """GET (htmx, when the feature select changes): the value fields of that feature's kind.
    POST: customers.services.override_create with the acting user as created_by."""
    customer = _customer_get(pk)
    if request.method == "GET":
        key = request.GET.get("ov-feature", "")
        feature = Feature.objects.filter(key=key).first() if key else None
        if not request.htmx:
            form = OverrideForm(prefix="ov", initial={"feature": feature.key if feature else None})
            context = _page_context(request, customer, override_feature=feature, override_form=form)
            return render(request, CUSTOMER_PAGE, context)
        return render(
            request,
            f"{CUSTOMER_PAGE}#override-fields",
            {
                "customer": customer,
                "override_feature": feature,
                "override_values": override_values_form(feature, customer.currency),
            },
        )
    form = OverrideForm(request.POST, prefix="ov")
    form_valid = form.is_valid()
    feature = form.cleaned_data.get("feature")
    values = override_values_form(feature, customer.currency, data=request.POST)
    values_valid = feature is not None and values.is_valid()
    if form_valid and values_valid:
        data = form.cleaned_data
        try:
            override = customer_services.override_create(
                customer=customer,
                feature=feature,
                reason=data["reason"],
                starts_at=data["starts_at"],
                ends_at=data["ends_at"],
                created_by=request.user,
                **values.values(),
            )
        except (DomainError, ValidationError) as error:
            errors_to_form(values, error)
            if isinstance(error, ValidationError) and hasattr(error, "error_dict"):
                for name in ("reason", "starts_at", "ends_at"):
                    for message in error.message_dict.get(name, []):
                        form.add_error(name, message)
        else:
            return _done(
                request,
                customer,
                f"Override added: {override.feature.name} is now "
                f"{entitlement_summary(override)} for {customer.name}.",
                "entitlements",
            )
    if feature is None:
        values = override_values_form(None, customer.currency)
    return _failed(
        request,
        customer,
        "panel-override",
        override_form=form,
        override_values=values,
        override_feature=feature,
    )


@support_required
@require_POST
def override_end(request: HttpRequest, pk: int, override_pk: int) -> HttpResponse:
    customer = _customer_get(pk)
    override = get_object_or_404(
        EntitlementOverride.objects.select_related("feature"), customer=customer, pk=override_pk
    )
    try:
        customer_services.override_end(override=override)
    except DomainError as error:
        messages.error(request, error.message)
        return _refresh(request, customer, "overrides")
    return _done(
        request,
        customer,
        f"Ended the override of {override.feature.name}; the plan's terms apply again.",
        "overrides",
    )


# --- usage events ---------------------------------------------------------------------------


def _usage_context(request, customer: Customer) -> dict:
    """The "Recent usage" section: a page of events (`?page=`), of one feature (`?feature=`)."""
    features = selectors.usage_event_features()
    key = request.GET.get("feature", "") if request.method == "GET" else ""
    chosen = next((f for f in features if f.key == key), None)
    page, rows = selectors.usage_event_page(
        customer, feature=chosen, page=request.GET.get("page", 1)
    )
    return {
        "usage_page": page,
        "usage_rows": rows,
        "usage_features": features,
        "usage_feature": chosen,
    }


@support_required
@require_GET
def usage_events(request: HttpRequest, pk: int) -> HttpResponse:
    """The "Recent usage" section, filtered and paged: the partial under htmx, else the
    customer page showing that page of it."""
    customer = _customer_get(pk)
    if request.htmx:
        context = {"customer": customer, **_usage_context(request, customer)}
        return render(request, f"{CUSTOMER_PAGE}#usage-events", context)
    return render(request, CUSTOMER_PAGE, _page_context(request, customer))


@support_required
@require_http_methods(["GET", "POST"])
def usage_reverse(request: HttpRequest, pk: int, event_pk: int) -> HttpResponse:
    """GET: the event, where its units went, and a confirmation form (the reason is
    required). POST: customers.engine.usage_reverse as the signed-in agent: its units go back
    to the period and to the grants they came from (unless expired since). Reversing twice
    changes nothing and says so; a level (`latest`) is not reversible (409)."""
    customer = _customer_get(pk)
    event = get_object_or_404(
        UsageEvent.objects.select_related("feature"), customer=customer, pk=event_pk
    )
    form = UsageReverseForm(request.POST or None)
    error, status = "", 200
    if request.method == "POST" and form.is_valid():
        try:
            result = engine.usage_reverse(
                customer, event.event_id, reason=form.cleaned_data["reason"], user=request.user
            )
        except DomainError as failure:
            error, status = failure.message, failure.status
        else:
            return _done(request, customer, _reversal_message(result, event), "usage")
    elif request.method == "POST":
        status = 400
    row = selectors.usage_event_rows_of(customer, [event.pk])[0]
    context = {"customer": customer, "row": row, "form": form, "error": error}
    return render(request, "support/usage_reverse.html", context, status=status)


def _reversal_message(result, event: UsageEvent) -> str:
    unit = event.feature.unit
    given = result.reversal.given_back
    if not result.created:
        return f"Usage event {event.event_id} was already reversed; nothing changed."
    back = sum((Decimal(units) for units in given.values()), Decimal("0"))
    to_grants = f", {quantity_text(back, unit)} of it back to grants" if back else ""
    return (
        f"Reversed usage event {event.event_id}: {quantity_text(result.quantity, unit)} of "
        f"{event.feature.name} given back{to_grants}. Usage now "
        f"{quantity_text(result.entitlement.usage, unit)}."
    )


# --- invoices -------------------------------------------------------------------------------


@support_required
@require_http_methods(["GET", "POST"])
def invoice_void(request: HttpRequest, pk: int, number: str) -> HttpResponse:
    """GET: the invoice and a confirmation form (the reason is required). POST: voids it,
    refunding a paid invoice through the payment provider first (billing's
    invoice_refund_void); voiding twice answers 409 with why, a refused refund 402."""
    customer = _customer_get(pk)
    try:
        invoice = billing_selectors.invoice_get(number=number)
    except NotFound:
        raise Http404("No such invoice.") from None
    if invoice.customer_id != customer.pk:
        raise Http404("No such invoice for this customer.")
    form = InvoiceVoidForm(request.POST or None)
    error, status = "", 200
    if request.method == "POST" and form.is_valid():
        try:
            invoice_refund_void(invoice=invoice, reason=form.cleaned_data["reason"])
        except DomainError as failure:
            error, status = failure.message, failure.status
            invoice = billing_selectors.invoice_get(number=number)
        else:
            refunded = " and refunded" if invoice.status == InvoiceStatus.PAID else ""
            messages.success(request, f"Invoice {number} is void{refunded}.")
            return redirect(_customer_url(customer, "invoices"))
    elif request.method == "POST":
        status = 400
    context = billing_selectors.invoice_page_context(invoice)
    context.update({"customer": customer, "form": form, "error": error})
    return render(request, "support/invoice_void.html", context, status=status)
