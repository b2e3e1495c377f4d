"""The customer's own invoices (linking to the printable invoice page) and usage alerts."""

from django.urls import reverse

from billing.models import Invoice
from billing.services.purchases import topup_purchase
from customers.models import Notification

from .conftest import notification_for

INVOICES = reverse("dashboard:invoices")
NOTIFICATIONS = reverse("dashboard:notifications")


def test_the_invoices_list_shows_own_invoices_linking_to_the_invoice_page(client_a, world):
    topup_purchase(customer=world.a, pack=world.pack, idempotency_key="k")
    html = client_a.get(INVOICES).content.decode()
    own = Invoice.objects.filter(customer=world.a)
    assert own.count() == 2
    for invoice in own:
        assert f'href="/dashboard/invoices/{invoice.number}/"' in html
        assert client_a.get(f"/dashboard/invoices/{invoice.number}/").status_code == 200
        assert client_a.get(f"/billing/invoices/{invoice.number}/").status_code == 200
    assert "Top-up purchase" in html and "Paid" in html and "$10.00" in html
    for invoice in Invoice.objects.filter(customer=world.b):
        assert invoice.number not in html


def test_notifications_list_threshold_feature_time_and_status(client_a, world):
    notification_for(world.a, world.transfer, threshold=100, status="failed")
    html = client_a.get(NOTIFICATIONS).content.decode()
    crossing = Notification.objects.get(customer=world.a, feature=world.storage)  # 85 GB: 80%
    assert crossing.threshold == 80
    # (sent after commit: in a test transaction it stays pending)
    assert crossing.status == "pending"
    assert "Storage" in html and "80%" in html and "Sending" in html
    assert "Data transfer" in html and "100%" in html and "Not delivered" in html
    assert f'href="/dashboard/notifications/{crossing.pk}/"' in html


def test_a_notification_page_shows_what_was_sent(client_a, world):
    notification = notification_for(world.a, world.storage, threshold=90)
    html = client_a.get(reverse("dashboard:notification_detail", args=[notification.pk])).content
    assert b"You reached 90% of your Storage" in html
    assert b"85 GB of 100 GB" in html and b"ops@acme.test" in html and b">Sent<" in html


def test_no_notifications_is_an_explained_empty_state(client, world):
    Notification.objects.filter(customer=world.b).delete()
    client.force_login(world.user_b)
    html = client.get(NOTIFICATIONS).content
    assert b"No alerts yet" in html and b"80% and 100%" in html
