"""API key lifecycle."""

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from .key_changes import key_changed_announce
from .models import ApiKey, ApiScope, api_key_generate


@transaction.atomic
def api_key_create(
    *, name: str, scope: str = ApiScope.MANAGEMENT, created_by=None
) -> tuple[ApiKey, str]:
    """Creates a key of `scope`; returns the row and the key itself, which is never stored or
    shown again."""
    if not name or not name.strip():
        raise ValidationError({"name": "Give the key a name, e.g. the service that uses it."})
    if scope not in ApiScope.values:
        raise ValidationError({"scope": f"The scope is one of {', '.join(ApiScope.values)}."})
    key, prefix, key_hash = api_key_generate()
    api_key = ApiKey.objects.create(
        name=name.strip(), prefix=prefix, key_hash=key_hash, scope=scope, created_by=created_by
    )
    return api_key, key


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revokes the key: refused on its next request in every process (key_changes)."""
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    key_changed_announce()
    return api_key


@transaction.atomic
def api_key_update(*, api_key: ApiKey, name: str, scope: str) -> ApiKey:
    """Renames the key or changes its scope; a narrower scope applies on its next request."""
    if scope not in ApiScope.values:
        raise ValidationError({"scope": f"The scope is one of {', '.join(ApiScope.values)}."})
    api_key.name, api_key.scope = name.strip(), scope
    api_key.full_clean()
    api_key.save(update_fields=["name", "scope"])
    key_changed_announce()
    return api_key
