from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from djmoney.money import Money
from simple_history.admin import SimpleHistoryAdmin

from core.errors import DomainError
from core.forms import admin_decimal_overrides

from .models import Invoice, InvoiceEmail, InvoiceLine, InvoiceStatus, Payment, TopUpPurchase
from .services.invoices import invoice_draft_recalculate, invoice_issue
from .services.payments import invoice_collect_after_commit, invoice_refund_void


class InvoiceLineInline(admin.TabularInline):
    """Lines are edited only on a draft; an issued invoice shows them read-only."""

    formfield_overrides = admin_decimal_overrides()

    model = InvoiceLine
    extra = 0
    fields = ["position", "kind", "description", "feature", "quantity", "unit_price", "amount"]
    readonly_fields = ["amount"]
    autocomplete_fields = ["feature"]
    ordering = ["position", "pk"]

    def _editable(self, obj) -> bool:
        return obj is None or obj.status == InvoiceStatus.DRAFT

    def get_readonly_fields(self, request, obj=None):
        if self._editable(obj):
            return self.readonly_fields
        return self.fields

    def has_add_permission(self, request, obj=None):
        return self._editable(obj) and super().has_add_permission(request, obj)

    def has_change_permission(self, request, obj=None):
        return self._editable(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self._editable(obj) and super().has_delete_permission(request, obj)


class PaymentInline(admin.TabularInline):
    model = Payment
    extra = 0
    fields = ["kind", "provider", "idempotency_key", "reference", "amount", "status", "message"]
    fields += ["created_at"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Invoice)
class InvoiceAdmin(SimpleHistoryAdmin):
    """Drafts are built here and issued with the action; an issued invoice is read-only and is
    corrected by voiding it (services refuse any other change)."""

    list_display = ["__str__", "customer", "purpose", "status", "issued_at", "total", "page"]
    list_filter = ["status", "purpose", ("customer", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["number", "customer__name", "customer__external_id", "customer__email"]
    list_select_related = ["customer"]
    # raw ids: the customers admin may not offer autocomplete.
    raw_id_fields = ["customer", "subscription"]
    date_hierarchy = "issued_at"
    inlines = [InvoiceLineInline, PaymentInline]
    actions = ["issue_drafts", "void_invoices"]
    readonly_fields = [
        "number",
        "status",
        "issued_at",
        "due_at",
        "paid_at",
        "payment_error",
        "next_payment_at",
        "voided_at",
        "void_reason",
        "total",
        "page",
    ]

    def get_fields(self, request, obj=None):
        return [
            "number",
            "customer",
            "subscription",
            "purpose",
            "status",
            "period_start",
            "period_end",
            "issued_at",
            "due_at",
            "paid_at",
            "payment_error",
            "next_payment_at",
            "voided_at",
            "void_reason",
            "total",
            "page",
        ]

    def has_change_permission(self, request, obj=None):
        if obj is not None and obj.status != InvoiceStatus.DRAFT:
            # Read-only once issued; the change view still opens (view permission).
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.status != InvoiceStatus.DRAFT:
            return False
        return super().has_delete_permission(request, obj)

    @admin.display(description="Page")
    def page(self, obj):
        if not obj.number:
            return "—"
        try:
            url = reverse("billing:invoice_detail", args=[obj.number])
        except NoReverseMatch:  # billing's urls not mounted
            return "—"
        return format_html('<a href="{}">View / print</a>', url)

    def save_model(self, request, obj, form, change):
        # Only drafts get here (issued invoices are read-only): billed in the customer's
        # one currency; lines and total are settled by the service in save_related.
        obj.currency = obj.customer.currency
        obj.total = Money(obj.total.amount if change else 0, obj.customer.currency)
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        currency = form.instance.currency
        for formset in formsets:
            for line_form in getattr(formset, "forms", []):
                if line_form.instance.amount is None:
                    line_form.instance.amount = Money(0, currency)
        super().save_related(request, form, formsets, change)
        try:
            invoice_draft_recalculate(invoice=form.instance)
        except DomainError as error:
            messages.error(request, error.message)

    @admin.action(description="Issue selected drafts", permissions=["change"])
    def issue_drafts(self, request, queryset):
        issued = 0
        for invoice in queryset.filter(status=InvoiceStatus.DRAFT):
            try:
                with transaction.atomic():
                    invoice_collect_after_commit(invoice_issue(invoice=invoice))
                issued += 1
            except (DomainError, ValidationError) as error:
                messages.error(request, f"{invoice}: {getattr(error, 'message', error)}")
        if issued:
            messages.success(request, f"Issued {issued} invoice(s).")

    @admin.action(description="Void selected invoices (refunding paid ones)", permissions=["void"])
    def void_invoices(self, request, queryset):
        voided = 0
        for invoice in queryset.exclude(status__in=[InvoiceStatus.DRAFT, InvoiceStatus.VOID]):
            try:
                invoice_refund_void(invoice=invoice, reason=f"Voided by {request.user} in admin")
                voided += 1
            except DomainError as error:
                messages.error(request, f"{invoice}: {error.message}")
        if voided:
            messages.success(request, f"Voided {voided} invoice(s).")

    def has_void_permission(self, request):
        return request.user.has_perm("billing.change_invoice")


@admin.register(TopUpPurchase)
class TopUpPurchaseAdmin(admin.ModelAdmin):
    list_display = ["customer", "pack", "idempotency_key", "invoice", "grant", "created_at"]
    list_filter = ["pack"]
    search_fields = [
        "idempotency_key",
        "customer__name",
        "customer__external_id",
        "invoice__number",
    ]
    list_select_related = ["customer", "pack", "invoice", "grant__feature"]
    readonly_fields = ["customer", "idempotency_key", "pack", "invoice", "grant", "created_at"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = ["invoice", "kind", "provider", "reference", "amount", "status", "created_at"]
    list_filter = ["kind", "status", "provider"]
    search_fields = ["reference", "idempotency_key", "invoice__number", "invoice__customer__name"]
    list_select_related = ["invoice"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(InvoiceEmail)
class InvoiceEmailAdmin(admin.ModelAdmin):
    """Receipts and payment notices: the outbox rows, read-only (the sweep resends pending)."""

    list_display = ["invoice", "kind", "status", "attempts", "sent_at", "created_at"]
    list_filter = ["kind", "status"]
    search_fields = ["invoice__number", "invoice__customer__name"]
    list_select_related = ["invoice"]
    readonly_fields = [
        "invoice",
        "payment",
        "kind",
        "to",
        "status",
        "attempts",
        "last_attempt_at",
        "next_attempt_at",
        "sent_at",
        "last_error",
        "created_at",
    ]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
