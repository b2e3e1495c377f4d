"""The root urls plus billing's, until the root urlconf includes them."""

from django.urls import include, path

from entitlements_site.urls import urlpatterns as root_urlpatterns

included = any(getattr(p, "namespace", None) == "billing" for p in root_urlpatterns)
urlpatterns = [*root_urlpatterns] + (
    [] if included else [path("billing/", include("billing.urls"))]
)
