"""Usage snapshots mirrored in Redis: a warm check costs one Redis round trip, no query.

A snapshot is what the engine reads from the database for a customer (`_usage_snapshot`: the
state and catalog versions, the counters of the windows in force, the grants in force, the
units held by reservations per feature with the first of their expiries), kept with the `gen`
and `epoch` it was read at and its horizon: the first moment something in it changes by time
alone (a window ends, a grant expires or starts, a hold expires). PostgreSQL stays the ledger
and the only thing written; Redis only ever says "nothing changed since".

The protocol, per customer (keys `es:d:<id>` dirty, `es:g:<id>` gen, `es:s:<id>` snapshot,
plus the global `es:epoch`):
- a writer of usage (consume, batch, hold, commit, release, reversal) calls `write_begin`
  before its transaction (INCR dirty, with a TTL, and INCR gen) and `write_end` after it,
  committed or not (INCR gen, DECR dirty; a heard end goes out after the answer, carried by
  the process's next call to Redis or sent with the others due: `_DeferredEnds`); a rarer
  writer (grants, overrides, subscriptions, the catalog) calls `changed`, which bumps gen (or
  the epoch) at once and again when its transaction commits;
- a reader gets dirty, gen, epoch and the snapshot in one call and uses the snapshot only if
  no write is in flight (dirty 0), gen and epoch are those it was stored with and now is
  before its horizon. Otherwise it reads PostgreSQL and stores what it read tagged with the
  gen and epoch it saw *before* reading: a write committing after that has bumped gen, so the
  stored copy is already void. A reader never stores while a write is in flight.
- when Redis fails, readers and writers use PostgreSQL alone. A write that could not tell
  Redis (`write_begin` or `changed`'s first bump failed) inserts a `SnapshotDebt` row in its
  own transaction (snapshot_debts.py): the debt is durable exactly when the write is, and
  outlives the process. A process settles the debts (bumps the gen of each customer owed,
  or the epoch, then deletes the rows it saw) before its first use of Redis, after any Redis
  failure it met, and when `snapshots_settle` runs (beat, every 10 s): a worker that wrote
  during an outage and was then reloaded or killed leaves nothing stale behind. A worker
  killed between its commit and `write_end` leaves dirty set: readers use PostgreSQL for
  that customer until the dirty key's TTL (a minute) ends; what a reader stored before
  `write_begin` was voided by its gen bump, what it read after sees dirty and is not stored.
Requires a Redis that does not evict keys behind our back (`noeviction` or `volatile-*`).
"""

from __future__ import annotations

import atexit
import datetime as dt
import functools
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

import orjson
from django.conf import settings
from django.db import transaction

from core import shared_redis

from . import snapshot_debts

logger = logging.getLogger(__name__)

PRESENT = dt.timedelta(seconds=5)  # reads of moments older than this never use snapshots
SNAPSHOT_TTL = 3600  # seconds: a bound on any staleness the protocol above cannot see
DIRTY_TTL = 60  # seconds: longer than any write transaction of usage
EPOCH_KEY = "es:epoch"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# Write ends: KEYS from `first` on are pairs (gen, dirty) of customers whose write has ended,
# each INCR gen, and DECR dirty when the write's begin was heard. The ends of heard writes
# this process owes (`_DeferredEnds`) ride with its next read or begin, applied before
# anything else that script does.
_ENDS = """
local function ends(first, heard)
  for i = first, #KEYS, 2 do
    redis.call('INCR', KEYS[i])
    if heard then
      if redis.call('DECR', KEYS[i + 1]) <= 0 then redis.call('DEL', KEYS[i + 1]) end
    end
  end
end
"""
_READ = (
    _ENDS
    + """
ends(6, true)
local n = 0
if KEYS[1] ~= '' then
  n = redis.call('INCR', KEYS[1])
  if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
end
return {n, redis.call('MGET', KEYS[2], KEYS[3], KEYS[4], KEYS[5])}
"""
)
_BEGIN = (
    _ENDS
    + """
local last = 1 + 2 * tonumber(ARGV[4])
ends(last + 1, true)
local n = 0
if KEYS[1] ~= '' then
  n = redis.call('INCR', KEYS[1])
  if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
  if n > tonumber(ARGV[3]) then return n end
end
for i = 2, last, 2 do
  redis.call('INCR', KEYS[i])
  redis.call('EXPIRE', KEYS[i], ARGV[2])
  redis.call('INCR', KEYS[i + 1])
end
return n
"""
)
_END = (
    _ENDS
    + """
ends(1, ARGV[1] == '1')
return 1
"""
)
_scripts: dict = {}
_local = threading.local()  # the write guard of this thread's write in progress


def forget() -> None:
    """Drops this process's registered scripts; it settles again before using Redis (tests:
    as a new process would)."""
    _scripts.clear()
    snapshot_debts.forget()


def enabled() -> bool:
    return bool(shared_redis.url()) and settings.USAGE_SNAPSHOTS


def _redis():
    """The client, having settled the debts first when this process must; None if off."""
    if not enabled():
        return None
    client = shared_redis.client()
    if (
        client is not None
        and snapshot_debts.unsettled()
        and snapshot_debts.settle_with(client, _void) is None
    ):
        return None
    return client


def record_unheard_write() -> None:
    """Called inside a write transaction of usage under `write_guard`: when Redis did not hear
    of its begin, the debt commits (or rolls back) with the write."""
    guard = getattr(_local, "guard", None)
    if guard is not None and not guard.begun and enabled():
        snapshot_debts.owe(guard.customer_ids)


def heard() -> bool:
    """Whether Redis heard of the begin of this thread's write in progress (or snapshots are
    off): if not, the write must call `record_unheard_write` in its transaction."""
    guard = getattr(_local, "guard", None)
    return guard is None or guard.begun or not enabled()


def settle() -> int:
    """Voids the snapshots that the debts recorded so far stand for and deletes those debts
    (safe to run twice, and concurrently); answers how many were settled (0 also when Redis
    cannot be reached: they stay owed)."""
    client = shared_redis.client() if enabled() else None
    if client is None:
        return 0
    return snapshot_debts.settle_with(client, _void) or 0


def _script(client, name: str, source: str):
    """The script, to be called with keys= and args=."""
    run = _scripts.get((id(client), name))
    if run is None:
        script = client.register_script(source)
        run = _scripts[(id(client), name)] = functools.partial(shared_redis.script_run, script)
    return run


# --- rows ---------------------------------------------------------------------------------


@dataclass(slots=True)
class CounterRow:
    """A usage counter as the engine's arithmetic reads it (lighter than the model)."""

    pk: int | None
    customer_id: int | None
    feature_id: int | None
    window: str | None
    start: dt.datetime | None
    end: dt.datetime | None
    used: Decimal
    drawn: Decimal
    level: Decimal | None
    level_at: dt.datetime | None
    loaded: tuple | None = None  # (used, drawn, level, level_at) as locked: to write changes only


@dataclass(slots=True)
class GrantRow:
    pk: int
    customer_id: int
    feature_id: int
    effective_at: dt.datetime
    expires_at: dt.datetime | None
    quantity: Decimal
    consumed: Decimal
    voided_at: dt.datetime | None
    loaded: Decimal | None = None  # `consumed` as locked: to write changes only


@dataclass(slots=True)
class HeldRow:
    """The reservations of one feature held at the snapshot's moment: their units, how many
    they are and the first expiry among them (the snapshot's horizon is no later)."""

    feature_id: int
    quantity: Decimal
    count: int
    expires_at: dt.datetime


@dataclass
class Snapshot:
    version: tuple[int, int]
    counters: list[CounterRow]
    grants: list[GrantRow]
    next_grant_at: dt.datetime | None = None  # the next grant to come into force
    held: list[HeldRow] = field(default_factory=list)  # reservations held, per feature
    horizon: dt.datetime | None = None  # valid before this moment
    loaded_at: dt.datetime | None = None  # and from this one


@dataclass
class Ticket:
    """What a reader saw before reading the database: the tags to store its snapshot with."""

    gen: int
    epoch: int


def _us(value: dt.datetime | None) -> int | None:
    return None if value is None else (value - _EPOCH) // dt.timedelta(microseconds=1)


def _time(value: int | None) -> dt.datetime | None:
    return None if value is None else _EPOCH + dt.timedelta(microseconds=value)


def _dec(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _encode(snapshot: Snapshot, ticket: Ticket) -> bytes:
    return orjson.dumps(
        {
            "t": [ticket.gen, ticket.epoch, _us(snapshot.horizon), _us(snapshot.loaded_at)],
            "v": list(snapshot.version),
            "c": [
                [
                    c.pk,
                    c.customer_id,
                    c.feature_id,
                    c.window,
                    _us(c.start),
                    _us(c.end),
                    str(c.used),
                    str(c.drawn),
                    None if c.level is None else str(c.level),
                    _us(c.level_at),
                ]
                for c in snapshot.counters
            ],
            "g": [
                [
                    g.pk,
                    g.customer_id,
                    g.feature_id,
                    _us(g.effective_at),
                    _us(g.expires_at),
                    str(g.quantity),
                    str(g.consumed),
                    _us(g.voided_at),
                ]
                for g in snapshot.grants
            ],
            "r": [
                [h.feature_id, str(h.quantity), h.count, _us(h.expires_at)] for h in snapshot.held
            ],
        }  # fmt: skip
    )


def _decode(blob: bytes) -> tuple[Snapshot, int, int]:
    data = orjson.loads(blob)
    gen, epoch, horizon, loaded_at = data["t"]
    counters = [
        CounterRow(pk, c, f, w, _time(s), _time(e), Decimal(u), Decimal(d), _dec(lv), _time(la))
        for pk, c, f, w, s, e, u, d, lv, la in data["c"]
    ]
    grants = [
        GrantRow(pk, c, f, _time(ef), _time(ex), Decimal(q), Decimal(cd), _time(v))
        for pk, c, f, ef, ex, q, cd, v in data["g"]
    ]
    held = [HeldRow(f, Decimal(q), n, _time(ex)) for f, q, n, ex in data.get("r", ())]
    snapshot = Snapshot(
        tuple(data["v"]),
        counters,
        grants,
        held=held,
        horizon=_time(horizon),
        loaded_at=_time(loaded_at),
    )
    return snapshot, gen, epoch


def _int(value) -> int:
    return int(value) if value is not None else 0


# --- readers ------------------------------------------------------------------------------


def fetch(customer_id: int, at: dt.datetime) -> tuple[Snapshot | None, Ticket | None]:
    """The stored snapshot if still valid at `at`, else None with the ticket to store a fresh
    one under (None when it must not be stored: a write in flight, or Redis unavailable).
    Counts the request's deferred rate limit in the same round trip."""
    client = _redis()
    if client is None:
        return None, None
    rate = shared_redis.rate_take()
    keys = [rate.key if rate else "", f"es:d:{customer_id}", f"es:g:{customer_id}", EPOCH_KEY]
    keys.append(f"es:s:{customer_id}")
    ends = _ends.take()  # this process's writes ended: applied first, as if sent before
    try:
        count, (dirty, gen, epoch, blob) = _script(client, "read", _READ)(
            keys=keys + _end_keys(ends), args=[rate.ttl if rate else 0]
        )
    except Exception as error:  # noqa: BLE001 (any Redis failure: the database answers)
        _ends.give_back(ends)
        shared_redis.failed(error)
        return None, None
    if rate is not None:
        shared_redis.rate_counted(rate, count)
    if _int(dirty) > 0:
        return None, None
    ticket = Ticket(_int(gen), _int(epoch))
    if blob is None:
        return None, ticket
    snapshot, stored_gen, stored_epoch = _decode(blob)
    if (stored_gen, stored_epoch) != (ticket.gen, ticket.epoch):
        return None, ticket
    if snapshot.horizon is not None and at >= snapshot.horizon:
        return None, ticket
    if snapshot.loaded_at is None or at < snapshot.loaded_at:
        return None, None  # an earlier moment (clocks apart): the database answers it
    return snapshot, None


def store(customer_id: int, snapshot: Snapshot, ticket: Ticket) -> None:
    client = _redis()
    if client is None:
        return
    try:
        client.set(f"es:s:{customer_id}", _encode(snapshot, ticket), ex=SNAPSHOT_TTL)
    except Exception as error:  # noqa: BLE001
        shared_redis.failed(error)


# --- writers ------------------------------------------------------------------------------


class WriteGuard:
    """`write_begin` .. `write_end` around a write transaction of customers' usage."""

    def __init__(self, customer_ids: Iterable[int]):
        self.customer_ids = sorted(set(customer_ids))
        self.begun = False

    def __enter__(self) -> WriteGuard:
        self.outer = getattr(_local, "guard", None)
        _local.guard = self
        try:
            return self._begin()
        except BaseException:
            _local.guard = self.outer
            raise

    def _begin(self) -> WriteGuard:
        client = _redis()
        rate = shared_redis.rate_take()
        if client is None:
            shared_redis.rate_settle()  # counted on its own (or not at all when Redis is down)
            return self
        keys = [rate.key if rate else ""]
        for pk in self.customer_ids:
            keys += [f"es:d:{pk}", f"es:g:{pk}"]
        ends = _ends.take()  # the ends this process owes ride along: no round trip of their own
        args = [rate.ttl if rate else 0, DIRTY_TTL, rate.limit if rate else 0]
        try:
            count = _script(client, "begin", _BEGIN)(
                keys=keys + _end_keys(ends), args=[*args, len(self.customer_ids)]
            )
        except Exception as error:  # noqa: BLE001
            _ends.give_back(ends)
            shared_redis.failed(error)
            return self
        if rate is not None:
            shared_redis.rate_counted(rate, count)  # over the rate: raises, nothing was marked
        self.begun = True
        return self

    def __exit__(self, *exc) -> None:
        _local.guard = self.outer
        self.end()

    def end(self) -> None:
        # Unheard, the write recorded its debt; heard, its dirty mark voids snapshots until
        # this end, or until the mark's TTL if this end does not reach Redis. So a heard end
        # need not hold up the answer: it is sent just after, with the others due (below).
        if self.begun and settings.USAGE_SNAPSHOT_END_DEFERRED:
            _ends.owe(self.customer_ids)
            self.begun = False
            return
        _end(self.customer_ids, self.begun)
        self.begun = False


def _end_keys(customer_ids: list[int]) -> list[str]:
    """The keys of `_ENDS` for these customers' ends."""
    keys = []
    for pk in customer_ids:
        keys += [f"es:g:{pk}", f"es:d:{pk}"]
    return keys


def _end(customer_ids: list[int], begun: bool) -> None:
    """`_END` for these customers (several times one customer: as many ends)."""
    client = _redis()
    if client is None:
        return
    keys = _end_keys(customer_ids)
    try:
        _script(client, "end", _END)(keys=keys, args=["1" if begun else "0"])
    except Exception as error:  # noqa: BLE001
        shared_redis.failed(error)


class _DeferredEnds:
    """The ends of this process's heard writes, sent after the answer rather than before it,
    and without a round trip of their own while the process keeps using Redis: the next read
    or write begin of any of its threads carries them in its script (`take`), applied before
    anything else that script does. Those no such call has taken within a few milliseconds
    are sent together by a thread of their own (`flush`). Until an end arrives the customer's
    dirty mark stays set, so readers use the database (never a stale snapshot); if this
    process dies first, the mark's TTL ends it (DIRTY_TTL). A read in this process applies
    them first, so it may use the snapshot again at once."""

    WAIT = 0.004  # seconds the thread leaves for another call to carry the ends

    def __init__(self):
        self.lock = threading.Lock()
        self.due: list[int] = []
        self.wake = threading.Event()
        self.pid = None

    def owe(self, customer_ids: list[int]) -> None:
        with self.lock:
            self.due.extend(customer_ids)
            if self.pid != os.getpid():  # first use in this process (a fork has no thread)
                self.pid = os.getpid()
                threading.Thread(target=self._run, name="snapshot-ends", daemon=True).start()
        # Set once per round of the thread (it clears the flag before it takes what is due):
        # setting it again takes the event's lock and notifies, on every write.
        if not self.wake.is_set():
            self.wake.set()

    def take(self) -> list[int]:
        """The ends due, now owed by the caller, who sends them or gives them back."""
        if not self.due:
            return []
        with self.lock:
            due, self.due = self.due, []
        return due

    def give_back(self, customer_ids: list[int]) -> None:
        """Ends taken but not sent (Redis failed): due again, for the thread to retry."""
        if customer_ids:
            with self.lock:
                self.due[:0] = customer_ids
            self.wake.set()

    def flush(self) -> None:
        due = self.take()
        if due:
            _end(due, True)

    def _run(self) -> None:
        while True:
            self.wake.wait()
            time.sleep(self.WAIT)
            self.wake.clear()
            try:
                self.flush()
            except Exception:  # noqa: BLE001 (the marks' TTL ends what could not be sent)
                logger.exception("Could not send the snapshot protocol's write ends")


_ends = _DeferredEnds()
atexit.register(_ends.flush)


def ends_flush() -> None:
    """Sends this process's deferred write ends now (tests; a read does it itself)."""
    _ends.flush()


def write_guard(customer_ids: Iterable[int]) -> WriteGuard:
    return WriteGuard(customer_ids)


def changed(customer_ids: Iterable[int] | None) -> None:
    """A customer's state, grants or counters changed outside the hot writers (None: anything,
    such as the catalog): their snapshots are voided now and again on commit."""
    if not enabled():
        return
    ids = None if customer_ids is None else sorted(set(customer_ids))
    owed = not _bump(ids)
    if owed:
        snapshot_debts.owe(ids)  # in the caller's transaction: durable with the change
    # After the commit: a reader may have stored what it read before it (the first bump's gen).
    transaction.on_commit(lambda: _bump(ids) or owed or snapshot_debts.owe(ids))


def _bump(ids: list[int] | None) -> bool:
    """Voids the snapshots now; False when Redis could not be told."""
    client = _redis()
    if client is None:
        return False
    try:
        _void(client, ids)
    except Exception as error:  # noqa: BLE001
        shared_redis.failed(error)
        return False
    return True


def _void(client, ids: list[int] | None) -> None:
    """Bumps these customers' gens (None: the epoch, voiding every snapshot)."""
    if ids is None:
        client.incr(EPOCH_KEY)
    else:
        pipe = client.pipeline(transaction=False)
        for pk in ids:
            pipe.incr(f"es:g:{pk}")
        pipe.execute()
