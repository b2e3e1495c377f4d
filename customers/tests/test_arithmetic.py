"""The engine's arithmetic is pure: plain values in, numbers out, no Django and no database
(customers/engine/arithmetic.py). Every page, email, invoice and API answer takes its numbers
from it, so it is tested here on plain objects."""

import ast
import datetime as dt
import importlib.util
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

from catalog.models import Aggregation, Enforcement, FeatureKind, Reset
from customers.engine import arithmetic

SOURCE = Path(arithmetic.__file__)
START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
END = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
WINDOWS = {Reset.BILLING_PERIOD: SimpleNamespace(start=START, end=END)}


def test_it_imports_nothing_but_the_standard_library():
    """Given the module's source, when its imports are read, then none is Django, a model or
    another module of the project (djmoney only for a type hint)."""
    tree = ast.parse(SOURCE.read_text())
    runtime = set()
    for node in tree.body:  # top level only: the TYPE_CHECKING block is not run
        if isinstance(node, ast.Import):
            runtime |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            runtime.add((node.module or ".").split(".")[0])
    assert runtime <= {"__future__", "datetime", "collections", "dataclasses", "decimal", "typing"}


def test_it_loads_without_django_configured():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('arithmetic', {str(SOURCE)!r})\n"
        "module = importlib.util.module_from_spec(spec); sys.modules['arithmetic'] = module\n"
        "spec.loader.exec_module(module)\n"
        "assert 'django' not in sys.modules, 'django was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={"PATH": ""})
    assert importlib.util.find_spec("customers.engine.arithmetic") is not None


def test_its_constants_are_the_catalogs_choices():
    assert arithmetic.METERED == FeatureKind.METERED
    assert arithmetic.BOOLEAN == FeatureKind.BOOLEAN
    assert arithmetic.CONFIG == FeatureKind.CONFIG
    assert arithmetic.SUM == Aggregation.SUM
    assert arithmetic.LATEST == Aggregation.LATEST
    assert arithmetic.HARD == Enforcement.HARD
    assert arithmetic.SOFT == Enforcement.SOFT
    assert arithmetic.BILLING_PERIOD == Reset.BILLING_PERIOD
    assert arithmetic.NEVER == Reset.NEVER


def feature(aggregation="sum"):
    return SimpleNamespace(
        key="transfer", name="Transfer", kind="metered", unit="GB", pk=1, aggregation=aggregation
    )


def counter(used, drawn="0"):
    return SimpleNamespace(used=Decimal(used), drawn=Decimal(drawn), level=None)


def grant(quantity, consumed="0", expires_at=None):
    return SimpleNamespace(
        pk=1,
        feature_id=1,
        quantity=Decimal(quantity),
        consumed=Decimal(consumed),
        effective_at=START,
        expires_at=expires_at,
        voided_at=None,
    )


def test_past_a_soft_limit_capacity_stays_the_allowance():
    """Given 500 GB soft and 541.16 GB used, then 100% is 500 GB (not usage plus balance),
    the overage is 41.16 GB and usage is 108.232% of it."""
    terms = arithmetic.Terms(source="plan", limit=Decimal("500"), enforcement="soft")
    e = arithmetic.entitlement_compute(
        feature(), terms, {Reset.BILLING_PERIOD: counter("541.16")}, [], WINDOWS
    )
    assert (e.balance, e.overage, e.reserved) == (Decimal("0"), Decimal("41.16"), Decimal("0"))
    assert arithmetic.capacity(e) == Decimal("500")
    assert e.percent_used == Decimal("108.232")
    assert e.has_access


def test_grants_burn_after_the_allowance_and_count_in_capacity():
    """Given 100 units, a grant of 50 and 120 used (20 drawn from the grant), then 30 are
    left, 150 is 100% and nothing is overage."""
    terms = arithmetic.Terms(source="plan", limit=Decimal("100"))
    counters = {Reset.BILLING_PERIOD: counter("120", drawn="20")}
    e = arithmetic.entitlement_compute(feature(), terms, counters, [grant("50", "20")], WINDOWS)
    assert (e.balance, e.overage, e.granted) == (Decimal("30"), Decimal("0"), Decimal("30"))
    assert arithmetic.capacity(e) == Decimal("150")
    assert e.percent_used == Decimal("80")


def test_the_gate_denies_what_a_hard_balance_cannot_cover_and_changes_nothing():
    terms = arithmetic.Terms(source="plan", limit=Decimal("10"))
    counters = {Reset.BILLING_PERIOD: counter("9")}
    draw, before, after = arithmetic.consume_decide(
        feature(), terms, counters, [], WINDOWS, Decimal("2"), START
    )
    assert (draw.allowed, draw.reason) == (False, "limit_exceeded")
    assert before == after and counters[Reset.BILLING_PERIOD].used == Decimal("9")
    draw, before, after = arithmetic.consume_decide(
        feature(), terms, counters, [], WINDOWS, Decimal("1"), START
    )
    assert draw.allowed and (before.balance, after.balance) == (Decimal("1"), Decimal("0"))


def test_a_threshold_past_100_is_crossed_by_the_same_percent_rule():
    terms = arithmetic.Terms(source="plan", limit=Decimal("10"), notify_at=(80, 120))
    counters = {Reset.BILLING_PERIOD: counter("11")}
    assert arithmetic.may_cross(terms, counters, Decimal("2"))  # 110% -> 130%
    assert not arithmetic.may_cross(terms, counters, Decimal("0.5"))  # 110% -> 115%
