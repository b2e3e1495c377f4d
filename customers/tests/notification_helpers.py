"""Givens shared by the notification and webhook tests: a customer on a plan with 100 GB of
Storage a month, alerts at 80% and 100%."""

import datetime as dt
import http.server
import itertools
import json
import threading
from dataclasses import dataclass, field
from decimal import Decimal

from djmoney.money import Money

from catalog.models import Feature, FeatureKind, Plan, PlanEntitlement, PlanStatus
from catalog.services import plan_current_version_sync
from customers import webhooks
from customers.models import Customer, Subscription
from customers.periods import add_months

_serial = itertools.count(1)


@dataclass
class Storage:
    customer: Customer
    feature: Feature
    plan: Plan
    entitlement: PlanEntitlement
    subscription: Subscription


def storage_given(
    *,
    limit: str = "100",
    notify_at=(80, 100),
    aggregation: str = "sum",
    email: str = "ops@acme.test",
    started_at: dt.datetime | None = None,
) -> Storage:
    n = next(_serial)
    feature = Feature.objects.create(
        key=f"storage-{n}",
        name="Storage",
        kind=FeatureKind.METERED,
        unit="GB",
        aggregation=aggregation,
    )
    plan = Plan.objects.create(
        key=f"team-{n}",
        name="Team",
        price=Money("50.00", "USD"),
        status=PlanStatus.ACTIVE,
        rank=10,
    )
    version = plan_current_version_sync(plan=plan)
    entitlement = PlanEntitlement.objects.create(
        plan=plan, version=version, feature=feature, limit=Decimal(limit), notify_at=list(notify_at)
    )
    customer = Customer.objects.create(external_id=f"acme-{n}", name="Acme Inc", email=email)
    started_at = started_at or dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    subscription = Subscription.objects.create(
        customer=customer,
        plan=plan,
        plan_version=version,
        started_at=started_at,
        current_period_start=started_at,
        current_period_end=add_months(started_at, 1),
    )
    return Storage(customer, feature, plan, entitlement, subscription)


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: verifies each request's signature and timestamp with
    `secret` and keeps what it received. `status` is what it answers."""

    secret: str
    status: int = 200
    received: list[dict] = field(default_factory=list)
    server: http.server.HTTPServer | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hooks"

    def events(self, event_type: str | None = None) -> list[dict]:
        return [r["payload"] for r in self.received if event_type in (None, r["payload"]["type"])]


def receiver_start(secret: str) -> Receiver:
    receiver = Receiver(secret=secret)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            valid = webhooks.webhook_signature_verify(
                secret=receiver.secret,
                timestamp=self.headers[webhooks.TIMESTAMP_HEADER],
                body=body,
                signature=self.headers[webhooks.SIGNATURE_HEADER],
            )
            receiver.received.append(
                {"valid": valid, "headers": dict(self.headers), "payload": json.loads(body)}
            )
            self.send_response(receiver.status if valid else 401)
            self.end_headers()

        def log_message(self, *args):
            pass

    receiver.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=receiver.server.serve_forever, daemon=True).start()
    return receiver
