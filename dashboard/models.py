"""Portal sessions: the business's own app lets its signed-in user into this dashboard
(DESIGN.md "Letting end customers in from the business's own app")."""

import hashlib

from django.db import models

from customers.models import Customer


def portal_token_hash(token: str) -> str:
    # Tokens are 256-bit random strings: a plain SHA-256 is enough, as for API keys.
    return hashlib.sha256(token.encode()).hexdigest()


class PortalSession(models.Model):
    """A single-use link into one customer's dashboard, valid until `expires_at`. Only the
    token's hash is stored: the URL itself is shown once, to the API client that asked."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="+")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    return_url = models.URLField(max_length=2000, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["expires_at"])]

    def __str__(self) -> str:
        return f"{self.customer} until {self.expires_at:%Y-%m-%d %H:%M}"
