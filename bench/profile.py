#!/usr/bin/env python
"""Where a request's time goes, on the benchmark's database (docs/performance.md).

Run `make bench BENCH_ARGS=--keep-db` once first (it seeds and keeps the database); then:

    .venv/bin/python bench/profile.py cpu consume_hot           # CPU per request, by process
    .venv/bin/python bench/profile.py statements consume_hot    # PostgreSQL time per statement
    .venv/bin/python bench/profile.py cpu consume --seconds 15 --workers 2 --worker-class gthread
    .venv/bin/python bench/profile.py cpu ingest --seconds 20     # CPU per 1,000 events ingested

It starts gunicorn with the production config (as `make bench` does, but with connections
kept for the whole run), warms every worker's cache, then runs each wrk scenario named
(bench/run.py's: floor, check, check_all, consume_hot, consume), each after a VACUUM of the
usage counters as `make bench` runs one (`--no-vacuum`: none), and reports:

- `cpu`: the CPU time of the gunicorn workers, the database's backends, Redis
  (/proc/<pid>/stat) and wrk (its resource usage once ended) divided by the requests
  answered: what each request costs each process, whatever the machine's load (which a rate
  does not say), with the whole machine's busy CPU and the share of a core its host took
  (`steal`, on a virtual machine); `ingest` (not a wrk scenario) is bench/run.py's
  ingestion, per 1,000 events;
- `statements`: with `log_min_duration_statement = 0` on the benchmark database only (reset
  afterwards), each statement's duration as PostgreSQL logged it, by kind, and for consumes
  the time from the locking statement's start to the end of the commit (waits for the lock
  included), and for one customer's (consume_hot, whose consumes take its lock in turn) the
  most each can have held it.
  It reads the server's log file (`--log`, Debian's default path).
"""

import argparse
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402  (bench/run.py: the same server, scenarios and wrk)

CONSUME_FUNCTION_NAME = "entitlements_consume_events"  # customers/engine/sql/postgresql.py

TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_by_group(workers: set[int]) -> dict[tuple[str, int], float]:
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / TICKS
        if int(pid) in workers:
            group = "gunicorn workers"
        elif name == "postgres" and f" {bench.DB} " in command.replace("\x00", " "):
            group = f"postgres backends ({bench.DB})"
        elif name.startswith("redis"):
            group = "redis"
        else:
            continue
        found[(group, int(pid))] = seconds
    return found


def _machine_cpu() -> tuple[float, float]:
    """The whole machine's busy CPU seconds (every process and the kernel) and the seconds
    its virtual CPUs waited for the host (`steal`), from /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _, _, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / TICKS, steal / TICKS


def _clients_cpu() -> float:
    """The CPU seconds of this process's children that have ended and been waited for: wrk
    and the ingestion's client processes (gone before `_cpu_by_group` could read them)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def cpu(kind: str, key: str, args, workers: set[int]) -> None:
    """CPU per request by process while wrk runs `kind`; `ingest`: per 1,000 events while
    the benchmark's clients post batches of 1,000 (bench/run.py's ingestion)."""
    if kind == "ingest":
        bench.ingest(key, 2, args.ingest_clients)
    else:
        bench.wrk_run(kind, key, 2, args.connections)
    before, started = _cpu_by_group(workers), time.time()
    machine_before, clients_before = _machine_cpu(), _clients_cpu()
    if kind == "ingest":
        figures = bench.ingest(key, args.seconds, args.ingest_clients)
        requests, unit = figures["events"] / 1000, "1,000 events"
        print(f"ingest: {figures['events_per_s']:,.0f} events/s, {args.ingest_clients} "
              f"clients, load {os.getloadavg()[0]:.2f}")  # fmt: skip
    else:
        figures = bench.wrk_figures(bench.wrk_run(kind, key, args.seconds, args.connections))
        requests, unit = figures["rps"] * args.seconds, "request"
        print(f"{kind}: {figures['rps']} req/s, p50 {figures['p50_ms']} ms, p99 "
              f"{figures['p99_ms']} ms, load {os.getloadavg()[0]:.2f}")  # fmt: skip
    after, elapsed = _cpu_by_group(workers), time.time() - started
    busy, steal = (b - a for a, b in zip(machine_before, _machine_cpu(), strict=True))
    totals: dict[str, float] = {}
    for (group, pid), seconds in after.items():
        totals[group] = totals.get(group, 0.0) + seconds - before.get((group, pid), 0.0)
    totals["the load's clients (wrk, ingesters)"] = _clients_cpu() - clients_before
    totals["the whole machine (busy)"] = busy
    for group, seconds in sorted(totals.items()):
        print(f"  {group:34} {1000 * seconds / requests:7.3f} ms CPU per {unit} "
              f"({100 * seconds / elapsed:5.1f}% of a core)")  # fmt: skip
    print(f"  {'stolen by the host (steal)':34} {100 * steal / elapsed:5.1f}% of a core")


def spy(kind: str, key: str, args, workers: set[int]) -> None:
    """py-spy on every worker while wrk runs `kind`: the share of the samples of the thread
    holding the GIL (the Python CPU; threads waiting on a socket, a lock or the GIL are not
    sampled) spent in each function, callers included, so that the request's parts add up
    from the handler down."""
    bench.wrk_run(kind, key, 2, args.connections)
    wrk = subprocess.Popen(
        [sys.executable, "-c", "import sys, run; run.wrk_run(*sys.argv[1:3], int(sys.argv[3]), "
         "int(sys.argv[4]))", kind, key, str(args.seconds + 4), str(args.connections)],
        cwd=Path(__file__).resolve().parent,
    )  # fmt: skip
    time.sleep(2)
    outputs = []
    for pid in sorted(workers):
        output = f"/tmp/spy-{kind}-{pid}.txt"
        outputs.append(output)
        subprocess.Popen([args.py_spy, "record", "-p", str(pid), "-d", str(args.seconds),
                          "-r", "250", "-f", "raw", "-o", output, "--nonblocking", "--gil"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wrk.wait()
    time.sleep(1)
    total, inclusive = 0, {}
    for output in outputs:
        for line in Path(output).read_text().splitlines():
            stack, count = line.rsplit(" ", 1)
            total += int(count)
            for frame in set(stack.split(";")):
                inclusive[frame] = inclusive.get(frame, 0) + int(count)
    print(f"{kind}: {total} busy samples of {len(outputs)} workers (raw: /tmp/spy-{kind}-*.txt)")
    for frame, count in sorted(inclusive.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {100 * count / (total or 1):5.1f}%  {frame[:120]}")


def _statement_kind(text: str) -> str:
    if text.startswith(f"SELECT * FROM {CONSUME_FUNCTION_NAME}("):
        return "consume, one trip: the function (lock; check and write), its commit"
    if text.startswith("BEGIN; SET LOCAL"):
        return "consume, two trips, 1st: BEGIN; lock counters, grants; versions"
    if text.startswith("WITH ev AS"):
        return "consume, two trips, 2nd: event, counters, grants; COMMIT"
    return text[:64]


def statements(kind: str, key: str, args) -> None:
    setting = f"ALTER DATABASE {bench.DB} SET log_min_duration_statement = "
    bench.psql(setting + "0")
    try:
        # New connections read the setting: the workers reconnect after a HUP.
        os.kill(args.server_pid, signal.SIGHUP)
        time.sleep(3)
        bench.wrk_run("warm", key, args.warmup, args.connections)
        bench.wrk_run(kind, key, 2, args.connections)
        start = Path(args.log).stat().st_size
        figures = bench.wrk_figures(bench.wrk_run(kind, key, args.seconds, args.connections))
        with open(args.log, errors="replace") as log:
            log.seek(start)
            text = log.read()
    finally:
        bench.psql(f"ALTER DATABASE {bench.DB} RESET log_min_duration_statement")
    entries = []
    for line in text.splitlines():
        # A prepared statement's execution is logged as "execute <name>: <its text>".
        found = re.match(
            r"(\S+ \S+) \S+ \[(\d+)\] .*duration: ([\d.]+) ms  (?:statement|execute [^:]+): (.*)",
            line,
        )
        if found:
            entries.append(list(found.groups()))
        elif line.startswith("\t") and entries:
            entries[-1][3] += " " + line.strip()
    durations: dict[str, list[float]] = {}
    holds, locked_at = [], {}
    for stamp, pid, duration, statement in entries:
        statement, duration = " ".join(statement.split()), float(duration)
        name = _statement_kind(statement)
        durations.setdefault(name, []).append(duration)
        end = datetime.fromisoformat(stamp).timestamp() * 1000
        if name.startswith("consume, one trip"):
            holds.append(duration)
        elif name.startswith("consume, two trips, 1st"):
            locked_at[pid] = end - duration
        elif name.startswith("consume, two trips, 2nd") and pid in locked_at:
            holds.append(end - locked_at.pop(pid))
    print(f"{kind}: {figures['rps']} req/s, p50 {figures['p50_ms']} ms, load "
          f"{os.getloadavg()[0]:.2f}; PostgreSQL's durations (ms):")  # fmt: skip
    total = sum(sum(v) for v in durations.values()) or 1
    for name, values in sorted(durations.items(), key=lambda kv: -sum(kv[1])):
        if len(values) < 10:
            continue
        values.sort()
        p90, share = values[int(0.9 * len(values))], 100 * sum(values) / total
        print(f"  {name[:64]:64} n={len(values):6} p50 {statistics.median(values):6.3f} "
              f"p90 {p90:6.3f}  {share:3.0f}%")  # fmt: skip
    if holds:
        # From the locking statement's start: the wait for another consume's locks included.
        mean = statistics.mean(holds)
        print(f"  from taking the counters' locks to the commit, waits for them included: p50 "
              f"{statistics.median(holds):.3f} ms, mean {mean:.3f} ms")  # fmt: skip
        if kind == "consume_hot":
            # One customer's consumes take its counter's lock in turn: each held it at most
            print(f"  one customer's consumes hold its lock in turn: at most "
                  f"{1000 / figures['rps']:.3f} ms each")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["cpu", "statements", "spy"])
    parser.add_argument("kinds", help="comma-separated scenarios of bench/run.py")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-class", default=None, help="default: the config file's")
    parser.add_argument("--threads", type=int, default=None, help="default: the config file's")
    parser.add_argument(
        "--warmup",
        type=int,
        default=30,
        help="seconds of check_all first, each on a new connection: every "
        "worker must have seen every customer (a loaded machine needs longer)",
    )
    parser.add_argument("--ingest-clients", type=int, default=4, help="cpu ingest: clients")
    parser.add_argument(
        "--no-vacuum",
        dest="vacuum",
        action="store_false",
        help="no VACUUM of the counters before each scenario (`make bench` runs one)",
    )
    parser.add_argument("--py-spy", default="py-spy", help="spy: the py-spy executable")
    parser.add_argument("--top", type=int, default=60, help="spy: functions listed")
    parser.add_argument("--log", default="/var/log/postgresql/postgresql-15-main.log")
    args = parser.parse_args()
    env = bench.seeded_env()
    key = bench.api_key_create("profile", env)
    bench.port_free()
    server = subprocess.Popen(
        [str(Path(bench.PYTHON).parent / "gunicorn"), "-c", bench.SERVER_CONFIG],
        cwd=bench.ROOT, start_new_session=True,
        # Connections kept for the whole run: a backend closed during a measure (the default
        # 60 s) would take its CPU with it, unread.
        env={**bench.server_environment(env, args), "DB_CONN_MAX_AGE": "3600"},
    )  # fmt: skip
    args.server_pid = server.pid
    try:
        bench.wait_http("/healthz")
        bench.wrk_run("warm", key, args.warmup, args.connections)
        children = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True,
                                  text=True).stdout.split()  # fmt: skip
        for kind in args.kinds.split(","):
            if args.vacuum:
                bench.vacuum()  # as `make bench` does before each scenario
            if args.what == "cpu":
                cpu(kind, key, args, {int(pid) for pid in children})
            elif args.what == "spy":
                spy(kind, key, args, {int(pid) for pid in children})
            else:
                statements(kind, key, args)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
