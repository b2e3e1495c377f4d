"""gunicorn_worker.BalancedThreadWorker: a client that opens its kept-alive connections at once
(an SDK's pool, wrk) gets them shared out among the workers, instead of all on the first to
wake (measured with gunicorn's plain gthread: 16 of 16 on one worker of two, most runs)."""

import os
import socket
import time
from pathlib import Path

import pytest

from entitlements_site.tests.test_quickstart_server import quickstart_env, quickstart_server

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="reads /proc")
CONNECTIONS = 16


def _workers(master: int) -> list[int]:
    children = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == master:
            children.append(int(pid))
    return sorted(children)


def _sockets(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            continue
    return count


def test_a_burst_of_kept_alive_connections_is_shared_out_among_the_workers(tmp_path):
    env = quickstart_env(tmp_path, database_url=f"sqlite:///{tmp_path / 'workers.sqlite3'}")
    with quickstart_server(tmp_path, env) as server:
        workers = _workers(server.process.pid)
        assert len(workers) == 2, workers
        time.sleep(3)  # the second worker may still be loading the application
        before = {pid: _sockets(pid) for pid in workers}
        # A client opens its pool at once, and each connection sends a request and stays open
        clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(CONNECTIONS)]
        try:
            for client in clients:
                client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            for client in clients:
                assert client.recv(4096).startswith(b"HTTP/1.1 200")
            time.sleep(0.2)
            held = {pid: _sockets(pid) - before[pid] for pid in workers}
        finally:
            for client in clients:
                client.close()

    # Each worker holds at least a quarter of them (plain gthread: often none)
    assert sum(held.values()) >= CONNECTIONS, held
    assert min(held.values()) >= CONNECTIONS // 4, held
