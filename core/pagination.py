"""The list endpoints' query parameters, held to what the schema documents: pagination bounds
and strict boolean filters."""

import re

from django_filters import BooleanFilter
from django_filters.rest_framework import DjangoFilterBackend
from rest_framework.pagination import LimitOffsetPagination

from .errors import InvalidInput


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    """`limit` 1-1000 (default 50) and `offset` 0-1,000,000,000, as the schema says: anything
    else is a 400 `invalid` naming the parameter, not silently replaced by the default (which
    hid typos) nor passed to the database (which refuses offsets past its integer range)."""

    default_limit = 50
    max_limit = 1000
    max_offset = 1_000_000_000

    def get_limit(self, request):
        return self._bounded(request, self.limit_query_param, 1, self.max_limit, self.default_limit)

    def get_offset(self, request):
        return self._bounded(request, self.offset_query_param, 0, self.max_offset, 0)

    def _bounded(self, request, name: str, low: int, high: int, default: int) -> int:
        values = request.query_params.getlist(name)
        if not values:
            return default
        text = values[-1]
        if (
            len(values) > 1
            or not re.fullmatch(r"[0-9]{1,10}", text)
            or not (low <= int(text) <= high)
        ):
            raise InvalidInput(
                f"{name} is a whole number from {low} to {high}.",
                code="invalid",
                details={name: [f"A whole number from {low} to {high}, given once."]},
            )
        return int(text)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        bounds = {
            self.limit_query_param: {"minimum": 1, "maximum": self.max_limit, "default": 50},
            self.offset_query_param: {"minimum": 0, "maximum": self.max_offset, "default": 0},
        }
        for parameter in parameters:
            parameter["schema"].update(bounds[parameter["name"]])
        return parameters


class StrictFilterBackend(DjangoFilterBackend):
    """A boolean filter (`?public=`, `?active=`) is `true` or `false`, given once: anything else
    is a 400 naming it, not silently ignored (which listed everything for `?public=yes`)."""

    def get_filterset(self, request, queryset, view):
        filterset = super().get_filterset(request, queryset, view)
        for name, query_filter in (filterset.filters if filterset else {}).items():
            values = request.query_params.getlist(name)
            if (
                isinstance(query_filter, BooleanFilter)
                and values
                and (len(values) > 1 or values[0] not in ("true", "false"))
            ):
                raise InvalidInput(
                    f"{name} is true or false.",
                    code="invalid",
                    details={name: ["true or false, given once."]},
                )
        return filterset
