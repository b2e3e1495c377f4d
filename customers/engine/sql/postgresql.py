"""PostgreSQL's statements: arrays in (unnest), whatever the number of rows; row locks; the
consume in two round trips; the batch's lock-and-add and its advisory turns."""

from __future__ import annotations

import datetime as dt
import logging

import orjson
import psycopg
from django.conf import settings
from django.db import ProgrammingError, connection
from psycopg import errors
from psycopg.adapt import PyFormat, Transformer
from psycopg.generators import execute as _execute
from psycopg.pq import ExecStatus

from catalog.models import CatalogVersion

from ...models import (
    CountedWindow,
    Customer,
    Grant,
    Reservation,
    UsageCounter,
    UsageDraw,
    UsageEvent,
)
from ...snapshots import CounterRow
from .common import counter_values, event_columns, versions_sql

COMMAND_OK, TUPLES_OK = ExecStatus.COMMAND_OK, ExecStatus.TUPLES_OK
# The tables, from the models (never typed into the statements).
COUNTER = UsageCounter._meta.db_table
GRANT = Grant._meta.db_table
EVENT = UsageEvent._meta.db_table
DRAW = UsageDraw._meta.db_table
DRAW_COLUMNS = ", ".join(
    f'"{UsageDraw._meta.get_field(name).column}"'
    for name in ("event", "grant", "window", "quantity")
)
RESERVATION = Reservation._meta.db_table
CUSTOMER = Customer._meta.db_table
CATALOG_VERSION = CatalogVersion._meta.db_table
COUNTED_WINDOW = CountedWindow._meta.db_table
logger = logging.getLogger(__name__)
LOCK_CHUNK = 1000  # counter keys per locking statement
consume_in_two_trips = True  # consume_lock and consume_write, and consume_one_trip


def pg_array(values) -> str:
    """A PostgreSQL array literal of numbers, timestamps, None and plain words (never user
    text): built in one join, where psycopg's array dumper costs milliseconds per thousand."""
    values = list(values)
    if isinstance(next((v for v in values if v is not None), None), dt.datetime):
        # Few distinct instants (windows' starts are shared): each is formatted once.
        texts = {v: "NULL" if v is None else v.isoformat() for v in set(values)}
        return "{" + ",".join([texts[v] for v in values]) + "}"
    if any(v is None for v in values):
        return "{" + ",".join(["NULL" if v is None else str(v) for v in values]) + "}"
    return "{" + ",".join(map(str, values)) + "}"


def pg_text_array(values) -> str:
    """A PostgreSQL array literal of any text (clients' event ids and external ids): every
    element double-quoted, its backslashes and double quotes escaped, so that commas, braces,
    spaces and the word NULL stay text. Sent as a parameter like the others."""
    quoted = ['"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values]
    return "{" + ",".join(quoted) + "}"


def counters_lock_chunk(cursor, chunk: list[tuple], versions: str, params: list, locked: dict):
    """PostgreSQL: the keys go as four arrays (whatever their number, no giant statement) and
    come back as their ordinal, so that no timestamp is parsed back. Answers the versions."""
    version = None
    cursor.execute(
        "SELECT c.id, k.n, c.used, c.drawn, c.level, c.level_at, " + versions + " "
        "FROM unnest(%s::bigint[], %s::bigint[], %s::varchar[], %s::timestamptz[]) "
        "WITH ORDINALITY AS k(customer_id, feature_id, win, start, n) "
        f"JOIN {COUNTER} c ON c.customer_id = k.customer_id "
        'AND c.feature_id = k.feature_id AND c."window" = k.win AND c.start = k.start '
        'ORDER BY c.customer_id, c.feature_id, c."window", c.start FOR UPDATE OF c',
        [*params, *(pg_array(column) for column in zip(*chunk, strict=True))],
    )
    for pk, n, used, drawn, level, level_at, *version in cursor.fetchall():
        customer_id, feature_id, kind, start = key = chunk[n - 1]
        counter = CounterRow(pk, customer_id, feature_id, kind, start, None, used, drawn, level,
                             level_at)  # fmt: skip
        counter.loaded = counter_values(counter)
        locked[key] = counter
        if version[0] is not None:
            version = (int(version[0]), int(version[1] or 0))
    return version


# PostgreSQL: the counters' new values as five arrays (id, used, drawn, level, level_at).
COUNTERS_FROM_VALUES = f"""
    UPDATE {COUNTER} AS c
       SET used = v.used, drawn = v.drawn, level = v.level, level_at = v.level_at
      FROM unnest(%s::bigint[], %s::numeric[], %s::numeric[], %s::numeric[],
                  %s::timestamptz[]) AS v(id, used, drawn, level, level_at)
     WHERE c.id = v.id"""


def counter_columns(counters: list) -> list[str]:
    """The five array parameters of `COUNTERS_FROM_VALUES`."""
    rows = [(c.pk, c.used, c.drawn, c.level, c.level_at) for c in counters]
    return [pg_array(column) for column in zip(*rows, strict=True)]


def counters_save(counters: list) -> None:
    """PostgreSQL: one UPDATE .. FROM unnest(arrays) for all the changed counters; only
    `used` when nothing else changed (a batch of sums without grants)."""
    with connection.cursor() as cursor:
        if all(c.loaded[1:] == (c.drawn, c.level, c.level_at) for c in counters):
            cursor.execute(
                f"UPDATE {COUNTER} AS c SET used = v.used "
                "FROM unnest(%s::bigint[], %s::numeric[]) AS v(id, used) WHERE c.id = v.id",
                [
                    "{" + ",".join([str(c.pk) for c in counters]) + "}",
                    "{" + ",".join([str(c.used) for c in counters]) + "}",
                ],
            )
        else:
            cursor.execute(COUNTERS_FROM_VALUES, counter_columns(counters))


# PostgreSQL: the grants of these customers and features that may be in force between two
# moments (`grants_query`'s filter), for the batch's look at grants and its lock alike.
GRANTS_BETWEEN = (
    "WHERE customer_id = ANY(%s::bigint[]) AND feature_id = ANY(%s::bigint[]) "
    "AND effective_at <= %s AND (expires_at IS NULL OR expires_at > %s) "
    "AND (voided_at IS NULL OR voided_at > %s)"
)


def grants_between(customer_ids, feature_ids, since: dt.datetime, until: dt.datetime) -> list:
    return [pg_array(customer_ids), pg_array(feature_ids), until, since, since]


CONSUME_LOCK = f"""
    BEGIN; SET LOCAL synchronous_commit = %s;
    WITH c AS (
        SELECT id, customer_id, feature_id, "window", start, "end", used, drawn, level, level_at
          FROM {COUNTER}
         WHERE customer_id = %s AND feature_id = %s AND start <= %s AND "end" > %s
         ORDER BY customer_id, feature_id, "window", start FOR UPDATE
    ), g AS (
        SELECT id, effective_at, expires_at, quantity, consumed, voided_at
          FROM {GRANT}
         WHERE customer_id = %s AND feature_id = %s AND effective_at <= %s
               AND (expires_at IS NULL OR expires_at > %s) AND (voided_at IS NULL OR voided_at > %s)
         ORDER BY id FOR UPDATE
    )
    SELECT 0, NULL::bigint, NULL::varchar, NULL::timestamptz, NULL::timestamptz, NULL::numeric,
           NULL::numeric, NULL::numeric, NULL::timestamptz,
           (SELECT state_version FROM {CUSTOMER} WHERE id = %s),
           (SELECT version FROM {CATALOG_VERSION} WHERE id = 1)
    UNION ALL
    SELECT 1, id, "window", start, "end", used, drawn, level, level_at, NULL, NULL FROM c
    UNION ALL
    SELECT 2, id, NULL, effective_at, expires_at, quantity, consumed, NULL, voided_at, NULL, NULL
      FROM g;
    SELECT count(*), coalesce(sum(quantity), 0) FROM {RESERVATION}
     WHERE customer_id = %s AND feature_id = %s AND status = 'held' AND expires_at > %s
"""
# The reservations held are summed by a statement of their own, after the one that waited for
# the counters' locks: under READ COMMITTED it then sees every hold committed before it got
# them (in the locking statement, its snapshot would be the one taken before the wait).


def usage_write(extra: str = "") -> str:
    """A usage write's second round trip: the event (unless its event_id is taken), the
    counters, the grants, `extra` (more CTEs, which may use `ev`), the draws, then COMMIT;
    nothing is written when the event_id is taken. Parameters: the event, the counters'
    columns, the grants' ids and consumed, those of `extra`, the draws'."""
    return f"""
    WITH ev AS (
        INSERT INTO {EVENT}
               (customer_id, feature_id, event_id, quantity, "timestamp", properties, recorded_at)
        VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s)
        ON CONFLICT (customer_id, event_id) DO NOTHING RETURNING id
    ), counters AS ({COUNTERS_FROM_VALUES} AND EXISTS (SELECT 1 FROM ev)
    ), grants AS (
        UPDATE {GRANT} AS g SET consumed = v.consumed
          FROM unnest(%s::bigint[], %s::numeric[]) AS v(id, consumed)
         WHERE g.id = v.id AND EXISTS (SELECT 1 FROM ev)
{extra}    ), draws AS (
        INSERT INTO {DRAW} ({DRAW_COLUMNS})
        SELECT ev.id, d.grant_id, %s, d.quantity
          FROM ev, unnest(%s::bigint[], %s::numeric[]) AS d(grant_id, quantity)
    )
    SELECT id FROM ev;
    COMMIT
"""


CONSUME_WRITE = usage_write()


# The consume in ONE round trip, for the simple case (`arithmetic.consume_fast_bounds`): one
# call of the function CONSUME_FUNCTION, in autocommit (its own transaction, committed when
# the call ends), for one event or for several of one customer's feature that arrived in this
# process together (engine/combining.py): their values in arrays, decided in turn by the
# second statement under the first's locks, and committed together. A PL/pgSQL function
# keeps its statements' plans for the connection's life:
# a statement sent as text is planned again at every call, and planning these two cost more
# than running them (about 0.7 ms of the database's CPU per consume, measured:
# docs/performance.md). The plans are generic (for any parameters): every lookup must lead
# with the customer (test_consume_function_plans checks them).
# Its first statement locks the counters of every window containing the moment (any of the call's
# moments); the second checks and writes. In a VOLATILE function each statement takes its own
# snapshot (READ COMMITTED), so the second, started once the first holds the locks, reads the
# versions, the grants in force, the reservations held and the counters as the last writer left them
# (a hold takes the same counter locks). It locks the counters again: no wait for those the first
# holds, and a counter created after the first started is locked before it is checked (without that,
# two consumes could both pass the check on its snapshot: test_concurrency's fifty consumes against
# twenty allowed 23). But such a counter may have been locked by another writer between the second
# statement's snapshot and its lock: the counter is then read as that writer left it, and the rest
# (the reservations held) as before it. So the function goes ahead only if the first statement
# locked every counted window's counter (`l_locked`, answered in the first row); otherwise the
# engine decides on another path (a hold made that way once let 51 holds and 50 consumes through
# against a balance of 100). When the versions are those of the state the engine decided on, every
# counted window's counter is there, no grant is in force (`granted`), nothing was drawn and the
# effective counter's `used` is within the bounds (with the units reservations hold, under a hard
# limit: `p_held_counts`), it inserts the event and adds the quantity to those counters. So the
# counters are locked for these statements and the commit only: no round trip and no Python in
# between. Rows, for each event in turn: (0, event id or NULL, .., units held, holds, counters
# locked first, .., whether it went ahead, state version, catalog version, a grant in force), then
# (1, counter ..) as they were before that event. Its plans never scan a table from end to end
# (`enable_seqscan` off): a plan kept from the moment a table was nearly empty would otherwise read
# every row of it once it has grown (test_consume_function). Named anew when its arguments changed
# to arrays (one event or several per call): during a deploy, workers of the version before call the
# earlier name and recreate it if missing, never touching this one (with one name, each version's
# `functions_create` dropped the other's overload, back and forth, until the last old worker
# stopped).
CONSUME_FUNCTION_NAME = "entitlements_consume_events"
CONSUME_FUNCTION_EARLIER = "entitlements_consume_one_trip"  # one event per call
CONSUME_FUNCTION_ARGS = (
    ("p_customer", "bigint"), ("p_feature", "bigint"), ("p_ats", "timestamptz[]"),
    ("p_state", "bigint"), ("p_catalog", "bigint"), ("p_windows", "varchar[]"),
    ("p_starts", "timestamptz[]"), ("p_counted", "integer"), ("p_kind", "varchar"),
    ("p_event_ids", "varchar[]"), ("p_quantities", "numeric[]"), ("p_properties_all", "jsonb"),
    ("p_now", "timestamptz"), ("p_max_useds", "numeric[]"), ("p_gap_los", "numeric[]"),
    ("p_gap_his", "numeric[]"), ("p_commit", "text"), ("p_held_counts", "boolean"),
)  # fmt: skip
# Each event's values, taken in turn from the arrays above (the gaps: one row each of a
# two-dimensional array) into the function's variables that its statements read.
CONSUME_EVENT_VARIABLES = (
    ("p_at", "timestamptz", "p_ats[l_event]"),
    ("p_event_id", "varchar", "p_event_ids[l_event]"),
    ("p_quantity", "numeric", "p_quantities[l_event]"),
    ("p_properties", "jsonb", "p_properties_all -> (l_event - 1)"),
    ("p_max_used", "numeric", "p_max_useds[l_event]"),
    ("p_gap_lo", "numeric[]", "p_gap_los[l_event:l_event]"),
    ("p_gap_hi", "numeric[]", "p_gap_his[l_event:l_event]"),
)
# It locks the counters of every window containing any of the call's moments: all that the
# second statement locks again for each event, so none is locked out of key order.
CONSUME_LOCK_BODY = f"""
    SELECT count(*) FROM (
        SELECT "window", start FROM {COUNTER}
         WHERE customer_id = p_customer AND feature_id = p_feature
               AND start <= (SELECT max(a) FROM unnest(p_ats) AS a)
               AND "end" > (SELECT min(a) FROM unnest(p_ats) AS a)
         ORDER BY customer_id, feature_id, "window", start FOR UPDATE
    ) AS l JOIN unnest(p_windows, p_starts) AS w(win, start)
            ON l."window" = w.win AND l.start = w.start"""
CONSUME_CHECK_AND_WRITE_BODY = f"""
    WITH c AS MATERIALIZED (
        SELECT id, "window", start, "end", used, drawn, level, level_at
          FROM {COUNTER}
         WHERE customer_id = p_customer AND feature_id = p_feature
               AND start <= p_at AND "end" > p_at
         ORDER BY customer_id, feature_id, "window", start FOR UPDATE
    ), m AS (
        SELECT c.id, c."window", c.used, c.drawn
          FROM c JOIN unnest(p_windows, p_starts) AS w(win, start)
               ON c."window" = w.win AND c.start = w.start
    ), v AS (
        SELECT (SELECT state_version FROM {CUSTOMER} WHERE id = p_customer) AS state,
               (SELECT version FROM {CATALOG_VERSION} WHERE id = 1) AS catalog,
               EXISTS (SELECT 1 FROM {GRANT}
                        WHERE customer_id = p_customer AND feature_id = p_feature
                              AND effective_at <= p_at
                              AND (expires_at IS NULL OR expires_at > p_at)
                              AND (voided_at IS NULL OR voided_at > p_at)) AS granted,
               h.reserved, h.holds,
               (SELECT count(*) FROM m) AS found
          FROM (SELECT coalesce(sum(quantity), 0) AS reserved, count(*) AS holds
                  FROM {RESERVATION}
                 WHERE customer_id = p_customer AND feature_id = p_feature
                       AND status = 'held' AND expires_at > p_at) AS h
    ), go AS (
        SELECT 1 FROM v, m
         WHERE v.state = p_state AND v.catalog = p_catalog AND NOT v.granted
               AND v.found = p_counted AND l_locked = p_counted
               AND m."window" = p_kind AND m.drawn = 0
               AND (p_max_used IS NULL
                    OR m.used + CASE WHEN p_held_counts THEN v.reserved ELSE 0 END <= p_max_used)
               AND NOT EXISTS (
                   SELECT 1 FROM unnest(p_gap_lo, p_gap_hi) AS g(lo, hi)
                    WHERE m.used >= g.lo AND m.used < g.hi)
    ), ev AS (
        INSERT INTO {EVENT}
               (customer_id, feature_id, event_id, quantity, "timestamp", properties, recorded_at)
        SELECT p_customer, p_feature, p_event_id, p_quantity, p_at, p_properties, p_now FROM go
        ON CONFLICT (customer_id, event_id) DO NOTHING RETURNING id
    ), added AS (
        UPDATE {COUNTER} AS t SET used = t.used + p_quantity
          FROM m WHERE t.id = m.id AND EXISTS (SELECT 1 FROM ev)
    )
    SELECT 0, (SELECT id FROM ev), NULL::varchar, NULL::timestamptz, NULL::timestamptz,
           v.reserved, v.holds::numeric, l_locked::numeric, NULL::timestamptz,
           EXISTS (SELECT 1 FROM go), v.state, v.catalog, v.granted
      FROM v
    UNION ALL
    SELECT 1, id, "window"::varchar, start, "end", used, drawn, level, level_at, NULL, NULL,
           NULL, NULL
      FROM c"""
CONSUME_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {CONSUME_FUNCTION_NAME}(
    {", ".join(f"{name} {kind}" for name, kind in CONSUME_FUNCTION_ARGS)})
RETURNS TABLE (o_kind integer, o_id bigint, o_window varchar, o_t1 timestamptz,
               o_t2 timestamptz, o_n1 numeric, o_n2 numeric, o_n3 numeric, o_t3 timestamptz,
               o_went boolean, o_state bigint, o_catalog bigint, o_granted boolean)
LANGUAGE plpgsql VOLATILE SET enable_seqscan = off AS $fn$
DECLARE
    l_locked integer;  -- counted windows' counters the first statement locked
    l_event integer;
    {" ".join(f"{name} {kind};" for name, kind, _ in CONSUME_EVENT_VARIABLES)}
BEGIN
    IF p_commit <> 'on' THEN
        PERFORM set_config('synchronous_commit', p_commit, true);
    END IF;
    {CONSUME_LOCK_BODY.strip().replace("SELECT count(*)", "SELECT count(*) INTO l_locked", 1)};
    FOR l_event IN 1 .. cardinality(p_event_ids) LOOP
        {" ".join(f"{name} := {value};" for name, _, value in CONSUME_EVENT_VARIABLES)}
        RETURN QUERY {CONSUME_CHECK_AND_WRITE_BODY.strip()};
    END LOOP;
END
$fn$"""
CONSUME_CALL = (
    f"SELECT * FROM {CONSUME_FUNCTION_NAME}("
    + ", ".join(f"%s::{kind}" for _, kind in CONSUME_FUNCTION_ARGS)
    + ")"
)
CONSUME_CALL_KEYS = tuple(name[2:] for name, _ in CONSUME_FUNCTION_ARGS)  # its values' order
# The same call as the connection's prepared statement (`_PreparedCall`), in PostgreSQL's
# placeholders; the casts give the parameters their types.
CONSUME_CALL_PREPARED = (
    f"SELECT * FROM {CONSUME_FUNCTION_NAME}("
    + ", ".join(f"${n}::{kind}" for n, (_, kind) in enumerate(CONSUME_FUNCTION_ARGS, 1))
    + ")"
).encode()
CONSUME_CALL_NAME = CONSUME_FUNCTION_NAME.encode()


# Earlier versions of the function, with other arguments (PostgreSQL keeps each as an
# overload of the name), and the function of its earlier name: dropped before the current one
# is created.
FUNCTIONS_OUTDATED = f"""
DO $do$
DECLARE outdated regprocedure;
BEGIN
    FOR outdated IN
        SELECT oid::regprocedure FROM pg_proc
         WHERE pronamespace = current_schema()::regnamespace
           AND ((proname = '{CONSUME_FUNCTION_NAME}' AND oid IS DISTINCT FROM to_regprocedure(%s))
                OR proname = '{CONSUME_FUNCTION_EARLIER}')
    LOOP
        EXECUTE 'DROP FUNCTION ' || outdated;
    END LOOP;
END
$do$"""


def functions_create(on_connection=None) -> None:
    """Creates (or replaces) the engine's functions in the database: after every `migrate`
    (customers.apps), and when a call finds one missing (a database restored without them,
    or with an earlier version only)."""
    current = f"{CONSUME_FUNCTION_NAME}({', '.join(kind for _, kind in CONSUME_FUNCTION_ARGS)})"
    with (on_connection or connection).cursor() as cursor:
        cursor.execute(FUNCTIONS_OUTDATED.replace("%s", f"'{current}'"))
        cursor.execute(CONSUME_FUNCTION)


RESERVATION_LOCK = f"""
    SELECT id, status, expires_at, committed_at, quantity, committed_quantity, NULL::numeric,
           NULL::timestamptz, feature_id, event_id
      FROM {RESERVATION} WHERE customer_id = %s AND reservation_id = %s FOR UPDATE
"""


# A hold's second round trip: the reservation, unless its id is taken, and COMMIT.
HOLD_WRITE = f"""
    INSERT INTO {RESERVATION} (customer_id, feature_id, reservation_id, quantity, status,
                               ttl_seconds, expires_at, created_at)
    VALUES (%s, %s, %s, %s, 'held', %s, %s, %s)
    ON CONFLICT (customer_id, reservation_id) DO NOTHING RETURNING id;
    COMMIT
"""


def consume_one_trip(on_connection, params: dict, events: list) -> list[list]:
    """One call of `CONSUME_FUNCTION` (its own transaction) on a connection outside any
    transaction, for one or more events of one customer's feature, decided in turn under the
    same locks and committed together: each event's rows, in order. `params` names the
    customer, feature, versions, the counted windows (`windows`, `starts`), the effective
    `kind`, what every event shares of the arithmetic's FastBounds (`held_counts`) and the
    moment recorded (`now`); each event is (moment, event_id, quantity, properties as JSON
    text, its FastBounds), all with the same counted windows' starts and number of gaps. The
    call is a prepared statement of the connection (`_prepared_cursor`) unless that is
    switched off."""
    ats, event_ids, quantities, properties, bounds = zip(*events, strict=True)
    width = len(bounds[0].gaps)
    values = {
        **params,
        "ats": pg_array(ats),
        "event_ids": pg_text_array(event_ids),
        "quantities": "{" + ",".join([str(quantity) for quantity in quantities]) + "}",
        "properties_all": "[" + ",".join(properties) + "]",
        "max_useds": pg_array([each.max_used for each in bounds]),
        "gap_los": _gap_rows(bounds, width, 0),
        "gap_his": _gap_rows(bounds, width, 1),
        # Array literals of window kinds (plain words) and instants, written directly:
        # `pg_array`'s checks for None and types cost more than these need.
        "windows": "{" + ",".join(params["windows"]) + "}",
        "starts": "{" + ",".join([start.isoformat() for start in params["starts"]]) + "}",
    }
    args = [values[key] for key in CONSUME_CALL_KEYS]
    rows = None
    if settings.USAGE_PREPARED_STATEMENTS and not _prepared_refused:
        try:
            rows = _consume_call(_prepared_cursor(on_connection), args)
        except ProgrammingError as error:
            if not isinstance(error.__cause__, _PREPARED_LOST):
                raise
            _prepared_refuse(error)  # nothing ran: the same call, unprepared, below
    if rows is None:
        with on_connection.cursor() as cursor:
            rows = _consume_call(cursor, args)
    each = []
    for row in rows:  # each event's first row (0, ..) and then its counters' (1, ..)
        if row[0] == 0:
            each.append([row])
        else:
            each[-1].append(row)
    return each


def _gap_rows(bounds, width: int, side: int) -> str:
    """The events' gaps' lower (`side` 0) or upper (1) ends: a two-dimensional array literal,
    one row per event, `width` gaps each (or an empty array when there are none)."""
    if not width:
        return "{}"
    return (
        "{"
        + ",".join(["{" + ",".join([str(gap[side]) for gap in b.gaps]) + "}" for b in bounds])
        + "}"
    )


def _consume_call(cursor, values: list) -> list:
    try:
        cursor.execute(CONSUME_CALL, values)
    except ProgrammingError as error:
        if not isinstance(error.__cause__, errors.UndefinedFunction):
            raise
        # Not created in this database (restored without it, or not migrated since): nothing
        # ran, and in autocommit nothing is left to roll back.
        functions_create()
        cursor.execute(CONSUME_CALL, values)
    return cursor.fetchall()


# The consume's call as a prepared statement: PostgreSQL parses and plans `CONSUME_CALL` once
# per connection instead of once per consume (planning the call of a set-returning function
# costs as much as a third of the function's own work: 0.51 against 0.65 ms per call with
# its commit, pgbench -M prepared against -M simple). Django's cursors bind on the client
# (the parameters written into the text) and its connections prepare nothing, for the sake
# of poolers: `_PreparedCall` prepares it on the same connection.
# A server that does not keep the connection's prepared statements (a pooler in transaction
# mode hands the next statement to another backend: "does not exist", or a backend that
# already has one by that name from another client: "already exists"). Neither ran anything.
_PREPARED_LOST = (errors.InvalidSqlStatementName, errors.DuplicatePreparedStatement)
_prepared_refused = False  # once seen in this process: no more prepared statements


class _PreparedCall:
    """The consume's call as a prepared statement of the connection, sent straight through
    psycopg's libpq connection (`pgconn`) with psycopg's own adapters and wait: a cursor's
    execute (its state, the query's conversion, psycopg's bookkeeping of prepared statements)
    cost as much Python as the call's parameters themselves. It is prepared on its first
    execute on the connection (one more round trip, once). Django wraps it as one of its
    cursors (`_prepared_cursor`): its errors, the hot path's count of statements, the debug
    log. A failure is raised as psycopg's cursor raises it."""

    _query = None  # what Django's debug log reads of a cursor: the statement is not kept

    def __init__(self, raw: psycopg.Connection):
        self.raw = raw
        self.transformer = Transformer(raw)
        self.prepared = False
        self.result = None

    def execute(self, query, params: list):
        raw, pgconn, transformer = self.raw, self.raw.pgconn, self.transformer
        values = transformer.dump_sequence(params, _TEXT_FORMATS[: len(params)])
        with raw.lock:
            if not self.prepared:
                pgconn.send_prepare(CONSUME_CALL_NAME, CONSUME_CALL_PREPARED)
                self._result(raw.wait(_execute(pgconn)), COMMAND_OK)
                self.prepared = True
            pgconn.send_query_prepared(CONSUME_CALL_NAME, values)
            self.result = self._result(raw.wait(_execute(pgconn)), TUPLES_OK)
        return self

    def _result(self, results: list, expected):
        for result in results:
            if result.status != expected:
                self.result = None
                raise errors.error_from_result(result, encoding=self.raw.info.encoding)
        return results[-1]

    def fetchall(self) -> list:
        result, self.result = self.result, None
        self.transformer.set_pgresult(result)
        return self.transformer.load_rows(0, result.ntuples, tuple)

    def close(self) -> None:
        self.result = None


_TEXT_FORMATS = [PyFormat.TEXT] * len(CONSUME_FUNCTION_ARGS)


def _prepared_cursor(on_connection):
    """The connection's `_PreparedCall`, made once per connection, wrapped anew each time as
    Django wraps its cursors."""
    raw = on_connection.connection
    if raw is None:
        on_connection.ensure_connection()
        raw = on_connection.connection
    call = getattr(raw, "entitlements_consume_call", None)
    if call is None:
        call = raw.entitlements_consume_call = _PreparedCall(raw)
    return on_connection._prepare_cursor(call)


def _prepared_refuse(error) -> None:
    global _prepared_refused
    _prepared_refused = True
    logger.warning(
        "PostgreSQL lost a prepared statement of this connection (%s): a pooler in transaction "
        "mode? Consumes go on unprepared in this process; set USAGE_PREPARED_STATEMENTS=false "
        "(docs/deploy.md).",
        error,
    )


def vacuum_settings(on_connection) -> dict[str, str]:
    """The server's `autovacuum` and `track_counts` ("on" or "off")."""
    with on_connection.cursor() as cursor:
        cursor.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('autovacuum', 'track_counts')"
        )
        return dict(cursor.fetchall())


def counters_vacuum() -> None:
    """VACUUM of the usage counters (outside any transaction): their dead versions, and the
    index entries of the versions that left their page (customers/checks.py)."""
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM {COUNTER}")


def hold_write(cursor, values: list) -> list:
    """The hold's second round trip; answers the new reservation's id, if any."""
    cursor.execute(HOLD_WRITE, values)
    return cursor.fetchall()


# A commit's second round trip: the event (unless its id is taken), the counters, the grants
# and the reservation committed, then COMMIT; nothing is written if the event_id is taken.
COMMIT_WRITE = usage_write(
    f"""    ), r AS (
        UPDATE {RESERVATION} SET status = 'committed', committed_quantity = %s,
               committed_at = %s, event_id = (SELECT id FROM ev)
         WHERE id = %s AND EXISTS (SELECT 1 FROM ev)
"""
)


def commit_write(
    cursor, event: list, counters: list, grants: list, reservation: list, draws: tuple
) -> list:
    """The commit's second round trip (`reservation`: committed quantity, when, its id;
    `draws` as `consume_write`'s); answers the new event's id, or nothing (nothing written)
    when the event_id is taken."""
    changed = [[g.pk for g in grants], [g.consumed for g in grants]]
    cursor.execute(
        COMMIT_WRITE,
        [*event, *counter_columns(counters), *changed, *reservation, *_draw_params(draws)],
    )
    return cursor.fetchall()


TURNS_CLASS = 0x75736167  # the advisory locks' first key: "usag"


def turns() -> int:
    """The buckets of customers that batches take turns on (`USAGE_BATCH_TURNS`, 0: none)."""
    return settings.USAGE_BATCH_TURNS


def take_turns(customer_ids: set[int]) -> None:
    """Waits until no other batch is writing counters of customers in the same buckets (an
    advisory lock per bucket, taken in order, until commit). Not for correctness (the row
    locks are), but for cost: a batch that waited on rows locked by another batch would then
    re-read each of its thousands of counters as changed after its snapshot (PostgreSQL's
    re-check of updated rows), doubling PostgreSQL's work; waiting before the locking
    statement instead makes it start after the other's commit. Consumes, one counter row at a
    time, do not take turns. The price: two large batches whose customers differ but share
    buckets (a thousand customers cover all 64) also take turns."""
    buckets = sorted({pk % turns() for pk in customer_ids})
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, b) FROM unnest(%s::int[]) AS b",
            [TURNS_CLASS, pg_array(buckets)],
        )


def granted(customer_ids, feature_ids, since, until) -> set[tuple[int, int]]:
    """(customer, feature) pairs with a grant that may be in force between `since` and
    `until`, read without locking (the lock that follows the counters' checks it again)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT DISTINCT customer_id, feature_id FROM {GRANT} {GRANTS_BETWEEN}",
            grants_between(customer_ids, feature_ids, since, until),
        )
        return set(cursor.fetchall())


# PostgreSQL: locks counters in key order and adds to some of them in the same statement (per
# key: the key, what to add, whether to answer the counter, and its quiet bounds; add NULL:
# nothing). The keys come sorted, and each is looked up and locked in turn (a lateral index
# lookup): the order of the locks whatever the plan, and no scan of the table however large
# it grows. Answers the wanted counters as they were before, but only those of a customer's
# feature with some wanted counter that is not calm: a counter is calm when it has bounds
# (`arithmetic.FastBounds`: `max_used` and up to QUIET_GAPS gaps [lo, hi), NULL when fewer),
# nothing was drawn from grants and its `used` is within them. Then a last row with how many
# it locked and, should some be missing, which.
QUIET_GAPS = 3
LOCK_AND_ADD = f"""
    WITH k AS (
        SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::varchar[], %s::timestamptz[],
                             %s::numeric[], %s::boolean[], %s::boolean[], %s::numeric[],
                             %s::numeric[], %s::numeric[], %s::numeric[], %s::numeric[],
                             %s::numeric[], %s::numeric[])
               WITH ORDINALITY AS k(customer_id, feature_id, win, start, add, want, quiet,
                                    max_used, lo1, hi1, lo2, hi2, lo3, hi3, n)
    ), l AS MATERIALIZED (
        SELECT c.id, k.n, k.add, k.want, c.customer_id, c.feature_id, c.used, c.drawn,
               c.level, c.level_at,
               k.quiet AND c.drawn = 0 AND NOT coalesce(c.used > k.max_used, false)
               AND NOT coalesce(c.used >= k.lo1 AND c.used < k.hi1, false)
               AND NOT coalesce(c.used >= k.lo2 AND c.used < k.hi2, false)
               AND NOT coalesce(c.used >= k.lo3 AND c.used < k.hi3, false) AS calm
          FROM k CROSS JOIN LATERAL (
                SELECT * FROM {COUNTER} c WHERE c.customer_id = k.customer_id
                   AND c.feature_id = k.feature_id AND c."window" = k.win AND c.start = k.start
                   FOR UPDATE
               ) c
    ), a AS (
        UPDATE {COUNTER} c SET used = c.used + l.add
          FROM l WHERE c.id = l.id AND l.add IS NOT NULL
    ), v AS (
        SELECT l.*, bool_or(l.want AND NOT l.calm)
                        OVER (PARTITION BY l.customer_id, l.feature_id) AS loud
          FROM l
    )
    SELECT id, n, used, drawn, level, level_at, NULL::bigint[] FROM v WHERE want AND loud
    UNION ALL
    SELECT NULL, count(*), NULL, NULL, NULL, NULL,
           CASE WHEN count(*) < %s THEN array_agg(n) END FROM l"""


def _quiet_texts(bounds) -> tuple[str, ...]:
    """A key's quiet columns (quiet, max_used, lo1, hi1 .. lo3, hi3) as array elements."""
    if bounds is None or len(bounds.gaps) > QUIET_GAPS:
        return ("f",) + ("NULL",) * (1 + 2 * QUIET_GAPS)
    gaps = [str(value) for gap in bounds.gaps for value in gap]
    gaps += ["NULL"] * (2 * QUIET_GAPS - len(gaps))
    return ("t", "NULL" if bounds.max_used is None else str(bounds.max_used), *gaps)


def lock_and_add(
    ordered: list[tuple],
    adds: dict,
    wanted: set,
    then: tuple | None = None,
    quiet: dict | None = None,
) -> tuple[dict, list, list | None, list | None]:
    """One `LOCK_AND_ADD`: the wanted counters by key (those of customers' features that are
    not calm), and the keys it found no counter for. `quiet`: the `FastBounds` of keys
    (others are never calm).

    `then` (customer ids, feature ids, since, until): in the same message, two statements
    after it, each with a snapshot taken once the counters are locked: the counted window
    kinds of these features (`CountedWindow` rows: feature, kind) and the grants that may be
    in force, locked in id order (`grants_lock`'s rows). Otherwise those two are None."""
    columns = [pg_array(column) for column in zip(*ordered, strict=True)]
    columns.append("{" + ",".join([str(adds.get(key, "NULL")) for key in ordered]) + "}")
    columns.append("{" + ",".join(["t" if key in wanted else "f" for key in ordered]) + "}")
    quiet = quiet or {}
    texts: dict[int, tuple[str, ...]] = {}  # per bounds: most keys share a few
    calm = []
    for key in ordered:
        bounds = quiet.get(key)
        row = texts.get(id(bounds))
        if row is None:
            row = texts[id(bounds)] = _quiet_texts(bounds)
        calm.append(row)
    columns += ["{" + ",".join(column) + "}" for column in zip(*calm, strict=True)]
    params = [*columns, len(ordered)]
    # Nested loops only: the update finds each locked counter by its id, rather than by a
    # scan of the table, which the planner may prefer while the table is small.
    statement = (
        "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; "
        f"{LOCK_AND_ADD}; RESET enable_hashjoin; RESET enable_mergejoin"
    )
    if then is not None:
        customer_ids, feature_ids, since, until = then
        statement += f"; {COUNTED_OF}; {GRANTS_LOCK}"
        params += [pg_array(feature_ids), *grants_between(customer_ids, feature_ids, since, until)]
    counted = grants = None
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        cursor.nextset()  # past the SETs
        cursor.nextset()
        *rows, (_, count, _, _, _, _, found) = cursor.fetchall()
        if then is not None:
            cursor.nextset()  # past the RESETs
            cursor.nextset()
            cursor.nextset()
            counted = cursor.fetchall()
            cursor.nextset()
            grants = cursor.fetchall()
    locked = {}
    for pk, n, used, drawn, level, level_at, _ in rows:
        customer_id, feature_id, kind, start = key = ordered[n - 1]
        counter = CounterRow(pk, customer_id, feature_id, kind, start, None, used, drawn, level,
                             level_at)  # fmt: skip
        counter.loaded = (used, drawn, level, level_at)
        locked[key] = counter
    if count == len(ordered):
        return locked, [], counted, grants
    found = set(found or ())
    return locked, [key for n, key in enumerate(ordered, 1) if n not in found], counted, grants


def batch_customers(external_ids: set[str]) -> list[tuple]:
    """(id, external_id, state_version, catalog version) of the customers named, in one
    query: their external ids as one array parameter."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.id, c.external_id, c.state_version, "
            f"(SELECT version FROM {CATALOG_VERSION} WHERE id = 1) "
            f"FROM {CUSTOMER} c WHERE c.external_id = ANY(%s::text[])",
            [pg_text_array(external_ids)],
        )
        return cursor.fetchall()


def counters_select_for_update(ordered: list[tuple], version_of: int | None):
    """SELECT .. FOR UPDATE of the counters of `ordered` keys, one statement per LOCK_CHUNK
    keys, in the same order as the whole."""
    versions, version_params = versions_sql(version_of)
    locked, version = {}, None
    with connection.cursor() as cursor:
        for offset in range(0, len(ordered), LOCK_CHUNK):
            chunk = ordered[offset : offset + LOCK_CHUNK]
            chunk_version = counters_lock_chunk(cursor, chunk, versions, version_params, locked)
            version = version or chunk_version
    return locked, version


# The grants that may be in force between two moments, locked in id order.
GRANTS_LOCK = (
    "SELECT id, customer_id, feature_id, effective_at, expires_at, quantity, "
    f"consumed, voided_at FROM {GRANT} {GRANTS_BETWEEN} ORDER BY id FOR UPDATE"
)
# The window kinds counted for some features, besides the billing period (`CountedWindow`).
COUNTED_OF = (
    f'SELECT feature_id, "window" FROM {COUNTED_WINDOW} '
    'WHERE feature_id = ANY(%s::bigint[]) ORDER BY feature_id, "window"'
)


def grants_lock(customer_ids, feature_ids, since: dt.datetime, until: dt.datetime) -> list:
    """Arrays rather than IN lists: a batch names up to a thousand customers."""
    with connection.cursor() as cursor:
        cursor.execute(GRANTS_LOCK, grants_between(customer_ids, feature_ids, since, until))
        return cursor.fetchall()


def events_insert(
    items: list[dict], now: dt.datetime, *, immediate: bool = False
) -> dict[tuple[int, str], int]:
    """Six array parameters and the time recorded, whatever the number of events: no giant
    statement. `immediate`: its foreign keys checked at once (`SET CONSTRAINTS ALL IMMEDIATE`,
    in the same round trip), rather than at COMMIT."""
    _, columns, table, pk_column = event_columns()
    with connection.cursor() as cursor:
        cursor.execute(
            ("SET CONSTRAINTS ALL IMMEDIATE; " if immediate else "")
            + f"INSERT INTO {table} ({columns}) SELECT c, f, e, q, t, p::jsonb, r FROM "
            "unnest(%s::bigint[], %s::bigint[], %s::varchar[], %s::numeric[], "
            "%s::timestamptz[], %s::text[]) AS u(c, f, e, q, t, p), "
            "(SELECT %s::timestamptz) AS n(r) "
            "ON CONFLICT (customer_id, event_id) DO NOTHING "
            f"RETURNING customer_id, event_id, {pk_column}",
            [
                pg_array(i["customer"].pk for i in items),
                pg_array(i["feature"].pk for i in items),
                pg_text_array(i["event_id"] for i in items),
                pg_array(i["quantity"] for i in items),
                pg_array(i["timestamp"] for i in items),
                pg_text_array(_properties_text(i["properties"]) for i in items),
                now,
            ],
        )
        if immediate:
            cursor.nextset()  # past SET's
        return {(c, e): pk for c, e, pk in cursor.fetchall()}


def _properties_text(properties: dict) -> str:
    return orjson.dumps(properties).decode() if properties else "{}"


def consume_lock(
    cursor, pk: int, feature_id: int, at: dt.datetime, synchronous: bool, reservation_id=None
) -> list:
    """The first round trip of a consume (or a hold, or a commit): BEGIN, then its counters
    (every window containing `at`) and grants in force locked, with the customer's and the
    catalog's versions and the reservations held (read under the counters' locks, which every
    hold takes); with `reservation_id`, that reservation locked too. Rows: (0, .., state
    version, catalog version), (1, counter ..), (2, grant ..), (3, holds, .., units held, ..),
    and (4, id, status, expires_at, committed_at, quantity, committed_quantity, .., feature,
    event id) for the reservation if it exists."""
    commit = "on" if synchronous else "off"
    params = [commit, pk, feature_id, at, at, pk, feature_id, at, at, at, pk, pk, feature_id, at]
    statement = CONSUME_LOCK
    if reservation_id is not None:
        statement += ";" + RESERVATION_LOCK
        params += [pk, reservation_id]
    cursor.execute(statement, params)
    cursor.nextset()  # past BEGIN's
    cursor.nextset()  # past SET's
    rows = cursor.fetchall()
    cursor.nextset()
    holds, reserved = cursor.fetchone()
    rows.append((3, holds, None, None, None, reserved, None, None, None, None, None))
    if reservation_id is not None:
        cursor.nextset()
        rows += [(4, *row) for row in cursor.fetchall()]
    return rows


def consume_write(cursor, event: list, counters: list, grants: list, draws: list) -> list:
    """The second round trip: the event, the counters, the grants and the event's draws
    ((grant id or None, units), of the window kind `draws[0]`), then COMMIT; nothing is
    written when the event_id is already recorded. Answers the new event's id, if any."""
    changed = [[g.pk for g in grants], [g.consumed for g in grants]]
    cursor.execute(
        CONSUME_WRITE, [*event, *counter_columns(counters), *changed, *_draw_params(draws)]
    )
    return cursor.fetchall()


def _draw_params(draws: tuple) -> list:
    """(window kind, [(grant id or None, units)]) as the draws CTE's three parameters."""
    kind, rows = draws
    return [kind, pg_array([g for g, _ in rows]), pg_array([q for _, q in rows])]


def draws_insert(rows: list[tuple]) -> None:
    """The draw ledger's rows (event, grant or None, window, units) as four arrays."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {DRAW} ({DRAW_COLUMNS}) "
            "SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::varchar[], %s::numeric[])",
            [pg_array(column) for column in zip(*rows, strict=True)],
        )


def rollback(cursor) -> None:
    cursor.execute("ROLLBACK")
