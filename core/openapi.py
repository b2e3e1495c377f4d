"""The OpenAPI contract, written once for every endpoint: the error responses each operation can
give (in the one error format of DESIGN.md) and operationIds in the domain's words. Views
declare only what is their own (the success bodies); pagination.py documents its bounds."""

import re

from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers


class ErrorOut(serializers.Serializer):
    """`{"error": {"code", "message", "details"}}`: every 4xx and 5xx of the API."""

    error = serializers.DictField(read_only=True)

    class Meta:
        ref_name = "Error"


ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "example": "customer_not_found"},
                "message": {"type": "string", "example": "No customer 'acme'."},
                "details": {"type": "object", "additionalProperties": True},
            },
            "required": ["code", "message", "details"],
        }
    },
    "required": ["error"],
}

# Why each status can happen; which operations get it is decided in `_error_statuses`.
ERROR_DESCRIPTIONS = {
    "400": "Invalid input (`invalid`, `parse_error` or a more precise code); `details` names "
    "the fields.",
    "402": "The payment provider refused the payment (`payment_failed`); nothing was sold.",
    "401": "No API key, or an unknown or revoked one (`unauthenticated`).",
    "403": "The key's scope does not allow this call (`insufficient_scope`).",
    "404": "A customer, feature, plan, pack or other object named in the path does not exist.",
    "409": "It conflicts with existing data (`conflict`, or `in_use` for a delete).",
    "415": "The body is not `application/json` (`unsupported_media_type`).",
    "429": "The key is over its rate (`throttled`); retry after `Retry-After` seconds.",
    "503": "The database is briefly unavailable (`unavailable`); retry with the same ids.",
}
ERROR_REF = "#/components/schemas/Error"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

# --- operationIds ---------------------------------------------------------------------------
# One scheme: the path's nouns, singular where an id follows them (or for a create), joined to
# a verb: `<nouns>_list` (GET a collection), `<noun>_create` (POST to it), `<noun>_get`,
# `_replace` (PUT), `_update` (PATCH), `_delete`; a path that ends in an action is named by it
# (`customer_entitlement_consume`); where the domain has its own word for a write it replaces
# the generic verb (`customer_grant_void`). test_api_schema.py lists them all.
ACTIONS = {"consume": "consume", "commit": "commit", "publish": "publish", "reversal": "reverse"}
DOMAIN_VERBS = {
    ("POST", "usage"): "ingest",
    ("POST", "topups"): "purchase",
    ("DELETE", "subscription"): "cancel",
    ("DELETE", "grants"): "void",
    ("DELETE", "overrides"): "end",
    ("DELETE", "reservations"): "release",
}
GENERIC_VERBS = {"GET": "get", "PUT": "replace", "PATCH": "update", "DELETE": "delete"}
# Nouns that are one thing per parent (no id follows them) and stay as they are.
SINGULAR_NOUNS = frozenset({"usage", "subscription", "impact"})


def _singular(noun: str) -> str:
    return noun if noun in SINGULAR_NOUNS or not noun.endswith("s") else noun[:-1]


def operation_id(method: str, path: str) -> str:
    """The operationId of `method` on an /api/v1/ path template, by the scheme above."""
    segments = [s for s in re.sub(r"^/api/v\d+/", "", path).split("/") if s]
    method, last = method.upper(), segments[-1]
    if last in ACTIONS:
        return "_".join([*_nouns(segments[:-1]), ACTIONS[last]])
    nouns = _nouns(segments)
    noun = segments[-2] if last.startswith("{") else last
    collection = not last.startswith("{") and noun not in SINGULAR_NOUNS
    if collection and method == "GET":
        nouns[-1] = noun.replace("-", "_")  # a collection is listed in the plural
        return "_".join([*nouns, "list"])
    verb = DOMAIN_VERBS.get((method, noun))
    if verb is None:
        verb = "create" if method == "POST" else GENERIC_VERBS[method]
    return "_".join([*nouns, verb])


def _nouns(segments: list[str]) -> list[str]:
    """Every literal segment, singular (`customers/{id}/grants` -> customer, grant)."""
    return [_singular(s).replace("-", "_") for s in segments if not s.startswith("{")]


class ApiAutoSchema(AutoSchema):
    """drf-spectacular's schema with this API's operationIds and error responses."""

    def get_operation_id(self):
        return operation_id(self.method, self.path)

    def get_operation(self, *args, **kwargs):
        """The operation, its description ending with the key scopes that may make the call."""
        operation = super().get_operation(*args, **kwargs)
        if operation is None or not self.path.startswith("/api/v1/"):
            return operation
        scopes = ["management"]
        if self.method in ("GET", "HEAD"):
            scopes.insert(0, "read")
        if getattr(self.view, "runtime_endpoint", False):
            scopes.insert(0, "runtime")
        note = "Key scopes allowed: " + ", ".join(f"`{s}`" for s in scopes) + "."
        operation["description"] = f"{operation.get('description', '')}\n\n{note}".strip()
        return operation

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        if not self.path.startswith("/api/v1/"):
            return responses
        declared = [code for code in responses if code >= "400"]
        for code in sorted({*declared, *self._error_statuses()}):
            # Declared in a view or added here, an error answers the one error format.
            responses[code] = {
                **responses.get(code, {}),
                "description": ERROR_DESCRIPTIONS[code],
                "content": {"application/json": {"schema": {"$ref": ERROR_REF}}},
            }
        return responses

    def _error_statuses(self) -> list[str]:
        """The error statuses this operation can answer, from what every view shares: the key
        (401, 403, 429), the database (503), input in the path, query or body (400), objects
        named in the path (404), writes (409) and JSON bodies (415)."""
        codes = ["400", "401", "403", "429", "503"]
        if "{" in self.path:
            codes.append("404")
        if self.method in WRITE_METHODS:
            codes.append("409")
        if self.method in BODY_METHODS:
            codes.append("415")
        return sorted(codes)


def error_schema_hook(result, generator, request, public):
    """Declared error bodies (`responses={404: ErrorOut}`) point at the one error schema."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    return result
