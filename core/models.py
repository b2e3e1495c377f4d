"""API keys: only a hash and a visible prefix are stored; the key is shown once."""

import hashlib
import secrets

from django.conf import settings
from django.db import models

KEY_PREFIX = "ent_"


def api_key_hash(key: str) -> str:
    # Keys are 256-bit random strings, so a plain SHA-256 is enough (no password stretching).
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_generate() -> tuple[str, str, str]:
    """A new key: (key, visible prefix, hash)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, key[: len(KEY_PREFIX) + 8], api_key_hash(key)


class ApiScope(models.TextChoices):
    """What a key may call (DESIGN.md "HTTP API"): an application server needs `runtime` only."""

    RUNTIME = "runtime", "Runtime: check, consume, report usage"
    READ = "read", "Read: every GET"
    MANAGEMENT = "management", "Management: everything"


class ApiKey(models.Model):
    name = models.CharField(max_length=200)
    scope = models.CharField(
        max_length=16,
        choices=ApiScope.choices,
        default=ApiScope.MANAGEMENT,
        help_text="Give an application server a runtime key: it cannot change the catalog.",
    )
    prefix = models.CharField(max_length=32, editable=False, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
