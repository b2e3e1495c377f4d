"""Usage events retention: old months moved out of the hot ledger table into archive files
(`usage_events_archive`; docs/deploy.md "Usage events: retention and partitions").

What is archived: every event whose `timestamp` and `recorded_at` are both before the cutoff
(the first instant of a month, UTC), except, for each customer and `latest` feature, the events
at its last timestamp before the cutoff (the usage chart carries that level forward into the
retained months). That set is frozen once the cutoff is past: the engine stamps `recorded_at`
with the current time, so no write can add to it while the archive runs.

How: per month of `timestamp`, the events are written to a gzipped JSON Lines file (to a
`.partial` name, fsynced, then renamed), and only then deleted, by the ids read back from the
finished file, a batch per transaction. A crash within a month leaves either a `.partial` file
and nothing of that month deleted, or a finished file holding every deleted row; a second run
archives what is left into a new file (names carry the run's time and are never overwritten).
`usage_events_restore` (`--restore`) puts archived rows back, skipping rows already present.

A row keeps what the ledger says of its event besides the event itself: its reversal mark
(`reversed_at`), its draws (which grants it drew on, and its overage: `UsageDraw`) and its
reversal (`UsageReversal`: reason, who, what went back); a restore puts those back with it.

Counters are not touched: they were updated with each event, so old windows keep their usage.
Before the first archive, every feature's lifetime (`never`) window is made counted:
a kind that comes into use later is recomputed from the ledger, which would then miss the
archived events, and a lifetime window is never in the past. (Day, week and month windows that
come into use later are recomputed from the retained events: those before the cutoff, at least
a month old, show only what is retained.)
`usage_counters_rebuild` recomputes counters from the events alone and would reset windows whose
events were archived; after an archive, run it with --dry-run only, or restore first.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, F, Max, Window
from django.db.models.functions import TruncMonth
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from catalog.models import Aggregation, Feature, Reset

from .models import Customer, Grant, UsageDraw, UsageEvent, UsageReversal
from .periods import add_months
from .usage import counted_windows_ensure

BATCH = 2000  # rows per DELETE or restore, each in its own short transaction
EXPORT_CHUNK = 5000  # rows fetched per round trip while exporting
MIN_RETAINED_MONTHS = 1  # full months before the current one that are never archived
FILE_PREFIX = "usage_events_"


class RetentionError(ValueError):
    """A cutoff or archive file the command refuses (too recent, malformed)."""


@dataclass
class MonthArchive:
    month: dt.datetime  # first instant of the month (UTC)
    events: int  # archived (or, in a dry run, to archive)
    path: Path | None = None
    sha256: str = ""
    deleted: int = 0  # rows removed from the hot table (a dry run removes none)


@dataclass
class ArchiveReport:
    before: dt.datetime
    dry_run: bool
    kept: int = 0  # events kept back: the last level of each customer's `latest` features
    months: list[MonthArchive] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(m.events for m in self.months)

    @property
    def deleted(self) -> int:
        return sum(m.deleted for m in self.months)


def archive_cutoff(month: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """The cutoff for `--before YYYY-MM`: that month's first instant (UTC). Refuses a cutoff
    within the current month or the MIN_RETAINED_MONTHS full months before it."""
    try:
        year, number = (int(part) for part in month.split("-"))
        cutoff = dt.datetime(year, number, 1, tzinfo=dt.UTC)
    except ValueError:
        raise RetentionError(f"{month!r} is not a month (YYYY-MM).") from None
    now = now or timezone.now()
    current = dt.datetime(now.year, now.month, 1, tzinfo=dt.UTC)
    latest = add_months(current, -MIN_RETAINED_MONTHS)
    if cutoff > latest:
        raise RetentionError(
            f"--before {month} is too recent: the current month and the {MIN_RETAINED_MONTHS} "
            f"before it stay in the ledger (latest cutoff {latest:%Y-%m})."
        )
    return cutoff


def archived_events(before: dt.datetime):
    """The events an archive with this cutoff moves out, before the kept levels are removed."""
    return UsageEvent.objects.filter(timestamp__lt=before, recorded_at__lt=before)


def kept_events(before: dt.datetime) -> dict[int, dt.datetime]:
    """For each customer and `latest` feature, its events at the last timestamp before the
    cutoff (the level the usage chart carries into the retained months), among those the
    archive would move: id -> timestamp."""
    last = (
        UsageEvent.objects.filter(feature__aggregation=Aggregation.LATEST, timestamp__lt=before)
        .annotate(
            last_at=Window(Max("timestamp"), partition_by=[F("customer_id"), F("feature_id")])
        )
        .filter(timestamp=F("last_at"))
        .values_list("pk", "timestamp", "recorded_at")
    )
    return {pk: at for pk, at, recorded_at in last if recorded_at < before}


def usage_events_archive(
    *, before: dt.datetime, output_dir: Path | None, dry_run: bool = False
) -> ArchiveReport:
    """Moves the events before `before` (see the module docstring for which) out of the ledger
    into one file per month under `output_dir`, oldest month first. A dry run counts them and
    writes and deletes nothing. Counters are untouched. Safe to run again after a crash."""
    report = ArchiveReport(before=before, dry_run=dry_run)
    kept = kept_events(before)
    report.kept = len(kept)
    candidates = archived_events(before)
    per_month = (
        candidates.annotate(month=TruncMonth("timestamp", tzinfo=dt.UTC))
        .values("month")
        .annotate(n=Count("pk"))
        .order_by("month")
    )
    months = [(row["month"], row["n"]) for row in per_month]
    if dry_run:
        kept_months = Counter(
            dt.datetime(at.year, at.month, 1, tzinfo=dt.UTC) for at in kept.values()
        )
        report.months = [
            MonthArchive(month, n - kept_months.get(month, 0))
            for month, n in months
            if n - kept_months.get(month, 0) > 0
        ]
        return report
    if output_dir is None:
        raise RetentionError("an output directory is required unless it is a dry run.")
    for feature in Feature.objects.all():  # of any kind now: it may have been metered
        counted_windows_ensure(feature=feature, kinds=[Reset.NEVER])
    output_dir.mkdir(parents=True, exist_ok=True)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%S%fZ")  # one name per run
    for month, _ in months:
        rows = candidates.filter(timestamp__gte=month, timestamp__lt=add_months(month, 1))
        archive = _export_month(rows, kept, month, output_dir / f"{FILE_PREFIX}{month:%Y-%m}")
        if archive.events:
            final = output_dir / f"{FILE_PREFIX}{month:%Y-%m}.{stamp}.jsonl.gz"
            if final.exists():  # never overwrite an archive: it may hold deleted rows
                raise RetentionError(f"{final} exists already.")
            archive.path = archive.path.rename(final)
            _fsync_dir(output_dir)
            archive.deleted = _delete_archived(archive.path)
            report.months.append(archive)
        else:
            archive.path.unlink()
    return report


ROW_FIELDS = (
    "pk",
    "customer_id",
    "customer__external_id",
    "feature_id",
    "feature__key",
    "event_id",
    "quantity",
    "timestamp",
    "properties",
    "recorded_at",
    "reversed_at",
)


def _export_month(
    rows, kept: dict[int, dt.datetime], month: dt.datetime, base: Path
) -> MonthArchive:
    """Writes the month's rows (by id) to `<base>.partial`, fsynced; returns it unrenamed."""
    archive = MonthArchive(month=month, events=0, path=base.with_name(base.name + ".partial"))
    digest = hashlib.sha256()
    with open(archive.path, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb") as out:
            values = rows.order_by("pk").values_list(*ROW_FIELDS).iterator(EXPORT_CHUNK)
            for chunk in _batches((v for v in values if v[0] not in kept), EXPORT_CHUNK):
                draws, reversals = _ledger_of([v[0] for v in chunk])
                for v in chunk:
                    out.write(_encode(v, draws.get(v[0], []), reversals.get(v[0])))
                archive.events += len(chunk)
        raw.flush()
        os.fsync(raw.fileno())
    with open(archive.path, "rb") as written:
        for block in iter(lambda: written.read(1 << 20), b""):
            digest.update(block)
    archive.sha256 = digest.hexdigest()
    return archive


def _ledger_of(event_ids: list[int]) -> tuple[dict[int, list], dict[int, dict]]:
    """The draws and the reversals of these events, by event id, as archived."""
    draws: dict[int, list] = {}
    for event, grant, window, quantity in (
        UsageDraw.objects.filter(event_id__in=event_ids)
        .order_by("pk")
        .values_list("event_id", "grant_id", "window", "quantity")
    ):
        draws.setdefault(event, []).append([grant, window, str(quantity)])
    reversals = {
        r["event_id"]: {
            "reason": r["reason"],
            "quantity": str(r["quantity"]),
            "given_back": r["given_back"],
            "api_key_name": r["api_key_name"],
            "created_by_id": r["created_by_id"],
            "created_at": r["created_at"].isoformat(),
        }
        for r in UsageReversal.objects.filter(event_id__in=event_ids).values()
    }
    return draws, reversals


def _encode(values, draws: list, reversal: dict | None) -> bytes:
    pk, customer_id, customer, feature_id, feature, event_id, quantity, at, props, rec, rev = values
    row = {
        "id": pk,
        "customer_id": customer_id,
        "customer": customer,
        "feature_id": feature_id,
        "feature": feature,
        "event_id": event_id,
        "quantity": str(quantity),
        "timestamp": at.isoformat(),
        "properties": props,
        "recorded_at": rec.isoformat(),
        "reversed_at": rev.isoformat() if rev else None,
        "draws": draws,
        "reversal": reversal,
    }
    return json.dumps(row, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def _delete_archived(path: Path) -> int:
    """Deletes the rows listed in a finished archive file, a batch of ids per transaction."""
    deleted = 0
    for batch in _batches((row["id"] for row in read_archive(path)), BATCH):
        with transaction.atomic():
            # Their draws and reversals go with them (and come back with a restore).
            deleted += (
                UsageEvent.objects.filter(pk__in=batch).delete()[1].get(UsageEvent._meta.label, 0)
            )
    return deleted


def read_archive(path: Path) -> Iterator[dict]:
    """The rows of an archive file, as written."""
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                raise RetentionError(f"{path}: line {number} is not JSON.") from None


@dataclass
class RestoreReport:
    rows: int = 0  # read from the files
    restored: int = 0
    present: int = 0  # already in the ledger (restored before, or never deleted)
    conflicting: int = 0  # the customer has since recorded another event with that event_id
    orphaned: int = 0  # the customer was deleted since


def usage_events_restore(paths: Iterable[Path]) -> RestoreReport:
    """Puts archived events back into the ledger with their original ids, a batch per
    transaction. Rows already present are skipped, so it is safe to run again. Counters are
    untouched: they never lost these events."""
    report = RestoreReport()
    for path in paths:
        for batch in _batches(read_archive(path), BATCH):
            report.rows += len(batch)
            with transaction.atomic():
                _restore_batch(batch, report)
    return report


def _restore_batch(batch: list[dict], report: RestoreReport) -> None:
    customers = set(
        Customer.objects.filter(pk__in={r["customer_id"] for r in batch}).values_list(
            "pk", flat=True
        )
    )
    ids = [r["id"] for r in batch]
    present = set(UsageEvent.objects.filter(pk__in=ids).values_list("pk", flat=True))
    fresh = [r for r in batch if r["id"] not in present and r["customer_id"] in customers]
    # ignore_conflicts: a row whose (customer, event_id) is taken by a later event stays out.
    UsageEvent.objects.bulk_create([_decode(r) for r in fresh], ignore_conflicts=True)
    restored_ids = set(
        UsageEvent.objects.filter(pk__in=[r["id"] for r in fresh]).values_list("pk", flat=True)
    )
    _restore_ledger([r for r in fresh if r["id"] in restored_ids])
    restored = len(restored_ids)
    report.present += len(present)
    report.orphaned += sum(1 for r in batch if r["customer_id"] not in customers)
    report.restored += restored
    report.conflicting += len(fresh) - restored


def _restore_ledger(rows: list[dict]) -> None:
    """The draws and reversals of restored events (a grant or a user deleted since: the draw
    is left out, the reversal keeps no user)."""
    grants = {g for r in rows for g, _, _ in r.get("draws") or () if g is not None}
    grants = set(Grant.objects.filter(pk__in=grants).values_list("pk", flat=True))
    users = {r["reversal"]["created_by_id"] for r in rows if r.get("reversal")} - {None}
    users = set(get_user_model().objects.filter(pk__in=users).values_list("pk", flat=True))
    UsageDraw.objects.bulk_create(
        [
            UsageDraw(event_id=r["id"], grant_id=g, window=w, quantity=Decimal(q))
            for r in rows
            for g, w, q in r.get("draws") or ()
            if g is None or g in grants
        ]
    )
    UsageReversal.objects.bulk_create(
        [
            UsageReversal(
                event_id=r["id"],
                reason=v["reason"],
                quantity=Decimal(v["quantity"]),
                given_back=v["given_back"],
                api_key_name=v["api_key_name"],
                created_by_id=v["created_by_id"] if v["created_by_id"] in users else None,
                created_at=parse_datetime(v["created_at"]),
            )
            for r in rows
            if (v := r.get("reversal"))
        ],
        ignore_conflicts=True,
    )


def _decode(row: dict) -> UsageEvent:
    return UsageEvent(
        pk=row["id"],
        customer_id=row["customer_id"],
        feature_id=row["feature_id"],
        event_id=row["event_id"],
        quantity=Decimal(row["quantity"]),
        timestamp=parse_datetime(row["timestamp"]),
        properties=row["properties"],
        recorded_at=parse_datetime(row["recorded_at"]),
        # Archives written before reversals existed have no mark: counted.
        reversed_at=parse_datetime(row["reversed_at"]) if row.get("reversed_at") else None,
    )


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
