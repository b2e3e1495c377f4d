"""The catalog: what each plan includes. No knowledge of customers (DESIGN.md "Catalog")."""

from decimal import Decimal

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from djmoney.models.fields import MoneyField
from djmoney.models.validators import MinMoneyValidator
from simple_history.models import HistoricalRecords

from core.bounds import decimal_bound_q, validate_decimal

DEFAULT_NOTIFY_AT = [80, 100]


def default_notify_at() -> list[int]:
    return list(DEFAULT_NOTIFY_AT)


class FeatureKind(models.TextChoices):
    BOOLEAN = "boolean", "Boolean (a gate)"
    METERED = "metered", "Metered (an allowance used up by usage)"
    CONFIG = "config", "Config (a static value)"


class Aggregation(models.TextChoices):
    SUM = "sum", "Sum of reported quantities"
    LATEST = "latest", "Latest reported level"


class Feature(models.Model):
    key = models.SlugField(
        max_length=64,
        unique=True,
        help_text="Used by your software and the API; cannot change once created.",
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    kind = models.CharField(max_length=16, choices=FeatureKind.choices)
    unit = models.CharField(max_length=32, blank=True, help_text='Metered only, e.g. "GB".')
    aggregation = models.CharField(
        max_length=16,
        choices=Aggregation.choices,
        default=Aggregation.SUM,
        help_text="Metered only: sum of events, or the latest reported level (e.g. storage).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_metered(self) -> bool:
        return self.kind == FeatureKind.METERED

    def clean(self) -> None:
        if self.pk:
            stored_key = Feature.objects.filter(pk=self.pk).values_list("key", flat=True).first()
            if stored_key is not None and stored_key != self.key:
                raise ValidationError(
                    {"key": f"A feature's key cannot change once created (it is {stored_key!r})."}
                )
        if self.kind != FeatureKind.METERED:
            if self.unit:
                raise ValidationError({"unit": "Only a metered feature has a unit."})
            if self.aggregation != Aggregation.SUM:
                raise ValidationError({"aggregation": "Only a metered feature has an aggregation."})


class PlanInterval(models.TextChoices):
    MONTH = "month", "Monthly"
    YEAR = "year", "Yearly"


class PlanStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    ACTIVE = "active", "Active"
    ARCHIVED = "archived", "Archived"


class Plan(models.Model):
    key = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    price = MoneyField(
        max_digits=12,
        decimal_places=2,
        default_currency="USD",
        validators=[MinMoneyValidator(0), validate_decimal],
    )
    interval = models.CharField(
        max_length=8, choices=PlanInterval.choices, default=PlanInterval.MONTH
    )
    status = models.CharField(max_length=16, choices=PlanStatus.choices, default=PlanStatus.DRAFT)
    public = models.BooleanField(
        default=True, help_text="Offered to end customers for self-service upgrades."
    )
    rank = models.PositiveIntegerField(
        default=0, help_text="Higher rank = higher tier; an upgrade goes up."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["rank", "name"]
        constraints = [
            models.CheckConstraint(condition=Q(price__gte=0), name="plan_price_not_negative"),
            models.CheckConstraint(
                condition=decimal_bound_q("price", max_digits=12, decimal_places=2),
                name="plan_price_in_bounds",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Reset(models.TextChoices):
    BILLING_PERIOD = "billing_period", "Every billing period"
    MONTH = "month", "Every calendar month"
    WEEK = "week", "Every week (from Monday)"
    DAY = "day", "Every day"
    NEVER = "never", "Never (since the subscription started)"


class Enforcement(models.TextChoices):
    HARD = "hard", "Hard: deny past the balance"
    SOFT = "soft", "Soft: allow and bill overage"


class EntitlementValues(models.Model):
    """The values of an entitlement, by the feature's kind: what a plan includes of a feature,
    and what a customer's override replaces them with (customers.EntitlementOverride)."""

    # boolean
    enabled = models.BooleanField(default=True)
    # metered
    limit = models.DecimalField(
        max_digits=20,
        decimal_places=4,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0")), validate_decimal],
    )
    unlimited = models.BooleanField(default=False)
    reset = models.CharField(max_length=16, choices=Reset.choices, default=Reset.BILLING_PERIOD)
    enforcement = models.CharField(
        max_length=8, choices=Enforcement.choices, default=Enforcement.HARD
    )
    overage_price = MoneyField(
        max_digits=12,
        decimal_places=4,
        null=True,
        blank=True,
        default_currency="USD",
        validators=[MinMoneyValidator(0), validate_decimal],
        help_text="Price per unit past the allowance; soft limits only.",
    )
    notify_at = models.JSONField(
        default=default_notify_at,
        blank=True,
        help_text="Percent thresholds of allowance plus grants, e.g. [80, 100].",
    )
    # config
    value = models.CharField(max_length=255, blank=True)
    show_on_invoice = models.BooleanField(default=False)

    class Meta:
        abstract = True


def entitlement_values_bounds(prefix: str) -> list[models.CheckConstraint]:
    """The database's side of bounds.DECIMAL_RULE for the values of an entitlement (a plan's or
    an override's): what both databases store and read back."""
    return [
        models.CheckConstraint(
            condition=decimal_bound_q("limit", max_digits=20, decimal_places=4)
            & decimal_bound_q("overage_price", max_digits=12, decimal_places=4),
            name=f"{prefix}_decimals_in_bounds",
        )
    ]


class PlanEntitlement(EntitlementValues):
    """What one plan includes of one feature. Which fields apply depends on the feature's kind."""

    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="entitlements")
    feature = models.ForeignKey(Feature, on_delete=models.PROTECT, related_name="plan_entitlements")

    history = HistoricalRecords()

    class Meta:
        ordering = ["plan", "feature__name"]
        constraints = [
            models.UniqueConstraint(
                fields=["plan", "feature"],
                name="plan_entitlement_unique_feature",
                violation_error_message="This plan already has an entitlement for that feature.",
            ),
            models.CheckConstraint(
                condition=Q(limit__isnull=True) | Q(limit__gte=0),
                name="plan_entitlement_limit_not_negative",
            ),
            models.CheckConstraint(
                condition=Q(overage_price__isnull=True) | Q(enforcement="soft"),
                name="plan_entitlement_overage_only_soft",
            ),
            models.CheckConstraint(
                condition=~(Q(unlimited=True) & Q(limit__isnull=False)),
                name="plan_entitlement_limit_or_unlimited",
            ),
            *entitlement_values_bounds("plan_entitlement"),
        ]

    def __str__(self) -> str:
        return f"{self.plan} / {self.feature}"

    def clean(self) -> None:
        entitlement_values_clean(self, self.feature if self.feature_id else None)


def entitlement_values_clean(obj, feature: Feature | None) -> None:
    """Validation by kind, shared by plan entitlements and customer overrides.

    `obj` has the entitlement value fields (enabled, limit, unlimited, reset, enforcement,
    overage_price, notify_at, value). Raises ValidationError with one message per field.
    """
    if feature is None:
        return
    errors: dict[str, str] = {}
    if feature.kind == FeatureKind.METERED:
        if obj.unlimited and obj.limit is not None:
            errors["limit"] = "Leave the limit empty for an unlimited entitlement."
        elif not obj.unlimited and obj.limit is None:
            errors["limit"] = "A metered entitlement needs a limit, or tick unlimited."
        if obj.overage_price is not None and obj.enforcement != Enforcement.SOFT:
            errors["overage_price"] = "An overage price applies only to a soft limit."
        if obj.value:
            errors["value"] = "A value applies only to a config feature."
    else:
        if obj.limit is not None or obj.unlimited:
            errors["limit"] = "A limit applies only to a metered feature."
        if obj.overage_price is not None:
            errors["overage_price"] = "An overage price applies only to a metered feature."
        if feature.kind == FeatureKind.BOOLEAN and obj.value:
            errors["value"] = "A value applies only to a config feature."
        if feature.kind == FeatureKind.CONFIG and not obj.value:
            errors["value"] = "A config entitlement needs a value."
    notify_at = obj.notify_at
    if notify_at in (None, ""):
        obj.notify_at = []
    elif not isinstance(notify_at, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 100 for n in notify_at
    ):
        errors["notify_at"] = "Thresholds are a list of whole percentages from 1 to 100."
    else:
        obj.notify_at = sorted(set(notify_at))
    if errors:
        raise ValidationError(errors)


class TopUpExpiry(models.TextChoices):
    PERIOD_END = "period_end", "At the end of the billing period"
    DAYS = "days", "After a number of days"
    NEVER = "never", "Never"


class TopUpPack(models.Model):
    key = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    feature = models.ForeignKey(
        Feature,
        on_delete=models.PROTECT,
        related_name="topup_packs",
        limit_choices_to={"kind": FeatureKind.METERED},
    )
    quantity = models.DecimalField(
        max_digits=20,
        decimal_places=4,
        validators=[MinValueValidator(Decimal("0.0001")), validate_decimal],
    )
    price = MoneyField(
        max_digits=12,
        decimal_places=2,
        default_currency="USD",
        validators=[MinMoneyValidator(0), validate_decimal],
    )
    expiry = models.CharField(
        max_length=16, choices=TopUpExpiry.choices, default=TopUpExpiry.PERIOD_END
    )
    expiry_days = models.PositiveIntegerField(null=True, blank=True)
    plans = models.ManyToManyField(
        Plan,
        blank=True,
        related_name="topup_packs",
        help_text="Offered on these plans; none means every plan.",
    )
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords(m2m_fields=[plans])

    class Meta:
        ordering = ["feature__name", "quantity"]
        verbose_name = "top-up pack"
        constraints = [
            models.CheckConstraint(condition=Q(quantity__gt=0), name="topup_quantity_positive"),
            models.CheckConstraint(
                condition=decimal_bound_q("quantity", max_digits=20, decimal_places=4)
                & decimal_bound_q("price", max_digits=12, decimal_places=2),
                name="topup_pack_decimals_in_bounds",
            ),
            models.CheckConstraint(
                # isnull=False: with a NULL expiry_days, "expiry_days > 0" is unknown and a
                # CHECK lets unknown through.
                condition=(Q(expiry="days") & Q(expiry_days__isnull=False) & Q(expiry_days__gt=0))
                | (~Q(expiry="days") & Q(expiry_days__isnull=True)),
                name="topup_expiry_days_iff_days",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors = {}
        if self.feature_id and self.feature.kind != FeatureKind.METERED:
            errors["feature"] = "A top-up pack is only for a metered feature."
        if self.expiry == TopUpExpiry.DAYS and not self.expiry_days:
            errors["expiry_days"] = "Give the number of days after which the units expire."
        if self.expiry != TopUpExpiry.DAYS and self.expiry_days is not None:
            errors["expiry_days"] = "Days apply only when the expiry is a number of days."
        if errors:
            raise ValidationError(errors)


class CatalogVersion(models.Model):
    """One row whose number grows with every change to features, plans and their entitlements.
    Processes that cache the catalog read it in the same query as usage, so a cached copy is
    never used once it is out of date (customers.engine)."""

    version = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"catalog v{self.version}"
