"""`manage.py check --database default`: the PostgreSQL settings the usage counters need."""

import pytest
from django.db import connection

from customers import checks, tasks


@pytest.mark.django_db
def test_the_server_settings_are_read_on_postgresql_only():
    found = checks.server_settings("default")
    if connection.vendor == "postgresql":
        assert set(found) == {"autovacuum", "track_counts"}
        assert set(found.values()) <= {"on", "off"}
    else:
        assert found == {}


@pytest.mark.parametrize(
    ("found", "warned"),
    [
        ({"autovacuum": "off", "track_counts": "on"}, True),
        ({"autovacuum": "on", "track_counts": "off"}, True),
        ({"autovacuum": "on", "track_counts": "on"}, False),
        ({}, False),  # SQLite
    ],
)
def test_autovacuum_off_is_a_warning_with_its_remedy(monkeypatch, found, warned):
    monkeypatch.setattr(checks, "server_settings", lambda alias: found)
    messages = checks.autovacuum_check(databases=["default"])
    assert [m.id for m in messages] == (["entitlements.W021"] if warned else [])
    if warned:
        assert "VACUUM customers_usagecounter" in messages[0].hint
    assert checks.autovacuum_check(databases=None) == []  # `check` without --database


@pytest.mark.django_db(transaction=True)  # VACUUM runs outside any transaction
def test_the_beat_vacuums_the_counters_only_when_the_server_would_not(monkeypatch):
    assert tasks.usage_counters_vacuum() is (connection.vendor == "postgresql" and
                                             checks.autovacuum_off())  # fmt: skip
    monkeypatch.setattr(checks, "server_settings", lambda alias: {"autovacuum": "on"})
    assert tasks.usage_counters_vacuum() is False
    if connection.vendor == "postgresql":
        monkeypatch.setattr(checks, "server_settings", lambda alias: {"autovacuum": "off"})
        assert tasks.usage_counters_vacuum() is True  # and VACUUM ran without an error


@pytest.mark.django_db
def test_the_beat_runs_the_vacuum_every_minute():
    """The migration's schedule names the task by its registered name."""
    from celery import current_app
    from django_celery_beat.models import PeriodicTask

    schedule = PeriodicTask.objects.get(task="customers.tasks.usage_counters_vacuum")
    assert (schedule.interval.every, schedule.interval.period, schedule.enabled) == (
        60,
        "seconds",
        True,
    )
    assert schedule.task in current_app.tasks
