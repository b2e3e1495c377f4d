from django.contrib import admin, messages
from django.utils import timezone

from .api import api_keys_forget
from .models import ApiKey
from .services import api_key_create


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "scope", "created_at", "last_used_at", "status"]
    list_filter = ["scope", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created_by", "created_at", "last_used_at", "revoked_at"]
    fields = ["name", "scope", "prefix", "created_by", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    @admin.display(description="Status")
    def status(self, obj):
        return "revoked" if obj.revoked_at else "active"

    def save_model(self, request, obj, form, change):
        if change:
            obj.save(update_fields=["name", "scope"])
            api_keys_forget()  # a narrower scope applies at once in this process
            return
        created, key = api_key_create(name=obj.name, scope=obj.scope, created_by=request.user)
        obj.pk = created.pk
        obj.prefix, obj.key_hash, obj.created_at = (
            created.prefix,
            created.key_hash,
            created.created_at,
        )
        messages.warning(
            request,
            f"The new API key is {key} — copy it now: it is stored hashed and never shown again.",
        )

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset):
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        api_keys_forget()  # this process at once; the others within api.KEY_CACHE_SECONDS
        self.message_user(request, f"Revoked {count} key(s).")

    def has_delete_permission(self, request, obj=None):
        return False  # revoke instead, so last use stays on record
