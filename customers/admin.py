"""Admin of customers: a customer page with its subscriptions, overrides, grants and logins
inline; history on what keeps it; the usage ledger and counters read-only.

Writes go through the services where one exists (override_create, grant_create, override_end,
grant_void, customer_update, the subscription's cancel and schedule); every form is validated
with full_clean. Subscribing and changing plan invoice, so they belong to billing and the
support pages: here a subscription's plan and period are read-only.
"""

from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import OuterRef, Subquery
from simple_history.admin import SimpleHistoryAdmin

from catalog.models import ENTITLEMENT_VALUE_NAMES
from core.errors import DomainError
from core.forms import admin_decimal_overrides, future_validate
from core.text import quantity_text

from . import services
from .models import (
    SUBSCRIPTION_CURRENT,
    Customer,
    CustomerUser,
    EntitlementOverride,
    Grant,
    Reservation,
    Subscription,
    UsageCounter,
    UsageEvent,
    UsageReversal,
)

# The entitlement values an override sets (the rest of its fields say who, why and when).
OVERRIDE_VALUES = list(ENTITLEMENT_VALUE_NAMES)
GRANT_FIELDS = ["quantity", "source", "reason", "effective_at", "expires_at", "topup_pack"]


class _FutureDatesForm(forms.ModelForm):
    """A date given here for the first time (or changed) must still be to come; rows that
    ended in the past stay editable (bounds.future_check)."""

    future_fields: tuple[str, ...] = ()

    def clean(self):
        cleaned = super().clean()
        for name in self.future_fields:
            if name in self.changed_data and cleaned.get(name) is not None:
                try:
                    future_validate(name, cleaned[name])
                except ValidationError as error:
                    self.add_error(name, error)
        return cleaned


class OverrideAdminForm(_FutureDatesForm):
    future_fields = ("ends_at",)

    class Meta:
        model = EntitlementOverride
        fields = "__all__"  # noqa: DJ007 (the admin class picks which fields it shows)


class GrantAdminForm(_FutureDatesForm):
    future_fields = ("expires_at",)

    class Meta:
        model = Grant
        fields = "__all__"  # noqa: DJ007 (the admin class picks which fields it shows)


def _save_through(request, obj, create, **fields):
    """A new row through its service `create` (recording who made it); an edit as validated."""
    if obj.pk is None:
        created = create(created_by=request.user, **fields)
        obj.pk, obj.created_by, obj.created_at = (
            created.pk,
            created.created_by,
            created.created_at,
        )
        return created
    obj.full_clean()
    obj.save()
    return obj


def override_save(request, override: EntitlementOverride) -> EntitlementOverride:
    return _save_through(
        request,
        override,
        services.override_create,
        customer=override.customer,
        feature=override.feature,
        reason=override.reason,
        starts_at=override.starts_at,
        ends_at=override.ends_at,
        **{name: getattr(override, name) for name in OVERRIDE_VALUES},
    )


def grant_save(request, grant: Grant) -> Grant:
    return _save_through(
        request,
        grant,
        services.grant_create,
        customer=grant.customer,
        feature=grant.feature,
        **{name: getattr(grant, name) for name in GRANT_FIELDS},
    )


def _quantity(value, unit: str = "") -> str:
    return "" if value is None else quantity_text(value, unit)


# --- inlines of the customer page -------------------------------------------------------------


class SubscriptionInline(admin.TabularInline):
    model = Subscription
    fk_name = "customer"
    extra = 0
    can_delete = False
    show_change_link = True
    fields = [
        "plan",
        "status",
        "started_at",
        "current_period_start",
        "current_period_end",
        "cancel_at_period_end",
        "scheduled_plan",
    ]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False  # subscribing invoices: billing's pages do it


class EntitlementOverrideInline(admin.StackedInline):
    formfield_overrides = admin_decimal_overrides()
    form = OverrideAdminForm
    model = EntitlementOverride
    extra = 0
    autocomplete_fields = ["feature"]
    fields = [
        ("feature", "reason"),
        ("starts_at", "ends_at"),
        ("enabled", "value"),
        ("limit", "unlimited", "reset"),
        ("enforcement", "overage_price"),
        ("notify_at", "show_on_invoice"),
        ("created_by", "created_at"),
    ]
    readonly_fields = ["created_by", "created_at"]


class GrantInline(admin.TabularInline):
    formfield_overrides = admin_decimal_overrides()
    form = GrantAdminForm
    model = Grant
    extra = 0
    can_delete = False  # void a grant instead: what it covered stays covered
    autocomplete_fields = ["feature"]
    fields = [
        "feature",
        "quantity",
        "consumed",
        "source",
        "reason",
        "effective_at",
        "expires_at",
        "voided_at",
        "created_by",
    ]
    readonly_fields = ["consumed", "voided_at", "created_by"]


class CustomerUserInline(admin.TabularInline):
    model = CustomerUser
    extra = 0
    autocomplete_fields = ["user"]
    fields = ["user", "created_at"]
    readonly_fields = ["created_at"]
    verbose_name = "dashboard login"


@admin.register(Customer)
class CustomerAdmin(SimpleHistoryAdmin):
    list_display = ["name", "external_id", "email", "current_plan", "currency", "created_at"]
    list_filter = ["currency"]
    search_fields = ["name", "email", "external_id"]
    ordering = ["name"]
    fields = ["external_id", "name", "email", "notification_emails", "currency", "created_at"]
    inlines = [SubscriptionInline, EntitlementOverrideInline, GrantInline, CustomerUserInline]

    def get_queryset(self, request):
        plan = Subscription.objects.filter(
            customer=OuterRef("pk"), status__in=SUBSCRIPTION_CURRENT
        ).values("plan__name")[:1]
        return super().get_queryset(request).annotate(current_plan=Subquery(plan))

    @admin.display(description="Plan", ordering="current_plan")
    def current_plan(self, obj):
        return obj.current_plan or "-"

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ["created_at"]
        readonly = ["external_id", "created_at"]  # the API's id of this customer: fixed
        if obj.subscriptions.exists():
            readonly.append("currency")  # a customer is billed in one currency
        return readonly

    def save_model(self, request, obj, form, change):
        if change:
            services.customer_update(
                customer=obj, **{name: form.cleaned_data[name] for name in form.changed_data}
            )
        else:
            obj.full_clean()
            obj.save()

    def save_formset(self, request, form, formset, change):
        if formset.model not in (EntitlementOverride, Grant):
            return super().save_formset(request, form, formset, change)
        save = override_save if formset.model is EntitlementOverride else grant_save
        for obj in formset.save(commit=False):
            save(request, obj)
        for obj in formset.deleted_objects:
            obj.delete()
        formset.save_m2m()


# --- subscriptions, overrides, grants ---------------------------------------------------------


@admin.register(Subscription)
class SubscriptionAdmin(SimpleHistoryAdmin):
    list_display = [
        "customer",
        "plan",
        "status",
        "current_period_start",
        "current_period_end",
        "cancel_at_period_end",
        "scheduled_plan",
    ]
    list_filter = ["status", "plan", "cancel_at_period_end"]
    search_fields = ["customer__name", "customer__external_id", "customer__email"]
    list_select_related = ["customer", "plan", "scheduled_plan"]
    date_hierarchy = "started_at"
    autocomplete_fields = ["scheduled_plan"]
    fields = [
        "customer",
        "plan",
        "status",
        "started_at",
        "current_period_start",
        "current_period_end",
        "ended_at",
        "cancel_at_period_end",
        "scheduled_plan",
    ]
    readonly_fields = [
        "customer",
        "plan",
        "status",
        "started_at",
        "current_period_start",
        "current_period_end",
        "ended_at",
    ]

    def has_add_permission(self, request):
        return False  # subscribing invoices the first period: billing's pages and API do it

    def save_model(self, request, obj, form, change):
        try:
            if "scheduled_plan" in form.changed_data:
                services.subscription_schedule_plan(
                    subscription=obj, plan=form.cleaned_data["scheduled_plan"]
                )
            if "cancel_at_period_end" in form.changed_data:
                if form.cleaned_data["cancel_at_period_end"]:
                    services.subscription_cancel(subscription=obj, at_period_end=True)
                else:
                    services.subscription_resume(subscription=obj)
        except DomainError as error:
            messages.error(request, error.message)


@admin.register(EntitlementOverride)
class EntitlementOverrideAdmin(SimpleHistoryAdmin):
    formfield_overrides = admin_decimal_overrides()
    form = OverrideAdminForm
    list_display = ["customer", "feature", "terms", "starts_at", "ends_at", "reason", "created_by"]
    list_filter = ["feature", "enforcement", "reset"]
    search_fields = ["customer__name", "customer__external_id", "feature__key", "reason"]
    list_select_related = ["customer", "feature", "created_by"]
    autocomplete_fields = ["customer", "feature"]
    readonly_fields = ["created_by", "created_at", "updated_at"]
    actions = ["end_now"]

    @admin.display(description="Terms")
    def terms(self, obj):
        feature = obj.feature
        if feature.kind == "boolean":
            return "enabled" if obj.enabled else "disabled"
        if feature.kind == "config":
            return obj.value
        limit = "unlimited" if obj.unlimited else _quantity(obj.limit, feature.unit)
        return f"{limit} ({obj.enforcement}, {obj.get_reset_display().lower()})"

    def save_model(self, request, obj, form, change):
        override_save(request, obj)

    @admin.action(description="End the selected overrides now", permissions=["change"])
    def end_now(self, request, queryset):
        ended = 0
        for override in queryset:
            try:
                services.override_end(override=override)
                ended += 1
            except DomainError as error:
                messages.warning(request, f"{override}: {error.message}")
        messages.success(request, f"Ended {ended} override(s).")


@admin.register(Grant)
class GrantAdmin(SimpleHistoryAdmin):
    formfield_overrides = admin_decimal_overrides()
    form = GrantAdminForm
    list_display = [
        "customer",
        "feature",
        "quantity_text",
        "consumed",
        "source",
        "effective_at",
        "expires_at",
        "voided_at",
    ]
    list_filter = ["source", "feature", ("voided_at", admin.EmptyFieldListFilter)]
    search_fields = ["customer__name", "customer__external_id", "reason"]
    list_select_related = ["customer", "feature"]
    autocomplete_fields = ["customer", "feature"]
    readonly_fields = ["consumed", "voided_at", "created_by", "created_at"]
    date_hierarchy = "effective_at"
    actions = ["void"]

    @admin.display(description="Quantity", ordering="quantity")
    def quantity_text(self, obj):
        return _quantity(obj.quantity, obj.feature.unit)

    def has_delete_permission(self, request, obj=None):
        return False  # void instead

    def save_model(self, request, obj, form, change):
        grant_save(request, obj)

    @admin.action(description="Void the selected grants now", permissions=["change"])
    def void(self, request, queryset):
        voided = 0
        for grant in queryset:
            try:
                services.grant_void(grant=grant)
                voided += 1
            except DomainError as error:
                messages.warning(request, f"{grant}: {error.message}")
        messages.success(request, f"Voided {voided} grant(s).")


# --- the usage ledger and its counters: read-only ---------------------------------------------


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the engine only: viewable, never added, edited or deleted by hand."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnlyAdmin):
    list_display = [
        "timestamp",
        "customer",
        "feature",
        "quantity",
        "event_id",
        "recorded_at",
        "reversed_at",
    ]
    list_filter = [
        "feature",
        "timestamp",
        ("reversed_at", admin.EmptyFieldListFilter),
        ("customer", admin.RelatedOnlyFieldListFilter),
    ]
    readonly_fields = ["where_it_went", "reversed_by"]
    search_fields = ["event_id", "customer__external_id", "customer__name"]
    list_select_related = ["customer", "feature"]
    date_hierarchy = "timestamp"
    show_full_result_count = False  # the ledger is large; skip the second COUNT(*)

    @admin.display(description="Where it went")
    def where_it_went(self, event: UsageEvent) -> str:
        """The draw ledger: grants drawn on and overage; the rest drew on the allowance."""
        draws = list(event.draws.select_related("grant"))
        allowance = event.quantity - sum((d.quantity for d in draws), Decimal("0"))
        parts = [f"allowance {quantity_text(allowance)}"] if allowance > 0 or not draws else []
        parts += [
            f"grant #{d.grant_id} {quantity_text(d.quantity)}"
            if d.grant_id
            else f"overage {quantity_text(d.quantity)}"
            for d in draws
        ]
        return ", ".join(parts)

    @admin.display(description="Reversal")
    def reversed_by(self, event: UsageEvent) -> str:
        reversal = UsageReversal.objects.filter(event=event).select_related("created_by").first()
        if reversal is None:
            return "-"
        return f"{reversal.created_at:%Y-%m-%d %H:%M} UTC by {reversal.who}: {reversal.reason}"


@admin.register(UsageCounter)
class UsageCounterAdmin(ReadOnlyAdmin):
    list_display = ["customer", "feature", "window", "start", "end", "used", "drawn", "level"]
    list_filter = ["window", "feature"]
    search_fields = ["customer__external_id", "customer__name"]
    list_select_related = ["customer", "feature"]
    date_hierarchy = "start"
    show_full_result_count = False


@admin.register(Reservation)
class ReservationAdmin(ReadOnlyAdmin):
    """Held through the API only (the engine's locks decide them); read here."""

    list_display = [
        "created_at", "customer", "feature", "reservation_id", "quantity", "status",
        "expires_at", "committed_quantity",
    ]  # fmt: skip
    list_filter = ["status", "feature", ("customer", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["reservation_id", "customer__external_id", "customer__name"]
    list_select_related = ["customer", "feature"]
    date_hierarchy = "created_at"
    show_full_result_count = False


from . import admin_notifications  # noqa: E402,F401  (notifications and webhooks)
