"""What the catalog needs to know of a plan's subscribers, without knowing customers.

Publishing a plan version (`migrate`), previewing its impact and warning before a lower limit
need subscribers and their usage, which the customers app owns; catalog imports nothing from
customers. So the catalog declares this small port and the customers app provides it at
start-up (customers.apps -> customers.plan_subscribers). Until then (a catalog used alone) a
plan has no subscribers.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Protocol


class Subscribers(Protocol):
    def over_limit(
        self, *, version_ids: Iterable[int], feature_id: int, limit: Decimal
    ) -> frozenset[int]:
        """The customers (ids) subscribed on these versions, without an override of the feature
        in force, who have already used more than `limit` plus their grants this period."""

    def migrate(self, *, version) -> int:
        """Moves every active subscriber of `version.plan` to `version` (in the caller's
        transaction; prices change from their next period); answers how many moved."""


class _Nobody:
    def over_limit(self, *, version_ids, feature_id, limit) -> frozenset[int]:
        return frozenset()

    def migrate(self, *, version) -> int:
        return 0


_provided: Subscribers = _Nobody()


def provide(subscribers: Subscribers) -> None:
    global _provided
    _provided = subscribers


def subscribers() -> Subscribers:
    return _provided
