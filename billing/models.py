"""Invoices, their lines, payments and top-up purchases (DESIGN.md "Billing"). Fields and
constraints only: every workflow (numbering, issuing, voiding, purchases, period close) lives
in services.py."""

from django.conf import settings
from django.db import models
from django.db.models import Q
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
        indexes = [models.Index(fields=["customer", "-issued_at"])]
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


class Payment(models.Model):
    """A charge made through a payment provider for an invoice."""

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="payments")
    provider = models.CharField(max_length=64)
    reference = models.CharField(max_length=255, blank=True)
    amount = MoneyField(
        max_digits=14, decimal_places=2, default_currency="USD", currency_choices=CURRENCY_CHOICES
    )
    status = models.CharField(max_length=16, choices=PaymentStatus.choices)
    message = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.provider} {self.reference or self.pk}: {self.amount} ({self.status})"


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
