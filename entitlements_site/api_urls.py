"""/api/v1/: the paths of DESIGN.md "HTTP API"."""

from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from billing import api as billing_api
from catalog import api as catalog_api
from catalog import version_api as catalog_version_api
from core.api import FastJSONRenderer, api_not_found
from customers import api as customers_api
from dashboard import api as dashboard_api

# The schema and its docs page are public: they describe the API, not anyone's data.
PUBLIC = {"authentication_classes": [], "permission_classes": [], "throttle_classes": []}


class _ErrorsAsJSON:
    """A wrong method on the schema or docs page answers the API's error JSON (a 405), not
    an error rendered as YAML or HTML by the page's own renderer."""

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if response.status_code >= 400 and getattr(response, "data", None) is not None:
            response.accepted_renderer = FastJSONRenderer()
            response.accepted_media_type = FastJSONRenderer.media_type
        return response


class SchemaView(_ErrorsAsJSON, SpectacularAPIView):
    pass


class DocsView(_ErrorsAsJSON, SpectacularSwaggerSplitView):
    pass


C = "customers/<str:external_id>"
E = f"{C}/entitlements/<str:feature_key>"
R = f"{E}/reservations"
V = "plans/<str:plan_key>/versions/<int:n>"

v1 = [
    path("customers", customers_api.CustomerListView.as_view(), name="customers"),
    path(C, customers_api.CustomerDetailView.as_view(), name="customer"),
    path(f"{C}/entitlements", customers_api.EntitlementsView.as_view(), name="entitlements"),
    path(E, customers_api.EntitlementView.as_view(), name="entitlement"),
    path(f"{E}/consume", customers_api.ConsumeView.as_view(), name="consume"),
    path(f"{E}/usage", customers_api.UsageBucketsView.as_view(), name="usage-buckets"),
    path(f"{R}", customers_api.ReservationListView.as_view(), name="reservations"),
    path(
        f"{R}/<str:reservation_id>",
        customers_api.ReservationDetailView.as_view(),
        name="reservation",
    ),
    path(
        f"{R}/<str:reservation_id>/commit",
        customers_api.ReservationCommitView.as_view(),
        name="reservation-commit",
    ),
    path("usage", customers_api.UsageBatchView.as_view(), name="usage"),
    path(
        f"{C}/usage/<path:event_id>/reversal",
        customers_api.ReversalView.as_view(),
        name="usage-reversal",
    ),
    path(f"{C}/overrides", customers_api.OverrideListView.as_view(), name="overrides"),
    path(f"{C}/overrides/<int:pk>", customers_api.OverrideDetailView.as_view(), name="override"),
    path(f"{C}/grants", customers_api.GrantListView.as_view(), name="grants"),
    path(f"{C}/grants/<int:pk>", customers_api.GrantDetailView.as_view(), name="grant"),
    path(f"{C}/subscription", billing_api.SubscriptionView.as_view(), name="subscription"),
    path(f"{C}/topups", billing_api.TopUpView.as_view(), name="topups"),
    path(f"{C}/invoices", billing_api.InvoiceListView.as_view(), name="invoices"),
    path(
        f"{C}/portal-sessions",
        dashboard_api.PortalSessionView.as_view(),
        name="portal-sessions",
    ),
    path(f"{C}/invoices/<str:number>", billing_api.InvoiceDetailView.as_view(), name="invoice"),
    path("features", catalog_api.FeatureListView.as_view(), name="features"),
    path("features/<str:feature_key>", catalog_api.FeatureDetailView.as_view(), name="feature"),
    path("plans", catalog_api.PlanListView.as_view(), name="plans"),
    path("plans/<str:plan_key>", catalog_api.PlanDetailView.as_view(), name="plan"),
    path(
        "plans/<str:plan_key>/versions",
        catalog_version_api.PlanVersionListView.as_view(),
        name="plan-versions",
    ),
    path(f"{V}", catalog_version_api.PlanVersionDetailView.as_view(), name="plan-version"),
    path(
        f"{V}/impact",
        catalog_version_api.PlanVersionImpactView.as_view(),
        name="plan-version-impact",
    ),
    path(
        f"{V}/publish",
        catalog_version_api.PlanVersionPublishView.as_view(),
        name="plan-version-publish",
    ),
    path(
        f"{V}/duplicate",
        catalog_version_api.PlanVersionDuplicateView.as_view(),
        name="plan-version-duplicate",
    ),
    path("topup-packs", catalog_api.TopUpPackListView.as_view(), name="topup-packs"),
    path(
        "topup-packs/<str:pack_key>", catalog_api.TopUpPackDetailView.as_view(), name="topup-pack"
    ),
]

urlpatterns = [
    path("schema/", SchemaView.as_view(**PUBLIC), name="schema"),
    # The split view serves its start-up script as a file (?script): no inline script, so the
    # page runs under the site's Content-Security-Policy.
    path("docs/", DocsView.as_view(url_name="api:schema", **PUBLIC), name="docs"),
    path("v1/", include(v1)),
    re_path(r"^.*$", api_not_found),
]
