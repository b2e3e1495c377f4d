"""A loopback TCP proxy in front of the test server, with faults on demand: what a client meets
between it and the entitlements server (a dropped connection, a slow answer, a gateway that
answers 502). It never changes a byte of what it forwards; it counts the requests it saw."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from urllib.parse import urlsplit

BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
REQUEST_LINE_END = b" HTTP/1.1\r\n"  # each request's first line ends so (bodies here are JSON)


class Proxy:
    def __init__(self, upstream_url: str):
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname, parts.port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0  # connections accepted from clients
        self.requests = 0  # requests received from clients (forwarded or answered 502)
        self.forwarded = 0  # requests that reached the server
        self._drops = 0
        self._delays: list[float] = []
        self._bad_gateways = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    # --- faults: each applies to the next requests, one fault per request ----------------

    def drop_responses(self, n: int = 1) -> None:
        """Forward the next `n` requests, then close the client's connection instead of
        passing the answer on: the server did the work, the client never hears of it."""
        self._drops = n

    def delay_responses(self, seconds: float, n: int = 1) -> None:
        """Forward the next `n` requests and hold each answer `seconds` (past the client's
        timeout, the client gives up and retries)."""
        self._delays = [seconds] * n

    def answer_bad_gateway(self, n: int = 1) -> None:
        """Answer the next `n` requests 502 without forwarding them (an upstream down)."""
        self._bad_gateways = n

    def heal(self) -> None:
        """No more faults: every request is forwarded and answered."""
        self._drops, self._delays, self._bad_gateways = 0, [], 0

    # --- plumbing ------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, server}
            threading.Thread(target=self._requests, args=(client, server), daemon=True).start()
            threading.Thread(target=self._answers, args=(server, client), daemon=True).start()

    def _requests(self, client: socket.socket, server: socket.socket) -> None:
        while data := self._recv(client):
            with self._lock:
                starts = data.count(REQUEST_LINE_END)
                self.requests += starts
                refuse = starts and self._bad_gateways > 0
                if refuse:
                    self._bad_gateways -= 1
                else:
                    self.forwarded += starts
            if refuse:
                with contextlib.suppress(OSError):
                    client.sendall(BAD_GATEWAY)
                break
            if not self._send(server, data):
                break
        self._close(client, server)

    def _answers(self, server: socket.socket, client: socket.socket) -> None:
        while data := self._recv(server):
            with self._lock:
                drop = self._drops > 0
                self._drops -= drop
                delay = self._delays.pop(0) if self._delays and not drop else 0.0
            if drop:
                break
            time.sleep(delay)
            if not self._send(client, data):
                break
        self._close(client, server)

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        try:
            return sock.recv(65536)
        except OSError:
            return b""

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> bool:
        try:
            sock.sendall(data)
            return True
        except OSError:
            return False

    def _close(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def stop(self) -> None:
        self._stopped.set()
        self.listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        self._close(*sockets)
