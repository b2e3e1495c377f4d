from django import template

from core.text import money_text, quantity_text

register = template.Library()


@register.filter
def money(value) -> str:
    """`$0.0125`, `€50.00`: as many decimals as the amount has, at least the currency's."""
    return money_text(value) if value is not None else ""


@register.filter
def quantity(value) -> str:
    """`87.5`, `10,000`: no trailing zeros."""
    return quantity_text(value)
