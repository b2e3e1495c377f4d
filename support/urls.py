from django.urls import path

from . import views

app_name = "support"

urlpatterns = [
    path("", views.search, name="search"),
    path("customers/<int:pk>/", views.customer, name="customer"),
    path("customers/<int:pk>/change-plan/", views.change_plan, name="change_plan"),
    path("customers/<int:pk>/plan-version/", views.version_move, name="version_move"),
    path("customers/<int:pk>/grants/", views.grant_add, name="grant_add"),
    path("customers/<int:pk>/grants/<int:grant_pk>/void/", views.grant_void, name="grant_void"),
    path("customers/<int:pk>/topups/", views.topup_sell, name="topup_sell"),
    path(
        "customers/<int:pk>/invoices/<str:number>/void/",
        views.invoice_void,
        name="invoice_void",
    ),
    path("customers/<int:pk>/usage/", views.usage_events, name="usage_events"),
    path(
        "customers/<int:pk>/usage/<int:event_pk>/reverse/",
        views.usage_reverse,
        name="usage_reverse",
    ),
    path("customers/<int:pk>/overrides/", views.override_add, name="override_add"),
    path(
        "customers/<int:pk>/overrides/<int:override_pk>/end/",
        views.override_end,
        name="override_end",
    ),
]
