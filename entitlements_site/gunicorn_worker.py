"""gunicorn's threaded worker, with the connections shared out among the workers.

All the workers wait on the one listening socket, and each accepts whatever it is woken for:
when a client opens its connections at once (an SDK's pool of 16 kept-alive connections, the
benchmark's wrk), the first worker to wake takes most or all of them and serves them on its
threads, one process on one core, while the others sit idle (measured: 16 of 16 connections
on one worker of two, most runs). Kept alive, they stay there.

`BalancedThreadWorker` accepts at once while it holds fewer connections than threads. Beyond
that it steps back for a moment before each further connection (5 ms per connection it
holds beyond its threads, at most 50 ms), so that a worker holding fewer takes it first; when
every worker is as full, the connection is still accepted after that moment (nothing waits
longer, nothing is refused). Both server configurations use it (gunicorn_conf.py for
`make run`, gunicorn_prod.py).
"""

from __future__ import annotations

import time

from gunicorn.workers.gthread import ThreadWorker

STEP = 0.005  # seconds per connection held beyond the threads
MOST = 0.050  # seconds


class BalancedThreadWorker(ThreadWorker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.resume_at = 0.0  # while paused: when this worker accepts again
        self.stepped_back = False  # the next accept follows a pause: it takes the connection

    def accept(self, listener):
        beyond = self.nr_conns - self.cfg.threads + 1
        if beyond > 0 and not self.stepped_back:
            self.stepped_back = True
            self.resume_at = time.monotonic() + min(STEP * beyond, MOST)
            super().set_accept_enabled(False)
            return
        self.stepped_back = False
        super().accept(listener)

    def set_accept_enabled(self, enabled):
        # The loop re-enables accepting whenever below worker_connections: not while paused.
        if enabled and time.monotonic() < self.resume_at:
            return
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout):
        if not self._accepting and self.alive and self.resume_at:
            timeout = min(timeout, max(self.resume_at - time.monotonic(), 0.0))
        super().wait_for_and_dispatch_events(timeout)
