#!/usr/bin/env python
"""`make bench`: the hot path measured against the framework's floor, on one machine.

1. a fresh PostgreSQL database, seeded with 1,000 customers and 1,000,000 usage events;
2. gunicorn with the production config (entitlements_site/gunicorn_prod.py), DEBUG off, 2
   workers unless --workers;
3. wrk on loopback, 16 connections: the floor (/healthz), check one, check all, consume_hot
   (one customer), consume (spread over the 1,000), and reservations: hold (each a new
   reservation) and hold_commit (holds and commits of holds made 64 requests earlier, half
   and half); `--soak` adds rounds of continuous load (decay);
4. batch ingestion throughput through POST /api/v1/usage (batches of 1000, several clients);
5. check latency for a customer with 1,000 events and one with 1,000,000;
6. a table on stdout and bench/results.json. Everything it started is stopped at the end.
"""

import argparse
import http.client
import json
import multiprocessing
import os
import re
import runpy
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
HOST, PORT = "127.0.0.1", int(os.environ.get("BENCH_PORT", "8099"))
DB = os.environ.get("BENCH_DB", "entitlements_bench")
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")
SERVER_CONFIG = "entitlements_site/gunicorn_prod.py"  # the production server's configuration
# The wrk scenarios, in order (floor first: the others' ratios are to it). consume_hot: one
# customer, distinct event ids; consume: spread over the 1,000 customers.
SCENARIOS = ["floor", "check", "check_all", "consume_hot", "consume", "hold", "hold_commit"]
HOT = os.environ.get("BENCH_HOT", "bench-0002")  # consume_hot's one customer (soft limit)
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "7"))  # flushed at the start of a run


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, cwd=ROOT, **kwargs)


def ensure_tools() -> None:
    if shutil.which("wrk") is None:
        log("wrk is missing: installing it from Debian's packages")
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        run([*sudo, "apt-get", "update", "-qq"])
        run([*sudo, "apt-get", "install", "-y", "-qq", "wrk"], env={**os.environ,
            "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
    if subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"]).returncode != 0:
        version = os.listdir("/etc/postgresql")[0]
        run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"])
    if subprocess.run(["redis-cli", "ping"], capture_output=True).returncode != 0:
        run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379",
             "--save", "", "--appendonly", "no"])  # fmt: skip


def psql(sql: str) -> None:
    run(["psql", f"{PG}/postgres", "-q", "-c", sql], stdout=subprocess.DEVNULL)


def vacuum(tables: str = "customers_usagecounter") -> None:
    """What autovacuum would have done by now: the usage counters take thousands of updates a
    second, and a server with autovacuum off (as on some benchmark machines) would measure a
    table of dead rows by the end of a run."""
    run(["psql", f"{PG}/{DB}", "-q", "-c", f"VACUUM (ANALYZE) {tables}"],
        stdout=subprocess.DEVNULL)  # fmt: skip


def autovacuum() -> str:
    probe = subprocess.run(["psql", f"{PG}/{DB}", "-tAq", "-c", "SHOW autovacuum"],
                           capture_output=True, text=True)  # fmt: skip
    return probe.stdout.strip() or "unknown"


def bench_env() -> dict:
    return {
        **os.environ,
        "DATABASE_URL": f"{PG}/{DB}",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "bench-" + uuid.uuid4().hex,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_SECURE_COOKIES": "false",
        "CACHE_URL": f"{REDIS}/{REDIS_DB}",
        "API_RATE_LIMIT": "100000000/min",
        "LOG_LEVEL": "WARNING",
        "CELERY_BROKER_URL": "",
    }


def port_free() -> None:
    """Stops the run if something already answers on the benchmark's port: a server left
    running would be measured instead of the one this run starts (which could not bind)."""
    with socket.socket() as probe:
        if probe.connect_ex((HOST, PORT)) == 0:
            sys.exit(f"{HOST}:{PORT} is in use (a server left running?): stop it, or set "
                     "BENCH_PORT")  # fmt: skip


def wait_http(path: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection(HOST, PORT, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status < 500:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not answer {path}")


# --- wrk ----------------------------------------------------------------------------------

WRK_SCRIPT = """
local key = "%(key)s"
local kind = "%(kind)s"
local customers = %(customers)d
local run = "%(run)s"  -- this wrk run's own event and reservation ids
local LAG = 64
local counter = 0
-- Each thread's number, set by setup() as a global of that thread (a `local` here would
-- hide it: every thread would then send the same event ids, half of them replays).
tid = 0
local n = 0
function setup(thread)
  n = n + 1
  thread:set("tid", n)
end
function init(args)
  counter = 0
end
request = function()
  counter = counter + 1
  local c = string.format("bench-%%04d", (counter * 7919 + tid * 31) %% customers)
  if kind == "consume_hot" then
    c = "%(hot)s"
  end
  local headers = {["Authorization"] = "Bearer " .. key,
                   ["Content-Type"] = "application/json"}
  if kind == "floor" then
    return wrk.format("GET", "/healthz", headers)
  elseif kind == "check" then
    return wrk.format("GET", "/api/v1/customers/" .. c .. "/entitlements/data-transfer", headers)
  elseif kind == "check_all" then
    return wrk.format("GET", "/api/v1/customers/" .. c .. "/entitlements", headers)
  elseif kind == "warm" then
    -- check all on a new connection each time: every worker gets its share of the customers
    headers["Connection"] = "close"
    return wrk.format("GET", "/api/v1/customers/" .. c .. "/entitlements", headers)
  elseif kind == "consume" or kind == "consume_hot" then
    local body = string.format('{"quantity": "0.001", "event_id": "w-%%s-%%d-%%d"}',
                               run, tid, counter)
    return wrk.format("POST", "/api/v1/customers/" .. c .. "/entitlements/data-transfer/consume",
                      headers, body)
  end
  -- Reservations: a hold is a new reservation_id; in hold_commit every other request commits
  -- the hold this thread made LAG holds earlier (long answered: 8 connections per thread).
  local holds = "/api/v1/customers/%%s/entitlements/data-transfer/reservations"
  local hold = (kind == "hold") and counter or math.floor((counter + 1) / 2)
  if kind == "hold_commit" and counter %% 2 == 0 and hold > LAG then
    local done = hold - LAG
    local owner = string.format("bench-%%04d", (done * 7919 + tid * 31) %% customers)
    local id = string.format("r-%%s-%%d-%%d", run, tid, done)
    return wrk.format("POST", string.format(holds, owner) .. "/" .. id .. "/commit", headers,
                      '{"quantity": "0.0005"}')
  end
  local owner = string.format("bench-%%04d", (hold * 7919 + tid * 31) %% customers)
  local body = string.format(
    '{"reservation_id": "r-%%s-%%d-%%d", "quantity": "0.001", "ttl_seconds": 3600}',
    run, tid, hold)
  return wrk.format("POST", string.format(holds, owner), headers, body)
end
"""
HOLD_KINDS = ("hold", "hold_commit")
WARM_SECONDS = 8  # per worker: about ten new connections per customer and worker


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk_run(kind: str, key: str, seconds: int, connections: int) -> str:
    """One wrk run; its event ids are its own (a warm-up, a measure, a round of a soak)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % {"key": key, "kind": kind, "customers": 1000, "hot": HOT,
                                   "run": uuid.uuid4().hex[:8]})  # fmt: skip
    try:
        return subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name,
             f"http://{HOST}:{PORT}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    finally:
        os.unlink(script.name)


def wrk(kind: str, key: str, duration: int, warmup: int, connections: int) -> dict:
    if warmup:
        wrk_run(kind, key, warmup, connections)
    return wrk_figures(wrk_run(kind, key, duration, connections))


def wrk_figures(out: str) -> dict:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": round(rps, 1),
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(0) if socket_errors else "",
    }


def soak_rounds(key: str, args) -> dict:
    """Continuous load for `args.soak` seconds, no VACUUM: rounds of the floor, consume on the
    hot customer, consume spread and check, one after the other, each round's figures kept
    with its ratio to that round's floor (the machine is shared: its speed moves). A ratio
    that falls from the first rounds to the last is decay."""
    kinds = ("floor", "consume_hot", "consume", "check")
    rounds = {kind: [] for kind in kinds}
    deadline = time.time() + args.soak
    while time.time() < deadline:
        for kind in kinds:
            figures = wrk_figures(wrk_run(kind, key, args.soak_round, args.connections))
            figures["load"] = os.getloadavg()[0]
            rounds[kind].append(figures)
            figures["ratio_to_floor"] = round(figures["rps"] / rounds["floor"][-1]["rps"], 3)
            log(
                f"  soak {kind}: {figures['rps']} req/s ({figures['ratio_to_floor']} x the "
                f"round's floor), p99 {figures['p99_ms']} ms, load {figures['load']:.2f}"
            )
    summary = {}
    for kind, series in rounds.items():
        third = max(1, len(series) // 3)
        first = statistics.mean(r["ratio_to_floor"] for r in series[:third])
        last = statistics.mean(r["ratio_to_floor"] for r in series[-third:])
        summary[kind] = {
            "rounds": series,
            "ratio_first_third": round(first, 3),
            "ratio_last_third": round(last, 3),
            "last_over_first": round(last / first, 3),
        }
    return {"seconds": args.soak, "round_s": args.soak_round, "by_kind": summary}


# --- ingestion and latency ----------------------------------------------------------------


def _ingest_client(args) -> int:
    key, seconds, client, run = args
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    accepted, batch, deadline = 0, 0, time.time() + seconds
    while time.time() < deadline:
        events = [
            {
                "event_id": f"i-{run}-{client}-{batch}-{i}",
                "customer": f"bench-{(batch * 1000 + i) % 1000:04d}",
                "feature": "data-transfer",
                "quantity": "0.01",
            }
            for i in range(1000)
        ]
        body = json.dumps({"events": events})
        # A connection per request: gunicorn's sync workers do not keep connections alive.
        conn = http.client.HTTPConnection(HOST, PORT, timeout=60)
        conn.request("POST", "/api/v1/usage", body, headers)
        response = conn.getresponse()
        payload = response.read()
        conn.close()
        if response.status != 200:
            raise RuntimeError(f"ingest answered {response.status}: {payload[:300]!r}")
        accepted += json.loads(payload)["accepted"]
        batch += 1
    return accepted


def ingest(key: str, seconds: int, clients: int) -> dict:
    started = time.time()
    with multiprocessing.Pool(clients) as pool:
        # Event ids unique to this run: a reused database (--keep-db) must not see replays.
        run = uuid.uuid4().hex[:8]
        jobs = [(key, seconds, c, run) for c in range(clients)]
        accepted = sum(pool.map(_ingest_client, jobs))
    elapsed = time.time() - started
    return {"events": accepted, "seconds": round(elapsed, 1),
            "events_per_s": round(accepted / elapsed, 1)}  # fmt: skip


def check_latency(key: str, customer: str, requests: int) -> float:
    timings = []
    for _ in range(requests):
        conn = http.client.HTTPConnection(HOST, PORT, timeout=10)
        started = time.perf_counter()
        conn.request("GET", f"/api/v1/customers/{customer}/entitlements/data-transfer",
                     headers={"Authorization": f"Bearer {key}"})  # fmt: skip
        response = conn.getresponse()
        response.read()
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status == 200, response.status
        conn.close()
    return round(statistics.median(timings), 3)


# --- the run ------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument(
        "--worker-class", default=None, help="sync or gthread (default: the config file's)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads per gthread worker (default: the config file's)",
    )
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk scenario")
    parser.add_argument(
        "--warmup",
        type=int,
        default=8,
        help="seconds of load before each measure (fills the per-process caches)",
    )
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--ingest-clients", type=int, default=4)
    parser.add_argument("--ingest-seconds", type=int, default=20)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results.json"))
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated parts to run while iterating (the SCENARIOS, ingest, "
        "latency); the full run is the benchmark",
    )
    parser.add_argument(
        "--no-vacuum",
        dest="vacuum",
        action="store_false",
        help="no VACUUM of the counters before each scenario (what a server without "
        "autovacuum does)",
    )
    parser.add_argument(
        "--soak",
        type=int,
        default=0,
        help="after the scenarios, this many seconds of continuous load in rounds "
        "(consume_hot, consume, check), no VACUUM: each round's rate (decay)",
    )
    parser.add_argument("--soak-round", type=int, default=20, help="seconds per soak round")
    parser.add_argument(
        "--keep-db",
        action="store_true",
        help="reuse the seeded database if it exists and keep it afterwards (for iterating)",
    )
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    wanted = lambda part: not only or part in only  # noqa: E731

    ensure_tools()
    env = bench_env()
    env["BENCH_BIG_EVENTS"] = str(args.events)
    started = time.time()
    server = None
    try:
        subprocess.run(["redis-cli", "-n", str(REDIS_DB), "flushdb"], capture_output=True)
        if args.keep_db and database_seeded():
            log(f"reusing the seeded database {DB}")
            run([PYTHON, "manage.py", "migrate", "--noinput", "-v0"], env=env)
        else:
            log(f"fresh database {DB}")
            psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
            psql(f"CREATE DATABASE {DB}")
            run([PYTHON, "manage.py", "migrate", "--noinput", "-v0"], env=env)
            run([PYTHON, "manage.py", "collectstatic", "--noinput", "-v0"], env=env)
            log(f"seeding 1,000 customers and {args.events:,} events")
            run([PYTHON, "bench/seed.py"], env=env)
        vacuum("")  # the whole database: statistics and visibility, as after autovacuum
        key = api_key_create("bench", env)
        server_env = server_environment(env, args)
        config = server_config(server_env)
        args.worker_class, args.threads = config["worker_class"], config["threads"]
        log(f"gunicorn ({SERVER_CONFIG}): {args.workers} {args.worker_class} workers "
            f"x {args.threads} threads on {HOST}:{PORT}")  # fmt: skip
        port_free()
        server = subprocess.Popen(
            [str(Path(PYTHON).parent / "gunicorn"), "-c", SERVER_CONFIG],
            cwd=ROOT, start_new_session=True, env=server_env,
        )  # fmt: skip
        wait_http("/healthz")
        scenarios = {}
        # Each worker caches the state of the customers it has served: fill every worker's
        # cache for all 1,000 customers first, so that scenarios measure the steady state.
        # Kept-alive connections stay with the worker that accepted them: each check of the
        # warm-up comes on a new connection, so that every worker sees every customer.
        log(f"warming every worker's cache: {WARM_SECONDS * args.workers}s of checks")
        wrk("warm", key, WARM_SECONDS * args.workers, 0, args.connections)
        for kind in SCENARIOS:
            if not wanted(kind) and kind != "floor":
                continue
            log(f"wrk {kind}: {args.duration}s after a {args.warmup}s warm-up")
            if args.vacuum:
                # Commits update reservations as consumes update counters: both vacuumed.
                vacuum(
                    "customers_usagecounter, customers_reservation"
                    if kind in HOLD_KINDS
                    else "customers_usagecounter"
                )
            scenarios[kind] = wrk(kind, key, args.duration, args.warmup, args.connections)
            scenarios[kind]["load"] = os.getloadavg()[0]  # the machine's, by the end of it
            log(f"  {scenarios[kind]}")
        floor = scenarios["floor"]
        for result in scenarios.values():
            result["ratio_to_floor"] = round(result["rps"] / floor["rps"], 3)
            result["p99_ratio_to_floor"] = round(result["p99_ms"] / floor["p99_ms"], 3)
        for kind in HOLD_KINDS:
            # Reservations cost no more than a consume: their throughput next to its.
            if kind in scenarios and "consume" in scenarios:
                ratio = scenarios[kind]["rps"] / scenarios["consume"]["rps"]
                scenarios[kind]["ratio_to_consume"] = round(ratio, 3)
        ingestion = {"events": 0, "seconds": 0, "events_per_s": 0}
        if wanted("ingest"):
            log(f"ingestion: {args.ingest_clients} clients, batches of 1000")
            if args.vacuum:
                vacuum()
            ingestion = ingest(key, args.ingest_seconds, args.ingest_clients)
        small, big = [0.0], [0.0]
        if wanted("latency"):
            log("check latency: 1,000 vs 1,000,000 events")
            small, big = [], []
            for _ in range(3):  # interleaved, so that noise hits both alike
                small.append(check_latency(key, "bench-0001", 150))
                big.append(check_latency(key, "bench-0000", 150))
        soak = soak_rounds(key, args) if args.soak else None
        results = {
            "scenarios": scenarios,
            "soak": soak,
            "ingest_events_per_s": ingestion["events_per_s"],
            "ingest": ingestion,
            "check_p50_ms_1k_events": statistics.median(small),
            "check_p50_ms_1m_events": statistics.median(big),
            "commit": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
            ).stdout.strip(),  # fmt: skip
            "cores": os.cpu_count(),
            "autovacuum": autovacuum(),
            "workers": args.workers,
            "worker_class": args.worker_class,
            "threads": args.threads,
            "server_config": SERVER_CONFIG,
            "vacuum_before_each_scenario": args.vacuum,
            "load_at_end": os.getloadavg(),
            "connections": args.connections,
            "duration_s": args.duration,
            "events_seeded": args.events + 1000,
            "elapsed_s": round(time.time() - started, 1),
        }
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
        print_table(results)
        log(f"wrote {args.output} in {results['elapsed_s']}s")
        return 0
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        if not args.keep_db:
            drop = f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"
            subprocess.run(["psql", f"{PG}/postgres", "-q", "-c", drop], capture_output=True)


def server_environment(env: dict, args) -> dict:
    """The server's environment: the production config file reads its settings from it; what
    the command line does not give is the file's default."""
    server = {**env, "WEB_BIND": f"{HOST}:{PORT}", "WEB_WORKERS": str(args.workers),
              "WEB_LOG_LEVEL": "warning"}  # fmt: skip
    if args.worker_class:
        server["WEB_WORKER_CLASS"] = args.worker_class
    if args.threads:
        server["WEB_THREADS"] = str(args.threads)
    return server


def server_config(server_env: dict) -> dict:
    """The values the config file gives in that environment (workers, worker_class, ..)."""
    saved = dict(os.environ)
    os.environ.update(server_env)
    try:
        return runpy.run_path(str(ROOT / SERVER_CONFIG), run_name="bench")
    finally:
        os.environ.clear()
        os.environ.update(saved)


def api_key_create(name: str, env: dict) -> str:
    """A new runtime API key on the benchmark's database: its secret."""
    created = run([PYTHON, "manage.py", "create_api_key", name], env=env, capture_output=True,
                  text=True)  # fmt: skip
    return created.stdout.strip().splitlines()[-1]


def seeded_env() -> dict:
    """The benchmark's environment, once `make bench BENCH_ARGS=--keep-db` has seeded it."""
    if not database_seeded():
        sys.exit(f"no seeded database {DB}: run `make bench BENCH_ARGS=--keep-db` first")
    return bench_env()


def database_seeded() -> bool:
    probe = subprocess.run(
        ["psql", f"{PG}/{DB}", "-tAq", "-c", "SELECT count(*) FROM customers_customer"],
        capture_output=True, text=True,
    )  # fmt: skip
    return probe.returncode == 0 and probe.stdout.strip() not in ("", "0")


def print_table(results: dict) -> None:
    print()
    print(f"{'scenario':<11} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'x floor':>8} "
          f"{'p99 x floor':>11} {'non-2xx':>8} {'x consume':>9}")  # fmt: skip
    for name, r in results["scenarios"].items():
        versus = f"{r['ratio_to_consume']:>9.2f}" if "ratio_to_consume" in r else ""
        print(f"{name:<11} {r['rps']:>9.1f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['ratio_to_floor']:>8.2f} {r['p99_ratio_to_floor']:>11.2f} "
              f"{r['non_2xx']:>8} {versus}")  # fmt: skip
    print(
        f"ingestion: {results['ingest_events_per_s']:,.0f} events/s "
        f"({results['ingest']['events']:,} events in {results['ingest']['seconds']}s)"
    )
    print(
        f"check p50: {results['check_p50_ms_1k_events']:.2f} ms with 1,000 events, "
        f"{results['check_p50_ms_1m_events']:.2f} ms with 1,000,000 events"
    )
    for kind, soak in ((results.get("soak") or {}).get("by_kind") or {}).items():
        series = ", ".join(f"{r['ratio_to_floor']:.2f}" for r in soak["rounds"])
        print(f"soak {kind}: x floor by round {series}; last third / first third "
              f"{soak['last_over_first']:.2f}")  # fmt: skip
    print(f"commit {results['commit']}, {results['cores']} cores, {results['workers']} "
          f"{results['worker_class']} workers x {results['threads']} threads, load at the "
          f"end {results['load_at_end'][0]:.2f}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
