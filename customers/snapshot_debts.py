"""Writes that Redis did not hear of, owed to the usage snapshots (the protocol is in
customers/snapshots.py).

A write that could not tell Redis records a `SnapshotDebt` row in its own transaction: the debt
is durable exactly when the write is, whatever then happens to the process that wrote. Settling
voids the snapshots the debts stand for (a bump of each customer's gen, or of the epoch), then
deletes the rows it saw. A process settles before its first use of Redis (one that wrote and
died left its debts to others), after each Redis failure it meets, and when the beat task runs.
"""

import logging
from collections.abc import Callable

from django.db import DatabaseError, transaction

from core import shared_redis

from .models import SnapshotDebt

logger = logging.getLogger(__name__)

SETTLE_CHUNK = 1000  # debts settled per round: a bump of their customers, then their delete
SETTLE_ROUNDS = 100

# This process must settle before it trusts Redis whenever `_failures` has moved past what it
# last settled. Its threads may settle at the same time (each sees it unsettled until one has
# finished): no thread waits on another while holding locks in the database.
_failures = 1  # a new process starts unsettled
_settled = 0


def _failed() -> None:
    global _failures
    _failures += 1


shared_redis.on_failure(_failed)


def forget() -> None:
    """Unsettles this process, as at its start (tests)."""
    _failed()


def unsettled() -> bool:
    return _settled != _failures


def owe(customer_ids: list[int] | None) -> None:
    """Records in the caller's transaction (or at once, outside one) that these customers'
    snapshots (None: every snapshot) must be voided."""
    ids = [None] if customer_ids is None else customer_ids
    SnapshotDebt.objects.bulk_create([SnapshotDebt(customer_id=pk) for pk in ids])


def settle_with(client, void: Callable[[object, list[int] | None], None]) -> int | None:
    """Settles with `client`; `void(client, ids)` bumps their gens (None: the epoch). Answers
    how many debts were settled, None when Redis failed (the debts stay owed and this process
    unsettled). A database error reading the debts is raised."""
    global _settled
    target = _failures  # a failure from here on asks for another round
    try:
        settled = _settle(client, void)
    except Exception as error:
        import redis

        if not isinstance(error, redis.RedisError | OSError):
            raise
        shared_redis.failed(error)
        return None
    _settled = max(_settled, target)
    return settled


def _settle(client, void) -> int:
    settled = 0
    for _ in range(SETTLE_ROUNDS):
        debts = list(
            SnapshotDebt.objects.order_by("pk").values_list("pk", "customer_id")[:SETTLE_CHUNK]
        )
        if not debts:
            return settled
        owed = {customer_id for _, customer_id in debts}
        # The bump before the delete: a debt deleted unpaid would be lost with this process.
        void(client, None if None in owed else sorted(owed))
        # Only the rows seen: one committing meanwhile was not paid by this bump.
        try:
            with transaction.atomic():
                SnapshotDebt.objects.filter(pk__in=[pk for pk, _ in debts]).delete()
        except DatabaseError:
            # Paid already (a deadlock with another settling, say): they are paid again later.
            logger.warning("Snapshot debts paid but not deleted", exc_info=True)
            return settled + len(debts)
        settled += len(debts)
        if len(debts) < SETTLE_CHUNK:
            return settled
    # More are owed than a settling deletes: void every snapshot for them (deleted later).
    void(client, None)
    return settled
