from django.urls import path

from . import views

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("portal/<str:token>/", views.portal_enter, name="portal_enter"),
    path("embed/", views.embed, name="embed"),
    path("buy/<slug:feature_key>/", views.topup_packs, name="topup_packs"),
    path("buy/pack/<slug:pack_key>/", views.topup_confirm, name="topup_confirm"),
    path("buy/receipt/<str:key>/", views.topup_receipt, name="topup_receipt"),
    path("plans/", views.plans, name="plans"),
    path("plans/<slug:plan_key>/", views.plan_change, name="plan_change"),
    path("plans/changed/<str:number>/", views.plan_changed, name="plan_changed"),
    path("invoices/", views.invoices, name="invoices"),
    path("invoices/<str:number>/", views.invoice_detail, name="invoice_detail"),
    path("invoices/<str:number>/pay/", views.invoice_pay, name="invoice_pay"),
    path("notifications/", views.notifications, name="notifications"),
    path("notifications/<int:pk>/", views.notification_detail, name="notification_detail"),
]
