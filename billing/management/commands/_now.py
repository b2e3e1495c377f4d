"""The `--now` option of billing's commands: run as of an instant (tests, catching up)."""

from django.core.management.base import CommandError
from django.utils.dateparse import parse_datetime


def now_argument(parser, what: str) -> None:
    parser.add_argument(
        "--now",
        help=f"{what} as of this ISO 8601 instant (default: now), e.g. 2026-03-01T00:00:00Z.",
    )


def now_option(options):
    """The --now instant, aware; None when not given. CommandError when not a datetime with
    a time zone."""
    if not options["now"]:
        return None
    now = parse_datetime(options["now"])
    if now is None or now.tzinfo is None:
        raise CommandError("--now takes an ISO 8601 datetime with a time zone.")
    return now
