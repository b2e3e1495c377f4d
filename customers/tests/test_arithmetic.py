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

from hypothesis import given, settings
from hypothesis import strategies as st

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


def _places(low, high):
    return st.decimals(min_value=low, max_value=high, places=4, allow_nan=False)


@st.composite
def _fast_cases(draw):
    """Terms, a quantity and a usage, the usage often right at a bound (a limit, a threshold)."""
    limit = draw(_places(Decimal("0.0001"), Decimal("1000000")))
    quantity = draw(_places(Decimal("0.0001"), Decimal("10000")))
    notify_at = tuple(draw(st.lists(st.integers(1, 200), max_size=3, unique=True)))
    terms = arithmetic.Terms(
        source="plan",
        limit=limit,
        unlimited=draw(st.booleans()) and draw(st.booleans()),
        enforcement=draw(st.sampled_from(["hard", "soft"])),
        notify_at=notify_at,
    )
    edges = [limit - quantity, limit] + [Decimal(t) * limit / 100 for t in notify_at]
    edges += [e - quantity for e in edges]
    nudge = draw(st.sampled_from([Decimal("0"), Decimal("0.0001"), Decimal("-0.0001")]))
    used = draw(
        st.one_of(
            _places(Decimal("0"), limit * 3),
            st.sampled_from(edges).map(lambda e: (e + nudge).quantize(Decimal("0.0001"))),
        )
    )
    used = max(Decimal("0"), used)
    # Units held by reservations: often none, often right at what a hard limit leaves
    left = limit - quantity - used
    reserved = draw(
        st.one_of(
            st.just(Decimal("0")),
            _places(Decimal("0.0001"), limit * 2),
            st.sampled_from([left, left + Decimal("0.0001"), left - Decimal("0.0001")]).filter(
                lambda r: r > 0
            ),
        )
    )
    return terms, quantity, used, reserved


@settings(max_examples=1500, deadline=None)
@given(_fast_cases())
def test_the_fast_bounds_say_exactly_when_the_gate_allows_without_crossing(case):
    """Given a sum with no grants (nothing drawn) and units held by reservations, then
    `consume_fast_bounds` holds for a usage and those units exactly when `consume_decide`
    allows the quantity as it is, from the allowance (no draw on a grant, no overage to
    record), adds it to the counter and crosses no threshold:
    PostgreSQL's one-statement consume decides as the arithmetic does."""
    terms, quantity, used, reserved = case
    bounds = arithmetic.consume_fast_bounds(feature(), terms, quantity)
    counters = {Reset.BILLING_PERIOD: counter(used)}
    held = (reserved, 1 if reserved else 0)
    draw, before, after = arithmetic.consume_decide(
        feature(), terms, counters, [], WINDOWS, quantity, START, held
    )
    simple = (
        draw.allowed
        and not draw.takes
        and (terms.unlimited or draw.overage == 0)
        and draw.recorded == quantity
        and counters[Reset.BILLING_PERIOD].used == used + quantity
        and not arithmetic.thresholds_crossed(before, after)
    )
    assert bounds is not None
    assert bounds.holds(used, reserved) == simple, (terms, quantity, used, reserved, bounds)


@settings(max_examples=1500, deadline=None)
@given(_fast_cases())
def test_the_fast_bounds_say_exactly_when_reported_usage_needs_no_arithmetic(case):
    """Given a sum with no grants (nothing drawn), then `consume_fast_bounds` of a batch's
    total for a counter holds exactly when adding that total takes nothing past the allowance
    and crosses no threshold (`overage_adding`, `may_cross`): the batch's locking statement
    answers only the counters where it does not hold."""
    terms, quantity, used, _ = case
    bounds = arithmetic.consume_fast_bounds(feature(), terms, quantity)
    counters = {Reset.BILLING_PERIOD: counter(used)}
    quiet = arithmetic.overage_adding(terms, counters, quantity) == 0 and not (
        arithmetic.may_cross(terms, counters, quantity)
    )
    assert bounds.holds(used) == quiet, (terms, quantity, used, bounds)


def test_the_fast_bounds_leave_the_unusual_cases_to_the_full_decision():
    """Levels, denied terms, no terms and a zero limit have no fast bounds."""
    terms = arithmetic.Terms(source="plan", limit=Decimal("10"))
    assert arithmetic.consume_fast_bounds(feature("latest"), terms, Decimal("1")) is None
    assert arithmetic.consume_fast_bounds(feature(), None, Decimal("1")) is None
    denied = arithmetic.Terms(source="plan", limit=Decimal("10"), denied="payment_overdue")
    assert arithmetic.consume_fast_bounds(feature(), denied, Decimal("1")) is None
    zero = arithmetic.Terms(source="plan", limit=Decimal("0"), enforcement="soft")
    assert arithmetic.consume_fast_bounds(feature(), zero, Decimal("1")) is None
