"""Invoice pages: one printable page per invoice, and a list."""

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse

from core.errors import NotFound
from core.roles import is_product_manager, is_support

from . import selectors
from .models import InvoiceStatus


@login_required
def invoice_list(request: HttpRequest) -> HttpResponse:
    """Invoices the user may see: staff every invoice (newest first), a customer their own."""
    invoices = (
        selectors.invoices_visible_to(request.user)
        .select_related("customer")
        .order_by("-issued_at", "-pk")[:200]
    )
    staff = is_support(request.user) or is_product_manager(request.user)
    return render(request, "billing/invoice_list.html", {"invoices": invoices, "staff": staff})


@login_required
def invoice_detail(request: HttpRequest, number: str) -> HttpResponse:
    """A clean, printable invoice. Staff see any; a customer only their own (else 404)."""
    try:
        invoice = selectors.invoice_get_for_user(user=request.user, number=number)
    except NotFound as error:
        raise Http404(error.message) from None
    context = selectors.invoice_page_context(invoice)
    if is_support(request.user) and invoice.status in (InvoiceStatus.ISSUED, InvoiceStatus.PAID):
        context["void_url"] = reverse(
            "support:invoice_void", args=[invoice.customer_id, invoice.number]
        )
    return render(request, "billing/invoice_detail.html", context)
