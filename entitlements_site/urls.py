from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from . import views

admin.site.site_header = "Entitlements administration"
admin.site.site_title = "Entitlements"
admin.site.index_title = "Catalog, customers and billing"

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("accounts/login/", views.login, name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/", include(("entitlements_site.api_urls", "api"))),
    path("catalog/", include("catalog.urls")),
    path("support/", include("support.urls")),
    path("dashboard/", include("dashboard.urls")),
    path("billing/", include("billing.urls")),
]
