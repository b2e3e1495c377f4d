#!/usr/bin/env python
"""CPU per call of the hot endpoints without the web server and without concurrency.

Run `make bench BENCH_ARGS=--keep-db` once first (it seeds and keeps the database); then:

    .venv/bin/python bench/inprocess.py floor,check,consume --calls 3000

Each call goes through the server's WSGI application (entitlements_site/wsgi.py: the lean
routes ahead of Django's handler, the rest through the whole middleware stack), on one
thread, against the benchmark's PostgreSQL and Redis, after every customer's state is
cached. It reports, per call: the wall time, the CPU of this process (Python: the engine,
Django, psycopg, redis-py) and the CPU of its PostgreSQL backend. With no other request in
flight, these figures move by a few percent between runs, where a wrk run's rate moves by
ten or more: they are what a change to the code path is judged by, in alternating runs
(docs/performance.md). What they leave out is HTTP (gunicorn's parsing and writing, about
0.35 ms of CPU per request here) and what concurrency adds (the GIL changing hands, context
switches, lock waits).
"""

import argparse
import io
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402  (bench/run.py: the same database and settings)

TICKS = os.sysconf("SC_CLK_TCK")
WARM_CALLS = 2000  # calls of each kind first, over every customer


def _backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _environ(kind: str, number: int, run: str, key: str) -> dict:
    customer = bench.HOT if kind == "consume_hot" else f"bench-{(number * 7919) % 1000:04d}"
    entitlement = f"/api/v1/customers/{customer}/entitlements/data-transfer"
    method, path, body = "GET", entitlement, b""
    if kind == "floor":
        path = "/healthz"
    elif kind == "check_all":
        path = f"/api/v1/customers/{customer}/entitlements"
    elif kind in ("consume", "consume_hot"):
        method, path = "POST", entitlement + "/consume"
        body = b'{"quantity": "0.001", "event_id": "i-%s-%d"}' % (run.encode(), number)
    return {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": str(bench.PORT),
        "HTTP_HOST": f"127.0.0.1:{bench.PORT}",
        "HTTP_AUTHORIZATION": f"Bearer {key}",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
    }


def measure(kinds: list[str], calls: int, key: str) -> None:
    from django.db import connection

    from entitlements_site.wsgi import application  # the server's: lean routes first

    run = uuid.uuid4().hex[:8]

    def call(kind: str, number: int) -> None:
        statuses = []

        def start_response(status, headers, *_):
            statuses.append(status)

        body = b"".join(application(_environ(kind, number, run, key), start_response))
        if not statuses[0].startswith("200"):
            sys.exit(f"{kind}: {statuses[0]} {body[:300]!r}")

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    for kind in kinds:
        for number in range(WARM_CALLS):  # states cached; a check's snapshots, voided by consumes
            call(kind, 10**7 + number)
        started, cpu, database = time.perf_counter(), time.process_time(), _backend_cpu(backend)
        for number in range(calls):
            call(kind, number)
        wall = time.perf_counter() - started
        cpu, database = time.process_time() - cpu, _backend_cpu(backend) - database
        per = 1000 / calls
        print(f"{kind:12} per call: wall {wall * per:.3f} ms, this process {cpu * per:.3f} ms "
              f"of CPU, PostgreSQL {database * per:.3f} ms")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kinds", help="comma-separated: floor, check, check_all, consume, "
                        "consume_hot")  # fmt: skip
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    env = bench.seeded_env()
    key = bench.api_key_create("inprocess", env)
    os.environ.update({**env, "DJANGO_SETTINGS_MODULE": "entitlements_site.settings",
                       "DB_CONN_MAX_AGE": "600"})  # fmt: skip
    sys.path.insert(0, str(bench.ROOT))
    import django

    django.setup()
    measure(args.kinds.split(","), args.calls, key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
