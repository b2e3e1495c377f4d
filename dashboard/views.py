"""The end customer's dashboard (DESIGN.md "Pages"): usage, top-ups, plan changes, invoices and
notifications of the one customer the login belongs to.

Every view takes the customer from the login (`request.user.customer_user`), never from the
URL; anything a URL names (a pack, a purchase, an invoice, a notification, a plan) is looked up
within that customer's reach, so another customer's object is a 404.
"""

from __future__ import annotations

import secrets
from functools import wraps

from csp.constants import NONE
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods
from django.views.decorators.vary import vary_on_headers
from django_htmx.http import HttpResponseClientRedirect

from billing import selectors as billing_selectors
from billing.services.payments import invoice_pay as billing_invoice_pay
from billing.services.purchases import topup_purchase
from billing.services.subscriptions import proration_preview, subscription_change_plan
from catalog.models import Feature, FeatureKind
from catalog.selectors import plan_is_upgrade
from core.errors import DomainError, NotFound, PaymentFailed

from . import selectors
from .forms import PlanChangeConfirmForm, TopUpConfirmForm
from .portal import portal_session_open


def customer_required(view):
    """Logged in (else the login page) and linked to a customer (else a 404 page that says
    this login has no customer account). Sets `request.customer`."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if request.htmx and not request.user.is_authenticated:
            # A poll after the session ended: send the whole page to the login, rather than
            # swapping the login form into the cards.
            return HttpResponseClientRedirect(redirect_to_login(request.get_full_path()).url)
        return _for_customer(request, *args, **kwargs)

    @login_required
    def _for_customer(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        customer = selectors.customer_of(request.user)
        if customer is None:
            return render(request, "dashboard/no_customer.html", status=404)
        request.customer = customer
        return view(request, *args, **kwargs)

    return wrapper


@never_cache
@require_http_methods(["GET"])
def portal_enter(request: HttpRequest, token: str) -> HttpResponse:
    """A portal link from the business's own app: signs the visitor in to that one customer's
    dashboard, once; a used, expired or unknown link is a 403 page that says so. With
    `?view=embed` it lands on the compact usage page made for an iframe."""
    embed = request.GET.get("view") == "embed"
    if portal_session_open(request, token) is None:
        response = render(request, "dashboard/portal_expired.html", status=403)
        return _frameable(response) if embed else response
    return redirect("dashboard:embed" if embed else "dashboard:overview")


def _frameable(response: HttpResponse) -> HttpResponse:
    """Lets the origins in settings.DASHBOARD_EMBED_ORIGINS (and only those) frame this
    response: CSP frame-ancestors names them, and no X-Frame-Options header refuses them.
    With none configured the response stays unframeable, like every other page."""
    origins = settings.DASHBOARD_EMBED_ORIGINS
    response._csp_replace = {"frame-ancestors": list(origins) or [NONE]}
    response.xframe_options_exempt = bool(origins)
    return response


@never_cache
@vary_on_headers("HX-Request")
def embed(request: HttpRequest) -> HttpResponse:
    """The compact usage page for an iframe in the business's own app: a card per allowance
    and what the plan includes, refreshed every 15 seconds; links open the full dashboard in
    a new tab. Needs the customer's session (a portal link opened with ?view=embed)."""
    customer = selectors.customer_of(request.user)
    if customer is None:
        return _frameable(render(request, "dashboard/embed_signed_out.html", status=403))
    data = selectors.overview(customer)
    context = {"customer": customer, "overview": data, "subscription": data.subscription}
    template = "dashboard/embed.html#cards" if request.htmx else "dashboard/embed.html"
    return _frameable(render(request, template, context))


def _page(request: HttpRequest, template: str, context: dict, *, status: int = 200):
    if "subscription" in context:
        subscription = context["subscription"]
    else:
        subscription = selectors.subscription_of(request.customer)
    return render(
        request,
        template,
        {
            "customer": request.customer,
            "subscription": subscription,
            "past_due_denies": settings.BILLING_PAST_DUE_ACCESS == "deny",
            **context,
        },
        status=status,
    )


# --- usage ---------------------------------------------------------------------------------


@customer_required
@vary_on_headers("HX-Request", "HX-Target")
def overview(request: HttpRequest) -> HttpResponse:
    """A card per entitlement and a daily chart per allowance. htmx polls the cards (every
    15 seconds) and the charts (every minute) as partials of this page."""
    data = selectors.overview(request.customer)
    context = {"overview": data, "subscription": data.subscription, "section": "usage"}
    if request.htmx and request.htmx.target == "usage-charts":
        context["charts"] = selectors.usage_charts(request.customer, data.metered)
        return _page(request, "dashboard/overview.html#charts", context)
    if request.htmx:
        return _page(request, "dashboard/overview.html#cards", context)
    context["charts"] = selectors.usage_charts(request.customer, data.metered)
    return _page(request, "dashboard/overview.html", context)


# --- top-ups -------------------------------------------------------------------------------


@customer_required
def topup_packs(request: HttpRequest, feature_key: str) -> HttpResponse:
    """The packs of one allowance the customer may buy, with their price."""
    feature = get_object_or_404(Feature, key=feature_key, kind=FeatureKind.METERED)
    subscription = selectors.subscription_of(request.customer)
    entitlement = selectors.entitlement_of(request.customer, feature.key)
    packs = selectors.topup_packs_for(request.customer, subscription, feature=feature)
    if entitlement is None and not packs:
        raise Http404("Nothing of this feature is offered to you.")
    return _page(
        request,
        "dashboard/topup_packs.html",
        {
            "section": "usage",
            "feature": feature,
            "subscription": subscription,
            "card": selectors.usage_card(entitlement) if entitlement else None,
            "packs": [(p, selectors.topup_expiry_text(p, subscription)) for p in packs],
        },
    )


@customer_required
@require_http_methods(["GET", "POST"])
def topup_confirm(request: HttpRequest, pack_key: str) -> HttpResponse:
    """GET: the confirm step, with a fresh idempotency key. POST: the purchase (idempotent on
    that key), then the receipt. A declined payment shows why and changes nothing."""
    customer = request.customer
    subscription = selectors.subscription_of(customer)
    pack = selectors.topup_pack_for(customer, subscription, pack_key)
    if pack is None:
        raise Http404("No such top-up is offered to you.")
    error, error_title, status = "", "", 200
    if request.method == "POST":
        form = TopUpConfirmForm(request.POST)
        if form.is_valid():
            key = form.cleaned_data["idempotency_key"]
            try:
                purchase = topup_purchase(customer=customer, pack=pack, idempotency_key=key)
            except PaymentFailed as failure:
                error, error_title, status = failure.message, "The payment failed.", 402
                # Nothing was bought: the next try is a new purchase, with a key the payment
                # processor has not seen (it would answer a reused key with the same decline).
                form = TopUpConfirmForm(initial={"idempotency_key": secrets.token_urlsafe(24)})
            except DomainError as failure:
                error, status = failure.message, failure.status
                error_title = "The purchase could not be completed."
            else:
                return redirect("dashboard:topup_receipt", key=purchase.idempotency_key)
        else:
            form = TopUpConfirmForm(initial={"idempotency_key": secrets.token_urlsafe(24)})
            error, status = "This confirmation expired. Please confirm again.", 400
            error_title = "Nothing was bought."
    else:
        form = TopUpConfirmForm(initial={"idempotency_key": secrets.token_urlsafe(24)})
    entitlement = selectors.entitlement_of(customer, pack.feature.key)
    response = _page(
        request,
        "dashboard/topup_confirm.html",
        {
            "section": "usage",
            "subscription": subscription,
            "pack": pack,
            "expiry": selectors.topup_expiry_text(pack, subscription),
            "card": selectors.usage_card(entitlement) if entitlement else None,
            "form": form,
            "error": error,
            "error_title": error_title,
        },
        status=status,
    )
    # The key lives in this page: never serve it again from a cache.
    response["Cache-Control"] = "no-store"
    return response


@customer_required
def topup_receipt(request: HttpRequest, key: str) -> HttpResponse:
    """What a purchase bought, its invoice and the balance now."""
    purchase = selectors.topup_purchase_of(request.customer, key)
    if purchase is None:
        raise Http404("No such purchase.")
    entitlement = selectors.entitlement_of(request.customer, purchase.pack.feature.key)
    return _page(
        request,
        "dashboard/topup_receipt.html",
        {
            "section": "usage",
            "purchase": purchase,
            "card": selectors.usage_card(entitlement) if entitlement else None,
        },
    )


# --- plans ---------------------------------------------------------------------------------


@customer_required
def plans(request: HttpRequest) -> HttpResponse:
    """The public plans side by side, the current one highlighted, with what a move changes."""
    subscription = selectors.subscription_of(request.customer)
    choice = selectors.plan_choice(request.customer, subscription) if subscription else None
    return _page(
        request,
        "dashboard/plans.html",
        {"section": "plans", "subscription": subscription, "choice": choice},
    )


@customer_required
@require_http_methods(["GET", "POST"])
def plan_change(request: HttpRequest, plan_key: str) -> HttpResponse:
    """GET: the proration preview of an upgrade, or when a downgrade would apply. POST: the
    change through billing's service; an upgrade then shows its proration invoice."""
    customer = request.customer
    subscription = selectors.subscription_of(customer)
    if subscription is None:
        messages.info(request, "You have no active subscription to change.")
        return redirect("dashboard:plans")
    plan = selectors.plan_offered(subscription, plan_key)
    if plan is None:
        raise Http404("No such plan is offered to you.")
    current = plan.pk == subscription.plan_id
    if current and subscription.scheduled_plan_id is None:
        if request.method == "POST":
            # A repeated confirm of an upgrade that already went through: show its invoice.
            invoice = selectors.plan_change_invoice_latest(customer, plan)
            if invoice is not None:
                return redirect("dashboard:plan_changed", number=invoice.number)
        messages.info(request, f"You are on the {plan.name} plan.")
        return redirect("dashboard:plans")

    relation = (
        "keep"
        if current
        else ("upgrade" if plan_is_upgrade(subscription.plan, plan) else "downgrade")
    )
    error, status, preview = "", 200, None
    if request.method == "POST":
        form = PlanChangeConfirmForm(request.POST)
        if form.is_valid() and form.cleaned_data["from_plan"] != subscription.plan.key:
            error, status = (
                f"Your plan changed to {subscription.plan.name} meanwhile; review the change "
                "again before confirming.",
                409,
            )
        elif form.is_valid():
            try:
                change = subscription_change_plan(subscription=subscription, plan=plan)
            except DomainError as failure:
                error, status = failure.message, failure.status
            else:
                if change.invoice is not None:  # the invoice page says the plan changed
                    return redirect("dashboard:plan_changed", number=change.invoice.number)
                if change.scheduled:
                    end = change.subscription.current_period_end
                    messages.success(
                        request,
                        f"Your plan changes to {plan.name} on {end:%b} {end.day}, {end.year}. "
                        f"Until then you keep {subscription.plan.name}.",
                    )
                else:
                    messages.success(request, f"You stay on the {plan.name} plan.")
                return redirect("dashboard:plans")
        else:
            error, status = "This confirmation expired. Please review the change again.", 400
    form = PlanChangeConfirmForm(initial={"from_plan": subscription.plan.key})
    if relation == "upgrade":
        try:
            preview = proration_preview(subscription=subscription, plan=plan)
        except DomainError as failure:
            if not error:
                error, status = failure.message, failure.status
    choice = selectors.plan_choice(customer, subscription)
    option = next((o for o in choice.options if o.plan.pk == plan.pk), None)
    return _page(
        request,
        "dashboard/plan_change.html",
        {
            "section": "plans",
            "subscription": subscription,
            "plan": plan,
            "option": option,
            "relation": relation,
            "preview": preview,
            "form": form,
            "error": error,
        },
        status=status,
    )


@customer_required
def plan_changed(request: HttpRequest, number: str) -> HttpResponse:
    """The proration invoice of an upgrade, shown right after it."""
    if selectors.plan_change_invoice(request.customer, number) is None:
        raise Http404("No such invoice.")
    try:
        invoice = billing_selectors.invoice_get_for_user(user=request.user, number=number)
    except NotFound:
        raise Http404("No such invoice.") from None
    return _page(
        request,
        "dashboard/plan_changed.html",
        {
            "section": "plans",
            "invoice": invoice,
            "groups": billing_selectors.invoice_line_groups(invoice),
            "invoice_url": reverse("billing:invoice_detail", args=[invoice.number]),
        },
    )


# --- invoices and notifications ------------------------------------------------------------


@customer_required
def invoices(request: HttpRequest) -> HttpResponse:
    """Every invoice, the outstanding ones first with "Pay now", and the receipts emailed."""
    customer = request.customer
    return _page(
        request,
        "dashboard/invoices.html",
        {
            "section": "invoices",
            "outstanding": list(billing_selectors.invoices_outstanding(customer=customer)),
            "invoices": billing_selectors.invoice_list(customer=customer)[:200],
            "receipts": billing_selectors.receipts_of(customer=customer)[:50],
        },
    )


def _own_invoice(request: HttpRequest, number: str):
    # The login is the customer's: another customer's invoice is a 404, like an unknown one.
    try:
        return billing_selectors.invoice_get_for_user(user=request.user, number=number)
    except NotFound:
        raise Http404("No such invoice.") from None


def _invoice_page(request: HttpRequest, invoice, *, error: str = "", status: int = 200):
    context = billing_selectors.invoice_page_context(invoice)
    context.update({"section": "invoices", "error": error})
    return _page(request, "dashboard/invoice_detail.html", context, status=status)


@customer_required
def invoice_detail(request: HttpRequest, number: str) -> HttpResponse:
    """One invoice as a printable document, with "Pay now" while it is outstanding."""
    return _invoice_page(request, _own_invoice(request, number))


@customer_required
@require_http_methods(["POST"])
def invoice_pay(request: HttpRequest, number: str) -> HttpResponse:
    """Charges an outstanding invoice again through the payment provider (idempotent: an
    invoice paid meanwhile is not charged twice). A decline or an invoice that is not payable
    shows why on the invoice page."""
    invoice = _own_invoice(request, number)
    try:
        billing_invoice_pay(invoice=invoice)
    except DomainError as failure:
        invoice = _own_invoice(request, number)  # as it stands now, with the failed attempt
        return _invoice_page(request, invoice, error=failure.message, status=failure.status)
    messages.success(request, f"Thank you: invoice {number} is paid. A receipt is on its way.")
    return redirect("dashboard:invoice_detail", number=number)


@customer_required
def notifications(request: HttpRequest) -> HttpResponse:
    return _page(
        request,
        "dashboard/notifications.html",
        {
            "section": "notifications",
            "notifications": selectors.notifications_of(request.customer)[:200],
        },
    )


@customer_required
def notification_detail(request: HttpRequest, pk: int) -> HttpResponse:
    notification = selectors.notification_of(request.customer, pk)
    if notification is None:
        raise Http404("No such notification.")
    return _page(
        request,
        "dashboard/notification_detail.html",
        {"section": "notifications", "notification": notification},
    )
