from django.urls import path

from . import version_views, views

app_name = "catalog"

urlpatterns = [
    path("", views.plan_list, name="plan_list"),
    path("compare/", views.plan_compare, name="plan_compare"),
    path("plans/<slug:key>/", views.plan_detail, name="plan_detail"),
    path("plans/<slug:key>/entitlements/add/", views.entitlement_add, name="entitlement_add"),
    path(
        "plans/<slug:key>/versions/",
        version_views.version_draft_create,
        name="version_draft_create",
    ),
    path(
        "plans/<slug:key>/versions/<int:number>/", version_views.plan_version, name="plan_version"
    ),
    path(
        "plans/<slug:key>/versions/<int:number>/entitlements/add/",
        views.entitlement_add,
        name="version_entitlement_add",
    ),
    path(
        "plans/<slug:key>/versions/<int:number>/price/",
        version_views.version_price,
        name="version_price",
    ),
    path(
        "plans/<slug:key>/versions/<int:number>/publish/",
        version_views.version_publish,
        name="version_publish",
    ),
    path(
        "plans/<slug:key>/versions/<int:number>/duplicate/",
        version_views.version_duplicate,
        name="version_duplicate",
    ),
    path("plans/<slug:key>/entitlements/<int:pk>/", views.entitlement_row, name="entitlement_row"),
    path(
        "plans/<slug:key>/entitlements/<int:pk>/edit/",
        views.entitlement_edit,
        name="entitlement_edit",
    ),
    path(
        "plans/<slug:key>/entitlements/<int:pk>/remove/",
        views.entitlement_remove,
        name="entitlement_remove",
    ),
]
