"""Reversals through the API (DESIGN.md "Reversals: usage given back"), on both databases:
`POST /api/v1/customers/{id}/usage/{event_id}/reversal` gives an event's units back to the
windows it fell in and to the grants it drew on (unless expired or voided since), once.

The fixtures (conftest.py): customer `acme` on Basic, `data-transfer` a sum with a hard limit
of 20 a billing period, `storage` a `latest` level."""

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from customers import services as customer_services
from customers.models import Grant, UsageCounter, UsageDraw, UsageEvent, UsageReversal
from customers.selectors import usage_buckets
from customers.usage import usage_counters_rebuild

pytestmark = pytest.mark.django_db

TRANSFER = "/api/v1/customers/acme/entitlements/data-transfer"


def consume(api, quantity: str, event_id: str, **extra) -> dict:
    response = api.post(
        f"{TRANSFER}/consume", {"quantity": quantity, "event_id": event_id, **extra}, format="json"
    )
    assert response.status_code == 200, response.content
    return response.json()


def reverse(api, event_id: str, reason="Job failed on our side", customer="acme"):
    return api.post(
        f"/api/v1/customers/{customer}/usage/{event_id}/reversal",
        {"reason": reason} if reason is not None else {},
        format="json",
    )


def grant(customer, features, quantity: str, **fields) -> Grant:
    return customer_services.grant_create(
        customer=customer, feature=features["transfer"], quantity=Decimal(quantity), **fields
    )


def test_a_reversal_gives_units_back_to_the_period_and_the_grant_once(customer, features, api):
    # Given 20 of allowance and a grant of 10, and 25 consumed: 20 allowance, 5 from the grant
    pack = grant(customer, features, "10")
    consume(api, "18", "job-1")
    assert consume(api, "7", "job-2")["entitlement"]["balance"] == "5"
    draws = list(UsageDraw.objects.filter(event__event_id="job-2").values_list("grant", "quantity"))
    assert draws == [(pack.pk, Decimal("5"))]

    # When job-2 is reversed
    response = reverse(api, "job-2")

    # Then its 7 go back: 2 to the allowance, 5 to the grant
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["event_id"], body["quantity"]) == ("job-2", "7")
    assert body["entitlement"]["usage"] == "18"
    assert body["entitlement"]["granted"] == "10"
    assert body["entitlement"]["balance"] == "12"
    pack.refresh_from_db()
    assert pack.consumed == 0
    assert api.get(TRANSFER).json()["balance"] == "12"

    # Again, even with another reason: 200, the same body, the first reversal stands
    again = reverse(api, "job-2", reason="Another reason")
    assert again.status_code == 200
    assert again.json() == body
    reversal = UsageReversal.objects.get(event__event_id="job-2")
    assert reversal.reason == "Job failed on our side"
    assert reversal.api_key_name == "tests"
    assert reversal.given_back == {str(pack.pk): "5"}
    pack.refresh_from_db()
    assert pack.consumed == 0


def test_units_of_an_expired_or_voided_grant_are_not_given_back(customer, features, api):
    # Given the allowance used up, then 3 from a grant that expires and 4 from one voided later
    now = timezone.now()
    soon = grant(customer, features, "3", expires_at=now + dt.timedelta(days=1))
    later = grant(customer, features, "4", expires_at=now + dt.timedelta(days=2))
    consume(api, "20", "allowance")
    consume(api, "7", "from-grants")
    soon.refresh_from_db()
    later.refresh_from_db()
    assert (soon.consumed, later.consumed) == (3, 4)
    # ...the first grant has expired since, the second was voided
    Grant.objects.filter(pk=soon.pk).update(
        effective_at=now - dt.timedelta(days=2), expires_at=now - dt.timedelta(seconds=1)
    )
    customer_services.grant_void(grant=later)

    # When the event is reversed
    assert reverse(api, "from-grants").status_code == 201

    # Then usage drops by 7, but neither grant gets its units back
    soon.refresh_from_db()
    later.refresh_from_db()
    assert (soon.consumed, later.consumed) == (3, 4)
    assert UsageReversal.objects.get(event__event_id="from-grants").given_back == {}
    e = api.get(TRANSFER).json()
    assert (e["usage"], e["granted"], e["balance"], e["overage"]) == ("20", "0", "0", "0")
    counter = UsageCounter.objects.get(customer=customer, feature=features["transfer"])
    assert (counter.used, counter.drawn) == (20, 0)


def test_the_allowance_is_free_again_when_an_earlier_event_is_reversed(customer, features, api):
    # Given 20 of allowance used by one event, then 3 drawn from a grant of 10
    pack = grant(customer, features, "10")
    consume(api, "20", "big")
    consume(api, "3", "small")

    # When the event that used the allowance is reversed
    body = reverse(api, "big").json()

    # Then the allowance is whole again while the grant keeps what the later event drew:
    # usage 3, all of it from the grant; balance 20 of allowance + 7 of grant
    e = body["entitlement"]
    assert (e["usage"], e["granted"], e["balance"], e["overage"]) == ("3", "7", "27", "0")
    # ...and the next consume burns the allowance first again
    consume(api, "21", "next")
    assert list(
        UsageDraw.objects.filter(event__event_id="next").values_list("grant", "quantity")
    ) == [(pack.pk, Decimal("1"))]
    assert api.get(TRANSFER).json()["balance"] == "6"
    assert consume(api, "7", "too-much")["allowed"] is False


def test_every_window_counting_the_event_drops(customer, features, api):
    # Given an override that resets daily: the day counter is kept besides the billing period
    customer_services.override_create(
        customer=customer, feature=features["transfer"], reason="daily", limit=Decimal("5"),
        reset="day",
    )  # fmt: skip
    consume(api, "4", "daily-1")
    consume(api, "1", "daily-2")
    counters = UsageCounter.objects.filter(customer=customer, feature=features["transfer"])
    assert sorted((c.window, c.used) for c in counters) == [("billing_period", 5), ("day", 5)]

    body = reverse(api, "daily-1").json()

    assert sorted((c.window, c.used) for c in counters.all()) == [
        ("billing_period", 1),
        ("day", 1),
    ]
    assert (body["entitlement"]["usage"], body["entitlement"]["balance"]) == ("1", "4")


def test_bad_reversals_change_nothing(customer, features, api):
    consume(api, "5", "job")
    api.post(
        "/api/v1/usage",
        {
            "events": [
                {"event_id": "lvl", "customer": "acme", "feature": "storage", "quantity": "9"}
            ]
        },
        format="json",
    )

    cases = [
        (reverse(api, "nope"), 404, "event_not_found"),
        (reverse(api, "job", customer="nobody"), 404, "customer_not_found"),
        (reverse(api, "lvl"), 409, "not_reversible"),
        (reverse(api, "job", reason=None), 400, "invalid"),
        (reverse(api, "job", reason="   "), 400, "invalid"),
        (reverse(api, "job", reason="x" * 501), 400, "invalid"),
        (reverse(api, "job", reason=["a list"]), 400, "invalid"),
        (api.post("/api/v1/customers/acme/usage/job/reversal", [1], format="json"), 400, None),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.content
        error = response.json()["error"]
        assert set(error) == {"code", "message", "details"}
        if code:
            assert error["code"] == code
    assert cases[3][0].json()["error"]["details"] == {"reason": ["This field is required."]}
    assert not UsageReversal.objects.exists()
    assert api.get(TRANSFER).json()["usage"] == "5"


def test_a_reversal_needs_a_management_key(customer, api):
    from rest_framework.test import APIClient

    from core.services import api_key_create

    consume(api, "5", "job")
    for scope in ("runtime", "read"):
        _, key = api_key_create(name=scope, scope=scope)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
        response = reverse(client, "job")
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "insufficient_scope"
    assert reverse(api, "job").status_code == 201


def test_event_ids_with_slashes_and_spaces_are_reversible(customer, api):
    consume(api, "2", "jobs/2026 11/a b")
    response = reverse(api, "jobs%2F2026%2011%2Fa%20b")
    assert response.status_code == 201, response.content
    assert response.json()["event_id"] == "jobs/2026 11/a b"


def test_a_replay_of_a_reversed_event_is_a_duplicate_that_counts_nothing(customer, api):
    consume(api, "5", "job")
    reverse(api, "job")

    replay = consume(api, "5", "job")
    batch = api.post(
        "/api/v1/usage",
        {"events": [{"event_id": "job", "customer": "acme", "feature": "data-transfer",
                     "quantity": "5"}]},
        format="json",
    ).json()  # fmt: skip

    assert replay["allowed"] is True
    assert replay["entitlement"]["usage"] == "0"
    assert (batch["accepted"], batch["duplicates"]) == (0, 1)
    assert api.get(TRANSFER).json()["usage"] == "0"


def test_reversed_events_leave_the_series_and_the_rebuild(customer, features, api):
    # Given three events, one reversed
    pack = grant(customer, features, "10")
    consume(api, "15", "a")
    consume(api, "8", "b")  # 5 allowance, 3 grant
    consume(api, "2", "c")  # grant
    reverse(api, "b")

    # The series shows what remains
    series = api.get(f"{TRANSFER}/usage?window=month").json()
    assert sum(Decimal(b["usage"]) for b in series["buckets"]) == 17
    buckets = usage_buckets(customer=customer, feature=features["transfer"], window="month")
    assert sum(b.usage for b in buckets) == 17

    # The counters as the ledger says: the rebuild finds no drift, drawn included
    counter = UsageCounter.objects.get(customer=customer, feature=features["transfer"])
    assert (counter.used, counter.drawn) == (17, 2)
    report = usage_counters_rebuild(dry_run=True)
    assert report.drifts == []
    pack.refresh_from_db()
    assert pack.consumed == 2
    assert UsageEvent.objects.filter(customer=customer, reversed_at__isnull=True).count() == 2


def test_the_batch_path_records_the_draw_ledger(customer, features, api):
    # Given a grant, reported usage that goes past the allowance into it and beyond
    pack = grant(customer, features, "5")
    events = [
        {"event_id": f"r-{n}", "customer": "acme", "feature": "data-transfer", "quantity": q}
        for n, q in enumerate(["12", "10", "6"])
    ]
    assert api.post("/api/v1/usage", {"events": events}, format="json").json()["accepted"] == 3

    # Then the ledger says where each unit went: r-1 took 8 allowance + 2 grant; r-2 3 grant,
    # 3 overage (reported usage is recorded past the hard limit)
    rows = sorted(
        UsageDraw.objects.values_list("event__event_id", "grant", "quantity"),
        key=lambda r: (r[0], r[1] is None),
    )
    assert rows == [
        ("r-1", pack.pk, Decimal("2")),
        ("r-2", pack.pk, Decimal("3")),
        ("r-2", None, Decimal("3")),
    ]

    # And reversing the event that drew on the grant gives its units back
    body = reverse(api, "r-1").json()
    pack.refresh_from_db()
    assert pack.consumed == 3
    e = body["entitlement"]
    assert (e["usage"], e["granted"], e["overage"]) == ("18", "2", "0")


def test_a_batch_without_grants_records_overage(customer, features, api):
    events = [
        {"event_id": f"o-{n}", "customer": "acme", "feature": "data-transfer", "quantity": q}
        for n, q in enumerate(["15", "10"])
    ]
    api.post("/api/v1/usage", {"events": events}, format="json")
    assert list(UsageDraw.objects.values_list("event__event_id", "grant", "quantity")) == [
        ("o-1", None, Decimal("5"))
    ]
    body = reverse(api, "o-1").json()
    assert (body["entitlement"]["usage"], body["entitlement"]["overage"]) == ("15", "0")


def test_a_crossing_after_a_reversal_notifies_again_only_in_a_new_period(customer, api):
    from customers.models import Notification

    # Given 85% of the period's 20 used: the 80% alert is recorded
    consume(api, "17", "big-job")
    assert list(Notification.objects.values_list("threshold", flat=True)) == [80]

    # When the usage is reversed and the customer crosses 80% again in the same period
    reverse(api, "big-job")
    consume(api, "17", "rerun")

    # Then the alert already sent is neither unsent nor sent twice
    assert Notification.objects.count() == 1

    # But crossing it in the next period is a new alert
    period_end = customer.subscriptions.get().current_period_end
    later = (period_end + dt.timedelta(days=1)).isoformat()
    consume(api, "17", "next-period", timestamp=later)
    assert sorted(Notification.objects.values_list("period_start", flat=True)) == [
        customer.subscriptions.get().current_period_start,
        period_end,
    ]


def test_the_open_period_overage_to_invoice_leaves_reversed_usage_out(customer, features, api):
    from djmoney.money import Money

    from billing.services.period_close import overage_lines

    # Given a soft limit of 20 with overage at $0.50 a unit, and 25 used: 5 of overage
    customer_services.override_create(
        customer=customer, feature=features["transfer"], reason="Pay as you go",
        limit=Decimal("20"), enforcement="soft", overage_price=Money("0.50", "USD"),
    )  # fmt: skip
    consume(api, "21", "a")
    consume(api, "4", "b")
    subscription = customer.subscriptions.get()
    period = {"start": subscription.current_period_start, "end": subscription.current_period_end}
    assert [line.quantity for line in overage_lines(subscription, **period)] == [5]

    # When the 4 are reversed, the period's overage to invoice is 1
    reverse(api, "b")
    (line,) = overage_lines(subscription, **period)
    assert line.quantity == 1
    assert "1 GB beyond 20 GB included" in line.description


def test_a_committed_reservation_records_its_draws_and_is_reversible(customer, features, api):
    # Given a grant of 10 and a hold of 25 committed at 24: 20 allowance, 4 from the grant
    pack = grant(customer, features, "10")
    hold = api.post(
        f"{TRANSFER}/reservations", {"reservation_id": "job-7", "quantity": "25"}, format="json"
    )
    assert hold.status_code == 201, hold.content
    done = api.post(f"{TRANSFER}/reservations/job-7/commit", {"quantity": "24"}, format="json")
    assert done.status_code == 200, done.content
    assert list(UsageDraw.objects.values_list("event__event_id", "grant", "quantity")) == [
        ("job-7", pack.pk, Decimal("4"))
    ]

    # When its event (the reservation id) is reversed, the grant gets its 4 back
    body = reverse(api, "job-7").json()
    pack.refresh_from_db()
    assert pack.consumed == 0
    assert (body["quantity"], body["entitlement"]["usage"], body["entitlement"]["balance"]) == (
        "24",
        "0",
        "30",
    )
    # ...and the commit again answers as before, counting nothing
    again = api.post(f"{TRANSFER}/reservations/job-7/commit", {"quantity": "24"}, format="json")
    assert again.status_code == 200
    assert api.get(TRANSFER).json()["usage"] == "0"
