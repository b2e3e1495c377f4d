"""Concurrent writes of one key in this process sent as one call (PostgreSQL's one-trip
consume: engine/consume.py).

One customer's consumes of a feature take the same counters' locks in turn, and each turn
lasts its statement, its commit's flush to disk and the wake-up of the next waiter (about
0.8 ms on two busy cores: docs/performance.md). While one thread's call for a key is under
way, the others of this process that arrive for the same key wait here instead of in the
database; when it ends, the first of them sends one call for all of them, which decides
their events in turn under one lock turn and one commit. Each gets its own answer only once
that call has committed. If a call of several fails and `resend` says it wrote nothing (the
database refused it), each of them sends its own call of one event, so that one event's
failure is never another's; otherwise (a connection lost mid-call, perhaps after its commit)
each raises the error, as a call of its own would have."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable

MOST = 32  # events per call


class _Waiter:
    __slots__ = ("item", "ready", "lead", "answer", "alone", "error")

    def __init__(self, item):
        self.item = item
        self.ready: threading.Event | None = None  # made only for a waiter that waits
        self.lead: list[_Waiter] | None = None  # the call this waiter is to send
        self.answer = None
        self.alone = False  # the call that carried it wrote nothing: it sends its own
        self.error: BaseException | None = None  # the call that carried it failed so


class Combiner:
    """`combiner(key, item)` answers `call([item, ...])`'s answer for `item`, where `call`
    runs on the calling thread with items of one key that arrived while an earlier call of
    that key ran (`MOST` at most), and answers one result per item, in order. `resend(error)`:
    whether a call that raised `error` wrote nothing (its items may then be sent again)."""

    def __init__(self, call: Callable[[list], list], resend: Callable[[BaseException], bool]):
        self._call = call
        self._resend = resend
        self._lock = threading.Lock()
        self._waiting: dict[Hashable, list[_Waiter]] = {}  # a key here: its call under way

    def __call__(self, key: Hashable, item):
        me = _Waiter(item)
        with self._lock:
            waiting = self._waiting.get(key)
            if waiting is None:
                self._waiting[key] = []
                me.lead = [me]
            else:
                me.ready = threading.Event()
                waiting.append(me)
        if me.lead is None:
            me.ready.wait()
            if me.error is not None:
                raise me.error
            if me.alone:
                return self._call([item])[0]
            if me.lead is None:
                return me.answer
        batch = me.lead
        try:
            self._send(key, batch)
        except Exception as error:
            if len(batch) == 1 or not self._resend(error):
                raise
            return self._call([item])[0]  # perhaps another's item failed it: its own call
        return me.answer

    def _send(self, key: Hashable, batch: list[_Waiter]) -> None:
        """Sends `batch`'s call (its first waiter is this thread's), hands the key's next
        call to the first of those that arrived meanwhile, then answers the others."""
        try:
            answers = self._call([waiter.item for waiter in batch])
            for waiter, answer in zip(batch, answers, strict=True):
                waiter.answer = answer
        except BaseException as error:
            alone = isinstance(error, Exception) and self._resend(error)
            for waiter in batch[1:]:
                if alone:
                    waiter.alone = True
                else:
                    waiter.error = error
            raise
        finally:
            with self._lock:
                waiting = self._waiting[key]
                if waiting:
                    following = waiting[:MOST]
                    del waiting[:MOST]
                    following[0].lead = following
                    following[0].ready.set()
                else:
                    del self._waiting[key]
            for waiter in batch[1:]:
                waiter.ready.set()
