"""Reservations over the API (DESIGN.md "Reservations: hold, then commit or release"): hold,
commit, release, expiry, replays, conflicts and bad input, on SQLite and PostgreSQL alike."""

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from customers.models import Grant, Reservation, UsageCounter, UsageEvent

BASE = "/api/v1/customers/acme/entitlements/data-transfer"
HOLDS = f"{BASE}/reservations"


def hold(api, reservation_id, quantity, **extra):
    body = {"reservation_id": reservation_id, "quantity": quantity, **extra}
    return api.post(HOLDS, body, format="json")


def commit(api, reservation_id, **body):
    return api.post(f"{HOLDS}/{reservation_id}/commit", body, format="json")


def transfer(api) -> dict:
    return api.get(BASE).json()


def expire(reservation_id: str) -> None:
    """As if its time had passed: the hold's expiry is now in the past."""
    Reservation.objects.filter(reservation_id=reservation_id).update(
        expires_at=timezone.now() - dt.timedelta(seconds=1)
    )


def test_a_hold_counts_against_the_balance_and_its_commit_records_the_usage(api, customer):
    # Given a hard limit of 20 GB, nothing used
    # When 8 GB are held
    held = hold(api, "job-1", "8", ttl_seconds=60)

    # Then it is a 201 with the reservation, and the balance excludes the held units
    assert held.status_code == 201
    body = held.json()
    assert (body["allowed"], body["reason"]) == (True, None)
    reservation = body["reservation"]
    assert (reservation["id"], reservation["quantity"], reservation["status"]) == (
        "job-1", "8", "held"
    )  # fmt: skip
    expires = dt.datetime.fromisoformat(reservation["expires_at"])
    assert 55 <= (expires - timezone.now()).total_seconds() <= 60
    assert (body["entitlement"]["reserved"], body["entitlement"]["balance"]) == ("8", "12")
    assert (transfer(api)["reserved"], transfer(api)["balance"], transfer(api)["usage"]) == (
        "8", "12", "0"
    )  # fmt: skip

    # When 5 GB of it is committed
    committed = commit(api, "job-1", quantity="5")

    # Then 5 GB are used under the reservation's id, and nothing is held any more
    assert committed.status_code == 200
    assert committed.json()["reservation"]["status"] == "committed"
    assert committed.json()["reservation"]["committed_quantity"] == "5"
    e = committed.json()["entitlement"]
    assert (e["usage"], e["reserved"], e["balance"]) == ("5", "0", "15")
    assert transfer(api)["usage"] == "5" and transfer(api)["reserved"] == "0"
    event = UsageEvent.objects.get(event_id="job-1")
    assert event.quantity == Decimal("5")
    assert Reservation.objects.get(reservation_id="job-1").event_id == event.pk

    # And the same commit again answers the same, counting nothing more
    again = commit(api, "job-1", quantity="5")
    assert (
        again.status_code == 200 and again.json()["reservation"] == committed.json()["reservation"]
    )
    assert commit(api, "job-1").status_code == 200
    assert UsageCounter.objects.get(window="billing_period").used == Decimal("5")
    # but another quantity for it is a conflict
    conflict = commit(api, "job-1", quantity="4")
    assert (conflict.status_code, conflict.json()["error"]["code"]) == (409, "idempotency_conflict")


def test_a_hold_that_does_not_fit_is_denied_and_holds_nothing(api, customer):
    assert hold(api, "a", "15").status_code == 201
    denied = hold(api, "b", "6")
    assert denied.status_code == 200
    assert (denied.json()["allowed"], denied.json()["reason"]) == (False, "limit_exceeded")
    assert denied.json()["reservation"] is None
    assert not Reservation.objects.filter(reservation_id="b").exists()
    # what fits is held
    assert hold(api, "c", "5").status_code == 201
    assert transfer(api)["reserved"] == "20" and transfer(api)["balance"] == "0"
    # a denied hold's retry is decided afresh: once units are released, it holds
    assert api.delete(f"{HOLDS}/a").status_code == 200
    assert hold(api, "b", "6").status_code == 201


def test_consumes_cannot_take_units_that_others_hold(api, customer):
    hold(api, "job", "18")
    consume = api.post(f"{BASE}/consume", {"quantity": "3", "event_id": "c-1"}, format="json")
    assert (consume.json()["allowed"], consume.json()["reason"]) == (False, "limit_exceeded")
    dry = api.post(
        f"{BASE}/consume", {"quantity": "3", "event_id": "c-2", "dry_run": True}, format="json"
    )
    assert dry.json()["allowed"] is False
    fits = api.post(f"{BASE}/consume", {"quantity": "2", "event_id": "c-3"}, format="json")
    assert fits.json()["allowed"] is True
    assert (fits.json()["entitlement"]["balance"], fits.json()["entitlement"]["reserved"]) == (
        "0", "18"
    )  # fmt: skip


def test_reported_usage_is_never_denied_and_shows_beside_the_held_units(api, customer):
    hold(api, "job", "15")
    report = {"event_id": "r-1", "customer": "acme", "feature": "data-transfer", "quantity": "10"}
    assert api.post("/api/v1/usage", {"events": [report]}, format="json").json()["accepted"] == 1
    e = transfer(api)
    assert (e["usage"], e["reserved"], e["balance"]) == ("10", "15", "0")


def test_an_expired_hold_counts_for_nothing_on_the_very_next_read(api, customer):
    # Given 20 GB held: nothing left
    hold(api, "job", "20")
    assert transfer(api)["balance"] == "0"

    # When its expiry passes (no job runs)
    expire("job")

    # Then the next check shows the units back, a consume may take them
    assert (transfer(api)["reserved"], transfer(api)["balance"]) == ("0", "20")
    consume = api.post(f"{BASE}/consume", {"quantity": "20", "event_id": "c"}, format="json")
    assert consume.json()["allowed"] is True
    # and a commit is too late, a read says expired, a release changes nothing
    late = commit(api, "job")
    assert (late.status_code, late.json()["error"]["code"]) == (409, "reservation_expired")
    assert api.get(f"{HOLDS}/job").json()["reservation"]["status"] == "expired"
    released = api.delete(f"{HOLDS}/job")
    assert released.status_code == 200
    assert released.json()["reservation"]["status"] == "expired"
    assert not UsageEvent.objects.filter(event_id="job").exists()


def test_release_frees_the_units_and_answers_the_same_again(api, customer):
    hold(api, "job", "12")
    first = api.delete(f"{HOLDS}/job")
    assert first.status_code == 200
    assert first.json()["reservation"]["status"] == "released"
    assert first.json()["entitlement"]["reserved"] == "0"
    assert first.json()["entitlement"]["balance"] == "20"
    again = api.delete(f"{HOLDS}/job")
    assert again.status_code == 200 and again.json()["reservation"]["status"] == "released"
    late = commit(api, "job")
    assert (late.status_code, late.json()["error"]["code"]) == (409, "reservation_released")


def test_a_committed_reservation_cannot_be_released(api, customer):
    hold(api, "job", "3")
    commit(api, "job")
    refused = api.delete(f"{HOLDS}/job")
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "reservation_committed")
    assert UsageCounter.objects.get(window="billing_period").used == Decimal("3")


def test_commit_of_nothing_ends_the_hold_without_an_event(api, customer):
    hold(api, "job", "3")
    done = commit(api, "job", quantity="0")
    assert done.status_code == 200
    assert done.json()["reservation"]["status"] == "committed"
    assert done.json()["reservation"]["committed_quantity"] == "0"
    assert (done.json()["entitlement"]["usage"], done.json()["entitlement"]["reserved"]) == (
        "0", "0"
    )  # fmt: skip
    assert not UsageEvent.objects.exists()


def test_commit_above_the_held_quantity_is_a_400_and_changes_nothing(api, customer):
    hold(api, "job", "3")
    refused = commit(api, "job", quantity="3.0001")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "invalid"
    assert "quantity" in refused.json()["error"]["details"]
    assert Reservation.objects.get().status == "held"
    assert transfer(api)["reserved"] == "3"


def test_the_same_reservation_id_replays_the_first_hold(api, customer):
    first = hold(api, "job", "5")
    again = hold(api, "job", "5")
    assert again.status_code == 201
    assert again.json()["reservation"] == first.json()["reservation"]
    assert transfer(api)["reserved"] == "5"
    assert Reservation.objects.count() == 1
    # even when it would no longer fit, and after it was committed
    hold(api, "other", "15")
    assert hold(api, "job", "5").status_code == 201
    commit(api, "job")
    replay = hold(api, "job", "5")
    assert replay.status_code == 201 and replay.json()["reservation"]["status"] == "committed"


@pytest.mark.parametrize(
    "body",
    [
        {"reservation_id": "job", "quantity": "6"},
        {"reservation_id": "job", "quantity": "5", "feature": "ignored"},
    ],
)
def test_the_same_reservation_id_for_another_request_is_a_conflict(api, customer, body):
    hold(api, "job", "5")
    if body.get("feature"):
        response = api.post(
            "/api/v1/customers/acme/entitlements/storage/reservations",
            {"reservation_id": "job", "quantity": "5"},
            format="json",
        )
    else:
        response = api.post(HOLDS, body, format="json")
    assert (response.status_code, response.json()["error"]["code"]) == (409, "idempotency_conflict")


def test_a_commit_whose_event_id_was_used_for_other_usage_is_a_conflict(api, customer):
    consume = {"quantity": "1", "event_id": "job"}
    assert api.post(f"{BASE}/consume", consume, format="json").json()["allowed"]
    hold(api, "job", "4")
    conflict = commit(api, "job")
    assert (conflict.status_code, conflict.json()["error"]["code"]) == (409, "idempotency_conflict")
    assert Reservation.objects.get().status == "held"
    assert UsageCounter.objects.get(window="billing_period").used == Decimal("1")


def test_the_commit_burns_down_the_allowance_then_grants(api, customer, features):
    Grant.objects.create(
        customer=customer, feature=features["transfer"], quantity=Decimal("10"), source="manual"
    )
    hold(api, "job", "25")
    assert transfer(api)["balance"] == "5"
    done = commit(api, "job", quantity="24")
    assert done.json()["entitlement"]["balance"] == "6"
    assert Grant.objects.get().consumed == Decimal("4")


def test_a_soft_limit_holds_past_the_balance(api, customer, features):
    from customers import services

    services.override_create(
        customer=customer, feature=features["transfer"], limit=Decimal("20"),
        enforcement="soft", reason="deal",
    )  # fmt: skip
    assert hold(api, "big", "50").status_code == 201
    done = commit(api, "big")
    assert (done.json()["entitlement"]["usage"], done.json()["entitlement"]["overage"]) == (
        "50", "30"
    )  # fmt: skip


def test_a_level_holds_what_fits_beside_it(api, customer):
    storage = "/api/v1/customers/acme/entitlements/storage"
    api.post(
        "/api/v1/usage",
        {"events": [{"event_id": "s", "customer": "acme", "feature": "storage", "quantity": "90"}]},
        format="json",
    )
    fits = api.post(
        f"{storage}/reservations", {"reservation_id": "up", "quantity": "8"}, format="json"
    )
    assert fits.status_code == 201
    assert api.get(storage).json()["balance"] == "2"
    too_much = {"reservation_id": "up2", "quantity": "3"}
    assert api.post(f"{storage}/reservations", too_much, format="json").json()["allowed"] is False
    done = api.post(f"{storage}/reservations/up/commit", {"quantity": "5"}, format="json")
    assert (done.json()["entitlement"]["usage"], done.json()["entitlement"]["reserved"]) == (
        "95", "0"
    )  # fmt: skip


def test_a_threshold_crossed_by_a_commit_notifies(
    api, customer, mailoutbox, django_capture_on_commit_callbacks
):
    from customers.models import Notification

    with django_capture_on_commit_callbacks(execute=True):
        hold(api, "job", "17")
    assert not Notification.objects.exists()  # a hold uses nothing
    with django_capture_on_commit_callbacks(execute=True):
        commit(api, "job")  # 17 of 20: past 80%
    assert list(Notification.objects.values_list("threshold", flat=True)) == [80]
    assert len(mailoutbox) == 1


@pytest.mark.parametrize(
    ("path", "code", "status"),
    [
        (
            "/api/v1/customers/nobody/entitlements/data-transfer/reservations",
            "customer_not_found",
            404,
        ),
        ("/api/v1/customers/acme/entitlements/nothing/reservations", "feature_not_found", 404),
        ("/api/v1/customers/acme/entitlements/file-versioning/reservations", "not_metered", 400),
        ("/api/v1/customers/acme/entitlements/support-tier/reservations", "not_metered", 400),
    ],
)
def test_unknown_or_unmetered_targets(api, customer, path, code, status):
    response = api.post(path, {"reservation_id": "x", "quantity": "1"}, format="json")
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)


def test_unknown_reservations_are_404(api, customer):
    for response in (
        commit(api, "nope"),
        api.delete(f"{HOLDS}/nope"),
        api.get(f"{HOLDS}/nope"),
    ):
        assert (response.status_code, response.json()["error"]["code"]) == (
            404, "reservation_not_found"
        )  # fmt: skip
    # a reservation of another feature is not found under this one
    hold(api, "job", "1")
    other = "/api/v1/customers/acme/entitlements/storage/reservations/job/commit"
    assert api.post(other, {}, format="json").status_code == 404


def test_a_customer_without_a_subscription_is_denied_no_access(api, customer):
    from customers import services

    services.customer_create(external_id="walk-in", name="Walk in")
    response = api.post(
        "/api/v1/customers/walk-in/entitlements/data-transfer/reservations",
        {"reservation_id": "x", "quantity": "1"},
        format="json",
    )
    assert response.status_code == 200
    assert (response.json()["allowed"], response.json()["reason"]) == (False, "no_access")
    assert response.json()["entitlement"]["has_access"] is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"quantity": "1"}, "reservation_id"),
        ({"reservation_id": "", "quantity": "1"}, "reservation_id"),
        ({"reservation_id": 7, "quantity": "1"}, "reservation_id"),
        ({"reservation_id": "x" * 256, "quantity": "1"}, "reservation_id"),
        ({"reservation_id": "a/b", "quantity": "1"}, "reservation_id"),
        ({"reservation_id": "a\x00b", "quantity": "1"}, "reservation_id"),
        ({"reservation_id": "x"}, "quantity"),
        ({"reservation_id": "x", "quantity": "0"}, "quantity"),
        ({"reservation_id": "x", "quantity": "-1"}, "quantity"),
        ({"reservation_id": "x", "quantity": 1}, "quantity"),
        ({"reservation_id": "x", "quantity": "1", "ttl_seconds": 0}, "ttl_seconds"),
        ({"reservation_id": "x", "quantity": "1", "ttl_seconds": 86401}, "ttl_seconds"),
        ({"reservation_id": "x", "quantity": "1", "ttl_seconds": "60"}, "ttl_seconds"),
        ({"reservation_id": "x", "quantity": "1", "ttl_seconds": 1.5}, "ttl_seconds"),
        ({"reservation_id": "x", "quantity": "1", "ttl_seconds": True}, "ttl_seconds"),
    ],
)
def test_bad_hold_input_is_a_400_naming_the_field_and_holds_nothing(api, customer, body, field):
    response = api.post(HOLDS, body, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert field in response.json()["error"]["details"]
    assert not Reservation.objects.exists()


def test_a_body_that_is_not_an_object_is_a_400(api, customer):
    assert api.post(HOLDS, ["x"], format="json").status_code == 400
    hold(api, "job", "1")
    assert api.post(f"{HOLDS}/job/commit", ["x"], format="json").status_code == 400


def test_scopes_runtime_holds_read_reads(db, customer):
    from rest_framework.test import APIClient

    from core.services import api_key_create

    def client(scope):
        c = APIClient()
        c.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(name=scope, scope=scope)[1]}")
        return c

    runtime, read = client("runtime"), client("read")
    assert hold(runtime, "job", "1").status_code == 201
    assert runtime.get(f"{HOLDS}/job").status_code == 200
    assert read.get(f"{HOLDS}/job").status_code == 200
    refused = hold(read, "job2", "1")
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "insufficient_scope")
    assert read.delete(f"{HOLDS}/job").status_code == 403
    assert runtime.delete(f"{HOLDS}/job").status_code == 200


def test_the_tidy_job_marks_expired_holds_and_nothing_else(api, customer):
    from customers import tasks

    for name in ("old", "live", "done"):
        hold(api, name, "1")
    commit(api, "done")
    expire("old")
    expire("done")  # committed before its expiry: stays committed

    assert tasks.reservations_expire() == 1
    assert tasks.reservations_expire() == 0  # again: nothing more
    statuses = dict(Reservation.objects.values_list("reservation_id", "status"))
    assert statuses == {"old": "expired", "live": "held", "done": "committed"}
    # reads and answers are the same before and after the job
    assert transfer(api)["reserved"] == "1"
    late = commit(api, "old")
    assert (late.status_code, late.json()["error"]["code"]) == (409, "reservation_expired")
    assert api.get(f"{HOLDS}/old").json()["reservation"]["status"] == "expired"
