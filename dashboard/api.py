"""POST /api/v1/customers/{id}/portal-sessions: a link into one customer's dashboard for the
business's own app (DESIGN.md "Letting end customers in from the business's own app")."""

from drf_spectacular.utils import OpenApiExample, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import time_str
from core.errors import InvalidInput
from customers.api import customer_by_external_id

from .portal import portal_session_create


class PortalSessionView(APIView):
    runtime_endpoint = True  # an application server makes these for its signed-in users

    @extend_schema(
        summary="A single-use link into this customer's dashboard",
        description="Open the `url` in the customer's browser within `expires_at` "
        "(PORTAL_SESSION_TTL seconds, 300 by default): it signs the visitor in to this "
        "customer's dashboard only, once. The dashboard links back to `return_url`.",
        tags=["customers"],
        request=inline_serializer(
            "PortalSessionRequest",
            {"return_url": serializers.URLField(required=False, help_text="http(s) only")},
        ),
        responses={
            201: inline_serializer(
                "PortalSession",
                {"url": serializers.URLField(), "expires_at": serializers.DateTimeField()},
            )
        },
        examples=[
            OpenApiExample(
                "Back to the app's billing page",
                {"return_url": "https://app.example.com/settings/billing"},
                request_only=True,
            )
        ],
    )
    def post(self, request, external_id: str):
        data = request.data if request.data is not None else {}
        if not isinstance(data, dict):
            raise InvalidInput("The body is a JSON object.", code="invalid_body")
        customer = customer_by_external_id(external_id)
        session, url = portal_session_create(customer=customer, return_url=data.get("return_url"))
        return Response(
            {"url": url, "expires_at": time_str(session.expires_at)},
            status=status.HTTP_201_CREATED,
        )
