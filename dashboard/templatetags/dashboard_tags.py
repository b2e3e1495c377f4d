from django import template

from core.text import quantity_text

register = template.Library()


@register.filter
def amount(value, unit: str = "") -> str:
    """`87.5 GB`, `1,000 GB`: a quantity in its unit, without trailing zeros."""
    return quantity_text(value, unit or "")
