from django.contrib import admin, messages

from .models import ApiKey
from .services import api_key_create, api_key_revoke, api_key_update


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
            api_key_update(api_key=obj, name=obj.name, scope=obj.scope)
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
        active = list(queryset.filter(revoked_at__isnull=True))
        for api_key in active:
            api_key_revoke(api_key=api_key)  # refused on its next request, in every process
        self.message_user(request, f"Revoked {len(active)} key(s).")

    def has_delete_permission(self, request, obj=None):
        return False  # revoke instead, so last use stays on record
