from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import Count, Q
from django.forms.models import BaseInlineFormSet
from django.urls import reverse
from django.utils.html import format_html
from simple_history.admin import SimpleHistoryAdmin

from core.forms import admin_decimal_overrides
from core.text import quantity_text

from . import selectors, services
from .models import (
    ENTITLEMENT_VALUE_NAMES,
    Feature,
    Plan,
    PlanEntitlement,
    PlanVersion,
    TopUpPack,
    VersionStatus,
)


@admin.register(Feature)
class FeatureAdmin(SimpleHistoryAdmin):
    list_display = ["name", "key", "kind", "unit", "aggregation", "plan_count"]
    list_filter = ["kind", "aggregation"]
    search_fields = ["key", "name", "description"]
    ordering = ["name"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(plan_count=Count("plan_entitlements"))

    @admin.display(description="Plans", ordering="plan_count")
    def plan_count(self, obj):
        return obj.plan_count

    def get_readonly_fields(self, request, obj=None):
        # The key is what clients' code calls: fixed once created.
        return ["key"] if obj else []

    def get_prepopulated_fields(self, request, obj=None):
        return {} if obj else {"key": ["name"]}


class CurrentVersionFormSet(BaseInlineFormSet):
    """The plan's entitlements as offered now: its published version's rows. New rows join that
    version (in place: at once for its subscribers); a draft is edited on its own page."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.version = (
            selectors.plan_version_current(plan=self.instance) if self.instance.pk else None
        )
        self.queryset = self.queryset.filter(version=self.version)

    def clean(self):
        super().clean()
        features = [
            form.cleaned_data["feature"]
            for form in self.forms
            if form.cleaned_data.get("feature") and not form.cleaned_data.get("DELETE")
        ]
        if len(features) != len(set(features)):
            raise ValidationError("One entitlement per feature: a feature is listed twice.")

    def save_new(self, form, commit=True):
        form.instance.version = self.version or services.plan_current_version_sync(
            plan=self.instance
        )
        return super().save_new(form, commit=commit)


class PlanEntitlementInline(admin.TabularInline):
    formfield_overrides = admin_decimal_overrides()
    model = PlanEntitlement
    formset = CurrentVersionFormSet
    fk_name = "plan"
    extra = 0
    autocomplete_fields = ["feature"]
    fields = ["feature", *ENTITLEMENT_VALUE_NAMES]


@admin.register(Plan)
class PlanAdmin(SimpleHistoryAdmin):
    list_display = ["name", "key", "price_display", "interval", "status", "public", "rank"]
    list_display += ["entitlement_count"]
    list_filter = ["status", "interval", "public"]
    search_fields = ["key", "name", "description"]
    prepopulated_fields = {"key": ["name"]}
    ordering = ["rank", "name"]

    def get_inlines(self, request, obj):
        return [PlanEntitlementInline, PlanVersionInline] if obj else [PlanEntitlementInline]

    def get_queryset(self, request):
        current = Q(entitlements__version__status=VersionStatus.PUBLISHED)
        return (
            super()
            .get_queryset(request)
            .annotate(entitlement_count=Count("entitlements", filter=current))
        )

    def save_model(self, request, obj, form, change):
        # The plan's price is its published version's; a new plan gets its version 1.
        super().save_model(request, obj, form, change)
        services.plan_current_version_sync(plan=obj)

    @admin.display(description="Price", ordering="price")
    def price_display(self, obj):
        return f"{obj.price} / {obj.interval}"

    @admin.display(description="Entitlements", ordering="entitlement_count")
    def entitlement_count(self, obj):
        return obj.entitlement_count


class PlanVersionInline(admin.TabularInline):
    """A plan's versions, newest first: read here, changed through the plan editor (drafts,
    publishing) so that publishing always goes through its service."""

    model = PlanVersion
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ["number", "status", "price", "published_at", "subscribers"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                subscriber_count=Count(
                    "subscriptions",
                    filter=Q(subscriptions__status__in=selectors.CURRENT_SUBSCRIPTION),
                )
            )
            .order_by("-number")
        )

    @admin.display(description="Active subscribers")
    def subscribers(self, obj):
        return obj.subscriber_count


class VersionEntitlementInline(admin.TabularInline):
    model = PlanEntitlement
    fk_name = "version"
    extra = 0
    can_delete = False
    fields = PlanEntitlementInline.fields
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(PlanVersion)
class PlanVersionAdmin(SimpleHistoryAdmin):
    """Versions are made, edited and published in the plan editor; the admin shows them and
    their history (who published what, when)."""

    list_display = ["plan", "number", "status", "price", "published_at", "subscriber_count"]
    list_filter = ["status", "plan"]
    search_fields = ["plan__name", "plan__key"]
    list_select_related = ["plan"]
    fields = ["plan", "number", "status", "price", "published_at", "editor"]
    readonly_fields = fields
    inlines = [VersionEntitlementInline]

    def get_queryset(self, request):
        active = Q(subscriptions__status__in=selectors.CURRENT_SUBSCRIPTION)
        return (
            super()
            .get_queryset(request)
            .annotate(subscribers=Count("subscriptions", filter=active, distinct=True))
        )

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="Active subscribers", ordering="subscribers")
    def subscriber_count(self, obj):
        return obj.subscribers

    @admin.display(description="Edit")
    def editor(self, obj):
        url = reverse("catalog:plan_version", args=[obj.plan.key, obj.number])
        return format_html('<a href="{}">Open in the plan editor</a>', url)


@admin.register(PlanEntitlement)
class PlanEntitlementAdmin(SimpleHistoryAdmin):
    formfield_overrides = admin_decimal_overrides()
    list_display = ["plan", "version", "feature", "summary", "reset", "enforcement"]
    list_display += ["show_on_invoice"]
    list_filter = ["plan", "version__status", "feature__kind", "enforcement", "reset"]
    list_filter += ["show_on_invoice"]
    search_fields = ["plan__name", "plan__key", "feature__name", "feature__key"]
    autocomplete_fields = ["plan", "feature"]
    list_select_related = ["plan", "version", "feature"]
    readonly_fields = ["plan", "version"]

    def has_add_permission(self, request):
        # An entitlement belongs to a version: add it on its plan (or in the plan editor).
        return False

    def has_change_permission(self, request, obj=None):
        # A superseded version is what its subscribers were promised: it never changes.
        superseded = (
            isinstance(obj, PlanEntitlement) and obj.version.status == VersionStatus.SUPERSEDED
        )
        return super().has_change_permission(request, obj) and not superseded

    @admin.display(description="Includes")
    def summary(self, obj):
        feature = obj.feature
        if feature.kind == "boolean":
            return "enabled" if obj.enabled else "disabled"
        if feature.kind == "config":
            return obj.value
        if obj.unlimited:
            return "unlimited"
        return quantity_text(obj.limit, feature.unit)


@admin.register(TopUpPack)
class TopUpPackAdmin(SimpleHistoryAdmin):
    formfield_overrides = admin_decimal_overrides()
    list_display = ["name", "key", "feature", "quantity", "price", "expiry", "active"]
    list_filter = ["active", "expiry", "feature"]
    search_fields = ["key", "name", "feature__name"]
    autocomplete_fields = ["feature"]
    filter_horizontal = ["plans"]
    prepopulated_fields = {"key": ["name"]}
    list_select_related = ["feature"]
