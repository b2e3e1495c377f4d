from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from customers.retention import (
    RetentionError,
    archive_cutoff,
    usage_events_archive,
    usage_events_restore,
)


class Command(BaseCommand):
    help = (
        "Move usage events of months before --before YYYY-MM out of the ledger into gzipped "
        "JSON Lines files under --output, one per month (--dry-run: only count them). "
        "Counters keep their usage. --restore FILE... puts archived events back."
    )

    def add_arguments(self, parser):
        parser.add_argument("--before", metavar="YYYY-MM", help="Archive months before this.")
        parser.add_argument("--output", metavar="DIR", help="Directory for the archive files.")
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would move; change nothing."
        )
        parser.add_argument(
            "--restore",
            nargs="+",
            metavar="FILE",
            help="Put the events of these archive files back into the ledger.",
        )

    def handle(self, *args, before=None, output=None, dry_run=False, restore=None, **options):
        try:
            if restore:
                if before or dry_run:
                    raise CommandError("--restore takes only archive files.")
                self._restore([Path(p) for p in restore])
            elif before:
                self._archive(archive_cutoff(before), output, dry_run)
            else:
                raise CommandError("Give --before YYYY-MM (with --output DIR or --dry-run).")
        except RetentionError as error:
            raise CommandError(str(error)) from None

    def _archive(self, cutoff, output, dry_run):
        if not dry_run and not output:
            raise CommandError("--output DIR is required (or --dry-run).")
        report = usage_events_archive(
            before=cutoff, output_dir=Path(output) if output else None, dry_run=dry_run
        )
        for month in report.months:
            if dry_run:
                self.stdout.write(f"{month.month:%Y-%m}: {month.events} events would move")
            else:
                self.stdout.write(
                    f"{month.month:%Y-%m}: {month.events} events written to {month.path} "
                    f"(sha256 {month.sha256}), {month.deleted} deleted from the ledger"
                )
        verb = "would move" if dry_run else "moved"
        self.stdout.write(
            self.style.SUCCESS(
                f"Before {cutoff:%Y-%m}: {report.events} events {verb} in {len(report.months)} "
                f"months; {report.kept} kept (the last level of each customer's `latest` "
                "features). Counters are unchanged."
            )
        )
        if not dry_run and report.events:
            self.stdout.write(
                self.style.WARNING(
                    "rebuild_usage_counters recomputes from the ledger alone: after an archive "
                    "run it with --dry-run only, or restore the archive first "
                    "(docs/deploy.md, 'Usage events: retention and partitions')."
                )
            )

    def _restore(self, paths):
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise CommandError(f"No such file: {', '.join(missing)}")
        report = usage_events_restore(paths)
        self.stdout.write(
            self.style.SUCCESS(
                f"{report.rows} archived events read: {report.restored} restored, "
                f"{report.present} already present, {report.conflicting} whose event_id the "
                f"customer has used since, {report.orphaned} of deleted customers."
            )
        )
