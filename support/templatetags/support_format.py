from django import template

from core.text import quantity_text

register = template.Library()


@register.filter
def qty(value, unit: str = "") -> str:
    """`{{ grant.quantity|qty:feature.unit }}` -> `20 GB` (no trailing zeros)."""
    return quantity_text(value, unit or "")
