from django.contrib import admin
from django.db.models import Count
from simple_history.admin import SimpleHistoryAdmin

from core.forms import admin_decimal_overrides
from core.text import quantity_text

from .models import Feature, Plan, PlanEntitlement, TopUpPack


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


class PlanEntitlementInline(admin.TabularInline):
    formfield_overrides = admin_decimal_overrides()
    model = PlanEntitlement
    extra = 0
    autocomplete_fields = ["feature"]
    fields = [
        "feature",
        "enabled",
        "limit",
        "unlimited",
        "reset",
        "enforcement",
        "overage_price",
        "notify_at",
        "value",
        "show_on_invoice",
    ]


@admin.register(Plan)
class PlanAdmin(SimpleHistoryAdmin):
    list_display = ["name", "key", "price_display", "interval", "status", "public", "rank"]
    list_display += ["entitlement_count"]
    list_filter = ["status", "interval", "public"]
    search_fields = ["key", "name", "description"]
    prepopulated_fields = {"key": ["name"]}
    inlines = [PlanEntitlementInline]
    ordering = ["rank", "name"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(entitlement_count=Count("entitlements"))

    @admin.display(description="Price", ordering="price")
    def price_display(self, obj):
        return f"{obj.price} / {obj.interval}"

    @admin.display(description="Entitlements", ordering="entitlement_count")
    def entitlement_count(self, obj):
        return obj.entitlement_count


@admin.register(PlanEntitlement)
class PlanEntitlementAdmin(SimpleHistoryAdmin):
    formfield_overrides = admin_decimal_overrides()
    list_display = ["plan", "feature", "summary", "reset", "enforcement", "show_on_invoice"]
    list_filter = ["plan", "feature__kind", "enforcement", "reset", "show_on_invoice"]
    search_fields = ["plan__name", "plan__key", "feature__name", "feature__key"]
    autocomplete_fields = ["plan", "feature"]
    list_select_related = ["plan", "feature"]

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
