"""Invoices, their lines, payments and top-up purchases (DESIGN.md "Billing"). Fields and
constraints only: every workflow (numbering, issuing, voiding, purchases, period close) lives
in services/."""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from djmoney.models.fields import MoneyField
from simple_history.models import HistoricalRecords

from catalog.models import Feature, Plan, TopUpPack
from core.bounds import validate_url_safe
from customers.models import Customer, Grant, Subscription

CURRENCY_CHOICES = [(code, code) for code in settings.CURRENCIES]


class InvoiceSequence(models.Model):
    """The last invoice number used in a year: one row per year, locked (select_for_update)
    by every issue, so numbers are gapless and never repeat even under concurrency."""

    year = models.PositiveIntegerField(unique=True)
    last = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["year"]

    def __str__(self) -> str:
        return f"{self.year}: {self.last}"


class InvoiceStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    ISSUED = "issued", "Issued"
    PAID = "paid", "Paid"
    VOID = "void", "Void"


class InvoicePurpose(models.TextChoices):
    PERIOD = "period", "Subscription period (in advance)"
    CLOSING = "closing", "Final period of an ended subscription"
    PLAN_CHANGE = "plan_change", "Plan change"
    TOPUP = "topup", "Top-up purchase"
    MANUAL = "manual", "Manual"


class Invoice(models.Model):
    """An invoice. A draft has no number; issuing gives it the next number of the issue year.
    Once issued it never changes except to be marked paid or void (a void plus a new invoice
    is the correction)."""

    number = models.CharField(max_length=32, unique=True, null=True, blank=True, editable=False)
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="invoices")
    subscription = models.ForeignKey(
        Subscription, on_delete=models.PROTECT, null=True, blank=True, related_name="invoices"
    )
    purpose = models.CharField(
        max_length=16, choices=InvoicePurpose.choices, default=InvoicePurpose.MANUAL
    )
    status = models.CharField(
        max_length=8, choices=InvoiceStatus.choices, default=InvoiceStatus.DRAFT, editable=False
    )
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)
    issued_at = models.DateTimeField(null=True, blank=True, editable=False)
    paid_at = models.DateTimeField(null=True, blank=True, editable=False)
    voided_at = models.DateTimeField(null=True, blank=True, editable=False)
    void_reason = models.CharField(max_length=500, blank=True, editable=False)
    # Collection: charged at issue; a decline keeps the provider's reason and a time to retry.
    # Unpaid past `due_at` (issue + settings.BILLING_GRACE_DAYS), the subscription is past due.
    due_at = models.DateTimeField(null=True, blank=True, editable=False)
    payment_error = models.CharField(max_length=500, blank=True, editable=False)
    next_payment_at = models.DateTimeField(null=True, blank=True, editable=False)
    # The currency column is `currency`: the customer's one billing currency.
    total = MoneyField(
        max_digits=14,
        decimal_places=2,
        default=0,
        default_currency="USD",
        currency_choices=CURRENCY_CHOICES,
        currency_field_name="currency",
        editable=False,
    )
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["-issued_at", "-pk"]
        indexes = [
            models.Index(fields=["customer", "-issued_at"]),
            models.Index(fields=["status", "next_payment_at"], name="invoice_collection_due"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=(Q(status="draft") & Q(number__isnull=True) & Q(issued_at__isnull=True))
                | (~Q(status="draft") & Q(number__isnull=False) & Q(issued_at__isnull=False)),
                name="invoice_number_iff_issued",
            ),
            models.CheckConstraint(
                condition=Q(status="paid", paid_at__isnull=False) | ~Q(status="paid"),
                name="invoice_paid_has_paid_at",
            ),
            models.CheckConstraint(
                condition=Q(period_start__isnull=True)
                | Q(period_end__isnull=True)
                | Q(period_end__gt=models.F("period_start")),
                name="invoice_period_ordered",
            ),
            # One period (or closing) invoice per subscription and period: period close is
            # safe to run twice. A void one does not count, so a correction can be issued.
            models.UniqueConstraint(
                fields=["subscription", "purpose", "period_start"],
                condition=Q(purpose__in=["period", "closing"]) & ~Q(status="void"),
                name="invoice_one_per_subscription_period",
            ),
        ]

    def __str__(self) -> str:
        return self.number or f"Draft invoice #{self.pk}"

    @property
    def is_draft(self) -> bool:
        return self.status == InvoiceStatus.DRAFT

    @property
    def is_outstanding(self) -> bool:
        """Issued and not paid: what the customer owes."""
        return self.status == InvoiceStatus.ISSUED


class LineKind(models.TextChoices):
    PLAN = "plan", "Plan"
    TOPUP = "topup", "Top-up"
    OVERAGE = "overage", "Overage"
    PRORATION = "proration", "Proration"
    ENTITLEMENT = "entitlement", "Entitlement (included, no charge)"


class InvoiceLine(models.Model):
    """One line, with its description and prices copied at issue time: later catalog edits
    never change an issued invoice. `period_start`/`period_end` are the window the line is
    about (the billed period of a plan line, the usage window of an overage line)."""

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveIntegerField(default=0)
    kind = models.CharField(max_length=16, choices=LineKind.choices)
    description = models.CharField(max_length=500)
    feature = models.ForeignKey(
        Feature, on_delete=models.PROTECT, null=True, blank=True, related_name="invoice_lines"
    )
    plan = models.ForeignKey(
        Plan, on_delete=models.PROTECT, null=True, blank=True, related_name="invoice_lines"
    )
    quantity = models.DecimalField(max_digits=20, decimal_places=4, default=1)
    unit_price = MoneyField(
        max_digits=14, decimal_places=4, default_currency="USD", currency_choices=CURRENCY_CHOICES
    )
    amount = MoneyField(
        max_digits=14, decimal_places=2, default_currency="USD", currency_choices=CURRENCY_CHOICES
    )
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)
    # The top-up grant this line paid for (DESIGN.md: a grant links to its invoice line).
    grant = models.OneToOneField(
        Grant, on_delete=models.PROTECT, null=True, blank=True, related_name="invoice_line"
    )

    class Meta:
        ordering = ["invoice", "position", "pk"]
        indexes = [models.Index(fields=["feature", "kind", "period_start"])]
        constraints = [
            models.CheckConstraint(
                condition=~Q(kind="entitlement") | Q(amount=0),
                name="invoice_line_entitlement_free",
            ),
            models.CheckConstraint(
                condition=Q(amount_currency=models.F("unit_price_currency")),
                name="invoice_line_one_currency",
            ),
        ]

    def __str__(self) -> str:
        return self.description


class PaymentStatus(models.TextChoices):
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class PaymentKind(models.TextChoices):
    CHARGE = "charge", "Charge"
    REFUND = "refund", "Refund"


class Payment(models.Model):
    """One attempt to move money through a payment provider for an invoice: a charge, or the
    refund of a voided paid invoice. `idempotency_key` is what the provider was called with
    (derived from the invoice and the attempt); at most one charge and one refund of an invoice
    succeed."""

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="payments")
    kind = models.CharField(max_length=8, choices=PaymentKind.choices, default=PaymentKind.CHARGE)
    provider = models.CharField(max_length=64)
    idempotency_key = models.CharField(max_length=255, unique=True, null=True, blank=True)
    reference = models.CharField(max_length=255, blank=True)
    amount = MoneyField(
        max_digits=14, decimal_places=2, default_currency="USD", currency_choices=CURRENCY_CHOICES
    )
    status = models.CharField(max_length=16, choices=PaymentStatus.choices)
    message = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["invoice", "kind"],
                condition=Q(status="succeeded"),
                name="payment_one_succeeded_per_invoice_and_kind",
            ),
        ]

    def __str__(self) -> str:
        what = self.reference or self.idempotency_key or self.pk
        return f"{self.provider} {self.kind} {what}: {self.amount} ({self.status})"


class InvoiceEmailKind(models.TextChoices):
    RECEIPT = "receipt", "Receipt"
    PAYMENT_FAILED = "payment_failed", "Payment failed"


class InvoiceEmailStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"


class InvoiceEmail(models.Model):
    """An email about an invoice, written in the transaction that pays it (a receipt) or
    records a declined charge (a payment-failed notice), then sent by a Celery task after
    commit; the sweep queues again any left pending. One receipt per invoice; one notice per
    declined attempt."""

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="emails")
    payment = models.ForeignKey(
        Payment, on_delete=models.CASCADE, null=True, blank=True, related_name="emails"
    )
    kind = models.CharField(max_length=16, choices=InvoiceEmailKind.choices)
    to = models.JSONField(default=list, blank=True)
    status = models.CharField(
        max_length=16, choices=InvoiceEmailStatus.choices, default=InvoiceEmailStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["invoice"],
                condition=Q(kind="receipt"),
                name="invoice_email_one_receipt",
            ),
            models.UniqueConstraint(
                fields=["payment", "kind"],
                condition=Q(payment__isnull=False),
                name="invoice_email_one_per_payment",
            ),
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} for {self.invoice} ({self.status})"


class TopUpPurchase(models.Model):
    """A paid top-up: the invoice and the grant it bought, idempotent on the customer's key."""

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="topups")
    idempotency_key = models.CharField(max_length=255, validators=[validate_url_safe])
    pack = models.ForeignKey(TopUpPack, on_delete=models.PROTECT, related_name="purchases")
    invoice = models.OneToOneField(Invoice, on_delete=models.PROTECT, related_name="topup_purchase")
    grant = models.OneToOneField(Grant, on_delete=models.PROTECT, related_name="topup_purchase")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name = "top-up purchase"
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "idempotency_key"], name="topup_purchase_unique_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.customer.name}: {self.pack.name} ({self.idempotency_key})"
