"""API key lifecycle."""

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

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
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    from .api import api_keys_forget

    api_keys_forget()  # this process at once; the others within api.KEY_CACHE_SECONDS
    return api_key
