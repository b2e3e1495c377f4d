"""Customers, their subscriptions and tailoring, and the usage ledger (DESIGN.md "Customers and
the engine"). The arithmetic lives in engine.py, never here."""

from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from simple_history.models import HistoricalRecords

from catalog.models import (
    EntitlementValues,
    Feature,
    FeatureKind,
    Plan,
    PlanVersion,
    Reset,
    TopUpPack,
    entitlement_values_bounds,
    entitlement_values_clean,
)
from core.bounds import (
    decimal_bound_q,
    validate_decimal,
    validate_instant,
    validate_url_safe,
)

CURRENCY_CHOICES = [(code, code) for code in settings.CURRENCIES]


class Customer(models.Model):
    external_id = models.CharField(
        max_length=255,
        unique=True,
        validators=[validate_url_safe],
        help_text="Your own id for this customer; used in the API and in page addresses"
        " (letters, digits and - _ . ~ : @).",
    )
    name = models.CharField(max_length=255)
    email = models.EmailField(blank=True)
    notification_emails = models.CharField(
        max_length=1000,
        blank=True,
        help_text="Comma-separated addresses for usage alerts; the customer's email if empty.",
    )
    currency = models.CharField(max_length=3, choices=CURRENCY_CHOICES, default="USD")
    # Grows with every change to this customer's subscription and overrides, so the engine's
    # per-process cache of them is never used once out of date (read with the usage).
    state_version = models.PositiveBigIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords(excluded_fields=["state_version"])

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["email"]), models.Index(fields=["name"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.external_id})"

    @property
    def alert_recipients(self) -> list[str]:
        listed = [a.strip() for a in self.notification_emails.split(",") if a.strip()]
        return listed or ([self.email] if self.email else [])


class CustomerUser(models.Model):
    """A login of the end customer's dashboard, tied to exactly one customer."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="customer_user"
    )
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="users")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.user} -> {self.customer}"


class SubscriptionStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    # An invoice stayed unpaid past the grace period (billing sets it and clears it on payment).
    PAST_DUE = "past_due", "Past due"
    CANCELED = "canceled", "Canceled"


# The statuses of a customer's one current subscription: running, paid up or not.
SUBSCRIPTION_CURRENT = (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE)


class Subscription(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="subscriptions")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    # The version of `plan` whose price and entitlements apply (DESIGN.md "Plan versions").
    plan_version = models.ForeignKey(
        PlanVersion, on_delete=models.PROTECT, related_name="subscriptions"
    )
    status = models.CharField(
        max_length=16, choices=SubscriptionStatus.choices, default=SubscriptionStatus.ACTIVE
    )
    started_at = models.DateTimeField(default=timezone.now)
    current_period_start = models.DateTimeField()
    current_period_end = models.DateTimeField()
    cancel_at_period_end = models.BooleanField(default=False)
    scheduled_plan = models.ForeignKey(
        Plan,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="scheduled_subscriptions",
        help_text="A downgrade waiting for the period end.",
    )
    ended_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["customer"],
                condition=Q(status__in=["active", "past_due"]),
                name="subscription_one_current_per_customer",
                violation_error_message="This customer already has an active subscription.",
            ),
            models.CheckConstraint(
                condition=Q(current_period_end__gt=models.F("current_period_start")),
                name="subscription_period_ordered",
            ),
        ]
        indexes = [models.Index(fields=["status", "current_period_end"])]

    def __str__(self) -> str:
        return f"{self.customer.name}: {self.plan.name} ({self.status})"

    def clean(self) -> None:
        if self.plan_version_id and self.plan_id and self.plan_version.plan_id != self.plan_id:
            raise ValidationError({"plan_version": "The version belongs to another plan."})


class EntitlementOverride(EntitlementValues):
    """Replaces the plan's values of one feature for one customer (an enterprise deal, a
    promotion), optionally within [starts_at, ends_at)."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="overrides")
    feature = models.ForeignKey(Feature, on_delete=models.PROTECT, related_name="overrides")
    reason = models.CharField(max_length=500, help_text="The deal or reason, e.g. the contract.")
    starts_at = models.DateTimeField(null=True, blank=True, validators=[validate_instant])
    ends_at = models.DateTimeField(null=True, blank=True, validators=[validate_instant])
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["customer", "feature"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(limit__isnull=True) | Q(limit__gte=0),
                name="override_limit_not_negative",
            ),
            models.CheckConstraint(
                condition=Q(overage_price__isnull=True) | Q(enforcement="soft"),
                name="override_overage_only_soft",
            ),
            models.CheckConstraint(
                condition=Q(starts_at__isnull=True)
                | Q(ends_at__isnull=True)
                | Q(ends_at__gt=models.F("starts_at")),
                name="override_window_ordered",
            ),
            *entitlement_values_bounds("override"),
        ]

    def __str__(self) -> str:
        return f"{self.customer.name} / {self.feature.name}: {self.reason}"

    def clean(self) -> None:
        if not (self.reason or "").strip():
            raise ValidationError({"reason": "Say why: the deal or the reason for the override."})
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValidationError({"ends_at": "The end must come after the start."})
        entitlement_values_clean(self, self.feature if self.feature_id else None)

    def is_active_at(self, at) -> bool:
        return (self.starts_at is None or self.starts_at <= at) and (
            self.ends_at is None or at < self.ends_at
        )


class GrantSource(models.TextChoices):
    TOPUP = "topup", "Top-up purchase"
    PROMOTION = "promotion", "Promotion"
    MANUAL = "manual", "Manual"


class Grant(models.Model):
    """Extra units of a metered feature, used after the period allowance, soonest-expiring
    first. `consumed` only grows; `latest` features use grants as capacity and never consume."""

    # No index of their own: the (customer, feature, expires_at) index leads with both. One on
    # the feature alone tempted the consume function's generic plans into reading every grant
    # of the feature (engine/sql/postgresql.py, test_consume_function).
    customer = models.ForeignKey(
        Customer, on_delete=models.CASCADE, related_name="grants", db_index=False
    )
    feature = models.ForeignKey(
        Feature,
        on_delete=models.PROTECT,
        related_name="grants",
        limit_choices_to={"kind": FeatureKind.METERED},
        db_index=False,
    )
    quantity = models.DecimalField(
        max_digits=20,
        decimal_places=4,
        validators=[MinValueValidator(Decimal("0.0001")), validate_decimal],
    )
    consumed = models.DecimalField(max_digits=20, decimal_places=4, default=Decimal("0"))
    source = models.CharField(max_length=16, choices=GrantSource.choices)
    reason = models.CharField(max_length=500, blank=True)
    effective_at = models.DateTimeField(default=timezone.now, validators=[validate_instant])
    expires_at = models.DateTimeField(null=True, blank=True, validators=[validate_instant])
    voided_at = models.DateTimeField(null=True, blank=True)
    topup_pack = models.ForeignKey(
        TopUpPack, on_delete=models.PROTECT, null=True, blank=True, related_name="grants"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["expires_at", "effective_at", "pk"]
        indexes = [models.Index(fields=["customer", "feature", "expires_at"])]
        constraints = [
            models.CheckConstraint(condition=Q(quantity__gt=0), name="grant_quantity_positive"),
            models.CheckConstraint(
                condition=decimal_bound_q("quantity", max_digits=20, decimal_places=4),
                name="grant_quantity_in_bounds",
            ),
            models.CheckConstraint(
                condition=Q(consumed__gte=0) & Q(consumed__lte=models.F("quantity")),
                name="grant_consumed_within_quantity",
            ),
            models.CheckConstraint(
                condition=Q(expires_at__isnull=True) | Q(expires_at__gt=models.F("effective_at")),
                name="grant_expiry_after_effective",
            ),
        ]

    def __str__(self) -> str:
        amount = f"{self.quantity.normalize():f} {self.feature.unit}".strip()
        return f"{amount} {self.feature.name} ({self.source})"

    @property
    def remaining(self) -> Decimal:
        return self.quantity - self.consumed

    def clean(self) -> None:
        if self.feature_id and self.feature.kind != FeatureKind.METERED:
            raise ValidationError({"feature": "Units can only be granted of a metered feature."})
        if self.expires_at and self.effective_at and self.expires_at <= self.effective_at:
            raise ValidationError({"expires_at": "The expiry must come after the start."})


class UsageEvent(models.Model):
    """The ledger. `event_id` is the client's idempotency key, unique per customer."""

    # No index of its own: (customer, event_id) and (customer, feature, timestamp) lead with it.
    customer = models.ForeignKey(
        Customer, on_delete=models.CASCADE, related_name="usage_events", db_index=False
    )
    feature = models.ForeignKey(Feature, on_delete=models.PROTECT, related_name="usage_events")
    event_id = models.CharField(max_length=255)
    quantity = models.DecimalField(max_digits=20, decimal_places=4, validators=[validate_decimal])
    timestamp = models.DateTimeField(default=timezone.now, validators=[validate_instant])
    properties = models.JSONField(default=dict, blank=True)
    recorded_at = models.DateTimeField(default=timezone.now)
    # Set by a reversal (`UsageReversal`): the event then counts for nothing anywhere (counters,
    # series, rebuild, invoices), but its event_id stays taken (a replay is a duplicate).
    reversed_at = models.DateTimeField(null=True, blank=True, editable=False)

    # The columns the batch path inserts with raw SQL, in order.
    EVENT_COLUMNS = (
        "customer",
        "feature",
        "event_id",
        "quantity",
        "timestamp",
        "properties",
        "recorded_at",
    )

    class Meta:
        ordering = ["-timestamp"]
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "event_id"], name="usage_event_unique_per_customer"
            ),
            models.CheckConstraint(
                condition=Q(quantity__gte=0)
                & decimal_bound_q("quantity", max_digits=20, decimal_places=4),
                name="usage_event_quantity_in_bounds",
            ),
        ]
        indexes = [models.Index(fields=["customer", "feature", "timestamp"])]

    def __str__(self) -> str:
        return f"{self.event_id}: {self.quantity.normalize():f} {self.feature_id}"


class UsageDraw(models.Model):
    """Where units of a usage event went besides the period allowance: to a grant (`grant`
    set) or past every limit, as overage (`grant` null). Written in the event's own transaction
    by every usage path, only when the event takes units from a grant or goes past the
    allowance: the allowance part of an event is its quantity less its draws. `window`: the
    reset kind of the entitlement in force, whose counter's `drawn` holds the grant units (a
    reversal takes them off that counter)."""

    event = models.ForeignKey(UsageEvent, on_delete=models.CASCADE, related_name="draws")
    grant = models.ForeignKey(
        Grant, on_delete=models.CASCADE, null=True, blank=True, related_name="draws"
    )
    window = models.CharField(max_length=16, choices=Reset.choices)
    quantity = models.DecimalField(max_digits=20, decimal_places=4, validators=[validate_decimal])

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(quantity__gt=0)
                & decimal_bound_q("quantity", max_digits=20, decimal_places=4),
                name="usage_draw_quantity_in_bounds",
            ),
        ]

    def __str__(self) -> str:
        where = f"grant {self.grant_id}" if self.grant_id else "overage"
        return f"{self.quantity.normalize():f} of event {self.event_id} -> {where}"


REVERSAL_REASON_MAX = 500


class UsageReversal(models.Model):
    """A usage event given back (DESIGN.md "Reversals"): who and why, how much, and the units
    given back to each grant (`given_back`: grant id -> units, as strings; a grant expired or
    voided by then gets nothing back). One per event: a second reversal answers this one."""

    event = models.OneToOneField(UsageEvent, on_delete=models.CASCADE, related_name="reversal")
    reason = models.CharField(max_length=REVERSAL_REASON_MAX)
    quantity = models.DecimalField(max_digits=20, decimal_places=4, validators=[validate_decimal])
    given_back = models.JSONField(default=dict, blank=True)
    api_key_name = models.CharField(
        max_length=255, blank=True, help_text="The API key that asked for it, if any."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=Q(quantity__gte=0)
                & decimal_bound_q("quantity", max_digits=20, decimal_places=4),
                name="usage_reversal_quantity_in_bounds",
            ),
        ]

    def __str__(self) -> str:
        return f"reversal of event {self.event_id}: {self.reason}"

    @property
    def who(self) -> str:
        if self.created_by_id:
            return self.created_by.get_username()
        return f"API key {self.api_key_name}" if self.api_key_name else "unknown"


class ReservationStatus(models.TextChoices):
    HELD = "held", "Held"
    COMMITTED = "committed", "Committed"
    RELEASED = "released", "Released"
    # Never needed for correctness: a `held` row past `expires_at` already counts for nothing
    # and reads as expired. Kept for a tidy-up job that may mark such rows.
    EXPIRED = "expired", "Expired"


RESERVATION_TTL_MAX = 86400  # seconds: a day


class Reservation(models.Model):
    """Units of a metered feature held for work whose cost is known at its end (DESIGN.md
    "Reservations"). A `held` row counts against the balance until `expires_at`; past it, it
    counts for nothing without any job. `reservation_id` is the client's idempotency key,
    unique per customer; a commit records its usage with `event_id` = `reservation_id`."""

    customer = models.ForeignKey(
        Customer, on_delete=models.CASCADE, related_name="reservations", db_index=False
    )
    # No index of its own (one less to write per hold and commit): reads go through
    # `reservation_held`; only deleting a feature looks reservations up by it alone.
    feature = models.ForeignKey(
        Feature, on_delete=models.PROTECT, related_name="reservations", db_index=False
    )
    reservation_id = models.CharField(max_length=255)
    quantity = models.DecimalField(
        max_digits=20,
        decimal_places=4,
        validators=[MinValueValidator(Decimal("0.0001")), validate_decimal],
    )
    status = models.CharField(
        max_length=16, choices=ReservationStatus.choices, default=ReservationStatus.HELD
    )
    ttl_seconds = models.PositiveIntegerField()
    expires_at = models.DateTimeField()
    committed_quantity = models.DecimalField(
        max_digits=20, decimal_places=4, null=True, blank=True, validators=[validate_decimal]
    )
    event = models.ForeignKey(
        UsageEvent, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    committed_at = models.DateTimeField(null=True, blank=True)
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "reservation_id"], name="reservation_unique_per_customer"
            ),
            models.CheckConstraint(
                condition=Q(quantity__gt=0)
                & decimal_bound_q("quantity", max_digits=20, decimal_places=4),
                name="reservation_quantity_in_bounds",
            ),
            models.CheckConstraint(
                condition=Q(committed_quantity__isnull=True)
                | (Q(committed_quantity__gte=0) & Q(committed_quantity__lte=models.F("quantity"))),
                name="reservation_committed_within_quantity",
            ),
            models.CheckConstraint(
                condition=Q(ttl_seconds__gte=1) & Q(ttl_seconds__lte=RESERVATION_TTL_MAX),
                name="reservation_ttl_in_bounds",
            ),
        ]
        # What a check and a hold read, "held and not expired of (customer, feature)": one
        # range of this partial index (its prefix, for every feature of a customer).
        indexes = [
            models.Index(
                fields=["customer", "feature", "expires_at"],
                condition=Q(status="held"),
                name="reservation_held",
            )
        ]

    def __str__(self) -> str:
        return f"{self.reservation_id}: {self.quantity.normalize():f} {self.feature_id}"

    def status_at(self, at) -> str:
        """The status as the API shows it: a hold past its expiry reads as expired."""
        if self.status == ReservationStatus.HELD and self.expires_at <= at:
            return ReservationStatus.EXPIRED
        return self.status


class UsageCounter(models.Model):
    """Usage of one customer and feature in one reset window, kept in step with the ledger in
    the same transaction as each event. Only the window kinds counted for the feature are kept
    (`CountedWindow`): the billing period always, the others once a plan or override uses them.

    `used` is the sum of quantities; `level`/`level_at` the latest reported value (for
    `latest` features); `drawn` what the window's usage took from grants (kept on the window of
    the entitlement in force when the usage was recorded)."""

    # No index of their own: the unique key and the open-window index lead with the customer
    # and the feature. An index on the feature alone tempted the consume function's generic
    # plans into reading every customer's counter of the feature (engine/sql/postgresql.py).
    customer = models.ForeignKey(
        Customer, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    feature = models.ForeignKey(Feature, on_delete=models.CASCADE, related_name="+", db_index=False)
    window = models.CharField(max_length=16, choices=Reset.choices)
    start = models.DateTimeField()
    end = models.DateTimeField()
    used = models.DecimalField(max_digits=24, decimal_places=4, default=Decimal("0"))
    drawn = models.DecimalField(max_digits=24, decimal_places=4, default=Decimal("0"))
    level = models.DecimalField(max_digits=24, decimal_places=4, null=True, blank=True)
    level_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "feature", "window", "start"], name="usage_counter_unique"
            ),
        ]
        # A check reads the windows still open (end > now): without this, the day counters of
        # every past day would be scanned and filtered, a cost that grows with the customer's age.
        indexes = [models.Index(fields=["customer", "feature", "end"], name="usage_counter_open")]

    def __str__(self) -> str:
        return f"{self.customer_id}/{self.feature_id} {self.window} {self.start:%Y-%m-%d}"


class CountedWindow(models.Model):
    """A reset kind whose usage counters are kept for a feature, besides the billing period
    (kept for every metered feature). A kind is added, never removed, in the same transaction
    as the first plan entitlement or override that uses it (or the switch of a feature to
    `latest`, whose level falls back on its lifetime counter), and that kind's counters are
    then recomputed from the ledger (`usage.counted_windows_ensure`). Loaded with the catalog,
    under its version."""

    feature = models.ForeignKey(Feature, on_delete=models.CASCADE, related_name="+")
    window = models.CharField(max_length=16, choices=Reset.choices)
    since = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["feature", "window"], name="counted_window_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.feature_id} {self.window}"


class SnapshotDebt(models.Model):
    """A write that Redis did not hear of (customers/snapshots.py): inserted in the write's own
    transaction, so that the snapshots it voids stay owed whatever happens to the process that
    wrote, until a process that reaches Redis voids them and deletes the row."""

    # Not a foreign key: a debt outlives nothing and must never block deleting a customer.
    customer_id = models.BigIntegerField(null=True, help_text="None: every customer.")
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"snapshots of {self.customer_id or 'every customer'} owed since {self.created_at}"


# --- notifications and webhooks (DESIGN.md "Notifications") ----------------------------------


class NotificationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"


class Notification(models.Model):
    """A usage alert email: the outbox row written in the usage transaction when usage crosses a
    `notify_at` threshold, then sent by a Celery task. One per customer, feature, period and
    threshold, enforced by the database. The figures are those at crossing time."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="notifications")
    feature = models.ForeignKey(Feature, on_delete=models.CASCADE, related_name="notifications")
    period_start = models.DateTimeField()
    threshold = models.PositiveSmallIntegerField(help_text="Percent of allowance plus grants.")
    to = models.JSONField(default=list, blank=True, help_text="Recipients at crossing time.")
    status = models.CharField(
        max_length=16, choices=NotificationStatus.choices, default=NotificationStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(
        default=timezone.now, help_text="When the sweep may queue it again if still pending."
    )
    sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    usage = models.DecimalField(max_digits=24, decimal_places=4)
    limit = models.DecimalField(
        max_digits=24, decimal_places=4, null=True, blank=True, help_text="The period allowance."
    )
    capacity = models.DecimalField(
        max_digits=24, decimal_places=4, help_text="Allowance plus grants: what 100% means."
    )
    balance = models.DecimalField(max_digits=24, decimal_places=4, null=True, blank=True)
    unit = models.CharField(max_length=32, blank=True)
    resets_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "feature", "period_start", "threshold"],
                name="notification_one_per_period_threshold",
            ),
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.customer.name}: {self.threshold}% of {self.feature.name} ({self.status})"


WEBHOOK_EVENT_TYPES = [
    ("usage.threshold_crossed", "Usage crossed a notification threshold"),
    ("entitlement.updated", "A plan entitlement, override or grant changed"),
]


def webhook_secret_new() -> str:
    import secrets

    return "whsec_" + secrets.token_urlsafe(32)


class WebhookEndpoint(models.Model):
    """Where events are POSTed, signed with `secret` (HMAC-SHA256). `event_types` empty means
    every event type."""

    url = models.URLField(max_length=1000)
    secret = models.CharField(
        max_length=255,
        default=webhook_secret_new,
        help_text="Signs each delivery; the receiver verifies X-Entitlements-Signature with it.",
    )
    active = models.BooleanField(default=True)
    event_types = models.JSONField(
        default=list,
        blank=True,
        help_text='Event types to send, e.g. ["usage.threshold_crossed"]; empty for all.',
    )
    description = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["url"]

    def __str__(self) -> str:
        return self.description or self.url

    def clean(self) -> None:
        known = {key for key, _ in WEBHOOK_EVENT_TYPES}
        if not isinstance(self.event_types, list) or not set(self.event_types) <= known:
            raise ValidationError(
                {"event_types": f"A list of event types among {sorted(known)}; empty for all."}
            )

    def wants(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types


class WebhookDeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"


class WebhookDelivery(models.Model):
    """One event for one endpoint: the outbox row, POSTed by a Celery task and retried until
    the receiver answers 2xx."""

    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    event_type = models.CharField(max_length=64, choices=WEBHOOK_EVENT_TYPES)
    event_id = models.CharField(max_length=64)
    payload = models.JSONField()
    status = models.CharField(
        max_length=16,
        choices=WebhookDeliveryStatus.choices,
        default=WebhookDeliveryStatus.PENDING,
    )
    attempts = models.PositiveIntegerField(default=0)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(
        default=timezone.now, help_text="When the sweep may queue it again if still pending."
    )
    response_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["endpoint", "event_id"], name="webhook_delivery_once_per_endpoint"
            ),
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id} -> {self.endpoint} ({self.status})"
