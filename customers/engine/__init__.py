"""The entitlement engine: the one place that computes what a customer may use.

Every page, API view, email and invoice calls it (DESIGN.md "Customers and the engine"):

- `entitlements_resolve(customer, at=None)`: every effective entitlement of a customer;
- `entitlement_check(customer, feature_key, at=None)`: one;
- `entitlement_consume(customer, feature_key, quantity, event_id, ...)`: the atomic gate;
- `usage_record_batch(events)`: reported usage, idempotent per event;
- `usage_reverse(customer, event_id, reason=...)`: a usage event given back, idempotent;
- `reservation_hold`, `reservation_commit`, `reservation_release`, `reservation_get`: hold
  units, then commit what was used or release them.

Its modules, in the order a request meets them:

- `arithmetic`: PURE (no Django, no database): every entitlement number (limit, granted,
  usage, reserved, balance, overage, capacity, percent used, has_access), the burn-down and the
  gate's decision. The only place those numbers are computed.
- `state`: the customer's subscription, plan terms and overrides, and the catalog, loaded and
  cached per process, tagged with the versions they were loaded at;
- `reads`: check and resolve, from the usage snapshot (Redis mirror or one query);
- `inputs`: what a client sends, checked (quantity, timestamp, event id, properties);
- `ledger`: the writes consume and batch share (locks in order, event insert, write-back);
- `consume`: the gate; `batch`: reported usage; `reservations`: hold, commit, release (the
  gate's locks and arithmetic; held units count against every balance until they expire);
  `reversal`: usage given back;
- `sql`: the vendor SQL, one small module per database (postgresql, sqlite).

Usage lives in `UsageCounter` rows (one per customer, feature and reset window) updated in the
same transaction as the ledger's `UsageEvent`, so a check reads a fixed number of rows whatever
the number of events. Writers lock the counter rows of their (customer, feature) first, in a
fixed order, then the grants, so concurrent consumes serialise on the counter and never
deadlock.
"""

from .arithmetic import BatchResult, ConsumeResult, Entitlement, Terms
from .batch import usage_record_batch
from .consume import entitlement_consume
from .inputs import parse_timestamp
from .reads import entitlement_check, entitlements_resolve, feature_by_key
from .reservations import (
    HoldResult,
    ReservationResult,
    reservation_commit,
    reservation_get,
    reservation_hold,
    reservation_release,
    reservations_expire,
)
from .reversal import ReversalResult, reversal_reason_clean, usage_reverse
from .state import (
    COUNTED_ALWAYS,
    WINDOW_KINDS,
    CustomerState,
    caches_clear,
    counted_windows,
    customer_state,
)

__all__ = [
    "COUNTED_ALWAYS",
    "WINDOW_KINDS",
    "BatchResult",
    "ConsumeResult",
    "ReversalResult",
    "CustomerState",
    "Entitlement",
    "HoldResult",
    "ReservationResult",
    "Terms",
    "caches_clear",
    "counted_windows",
    "customer_state",
    "entitlement_check",
    "entitlement_consume",
    "entitlements_resolve",
    "feature_by_key",
    "parse_timestamp",
    "reversal_reason_clean",
    "reservation_commit",
    "reservation_get",
    "reservation_hold",
    "reservation_release",
    "reservations_expire",
    "usage_record_batch",
    "usage_reverse",
]
