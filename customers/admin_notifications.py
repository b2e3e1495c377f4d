"""Admin of notifications and webhooks (imported by customers/admin.py). Outbox rows are
read-only: what was sent, to whom, and what went wrong; actions re-queue them."""

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q

from . import notifications, webhooks
from .models import (
    WEBHOOK_EVENT_TYPES,
    Notification,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEndpoint,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the system: viewable, never added or edited by hand."""

    def has_add_permission(self, request):
        return False

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "status", "customer", "feature", "threshold", "attempts"]
    list_display += ["sent_at", "last_error_short"]
    list_filter = ["status", "threshold", "created_at"]
    search_fields = ["customer__name", "customer__external_id", "customer__email", "feature__key"]
    list_select_related = ["customer", "feature"]
    date_hierarchy = "created_at"
    actions = ["resend"]

    @admin.display(description="Last error")
    def last_error_short(self, obj):
        return (obj.last_error[:80] + "…") if len(obj.last_error) > 80 else obj.last_error

    @admin.action(
        description="Resend the selected pending or failed notifications", permissions=["change"]
    )
    def resend(self, request, queryset):
        count = notifications.notifications_resend(notifications=queryset)
        skipped = queryset.count() - count
        self.message_user(request, f"{count} notification(s) queued to send.", messages.SUCCESS)
        if skipped:
            self.message_user(request, f"{skipped} already sent: not sent again.", messages.INFO)


class WebhookEndpointForm(forms.ModelForm):
    event_types = forms.MultipleChoiceField(
        choices=WEBHOOK_EVENT_TYPES,
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="None checked: every event type.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["url", "description", "active", "event_types", "secret"]


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = WebhookEndpointForm
    list_display = ["url", "description", "active", "event_types", "delivered", "pending"]
    list_display += ["failed"]
    list_filter = ["active"]
    search_fields = ["url", "description"]

    def get_queryset(self, request):
        counts = {
            status: Count("deliveries", filter=Q(deliveries__status=status))
            for status in WebhookDeliveryStatus.values
        }
        return super().get_queryset(request).annotate(**counts)

    @admin.display(description="Delivered", ordering="delivered")
    def delivered(self, obj):
        return obj.delivered

    @admin.display(description="Pending", ordering="pending")
    def pending(self, obj):
        return obj.pending

    @admin.display(description="Failed", ordering="failed")
    def failed(self, obj):
        return obj.failed


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "event_type", "endpoint", "status", "attempts", "response_code"]
    list_display += ["delivered_at", "last_error"]
    list_filter = ["status", "event_type", "endpoint"]
    search_fields = ["event_id", "endpoint__url"]
    list_select_related = ["endpoint"]
    date_hierarchy = "created_at"
    actions = ["retry"]

    def has_change_permission(self, request, obj=None):
        return False

    def has_retry_permission(self, request):
        # Whoever manages the endpoints may push their deliveries again.
        return request.user.has_perm("customers.change_webhookendpoint")

    @admin.action(
        description="Retry the selected pending or failed deliveries", permissions=["retry"]
    )
    def retry(self, request, queryset):
        count = webhooks.deliveries_retry(deliveries=queryset)
        self.message_user(request, f"Queued {count} webhook deliveries.", messages.SUCCESS)
