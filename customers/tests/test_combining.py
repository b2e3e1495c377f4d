"""engine/combining.py: concurrent calls of one key sent as one call, without a database."""

import threading
import time

import pytest

from customers.engine import combining
from customers.engine.combining import Combiner


class Recorder:
    """A call that answers each item doubled and records its batches; the first batch of
    key "slow" waits until `release` is set."""

    def __init__(self, fail_batches: bool = False):
        self.batches: list[list] = []
        self.release = threading.Event()
        self.started = threading.Event()
        self.fail_batches = fail_batches

    def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        if items[0][0] == "slow" and not self.started.is_set():
            self.started.set()
            assert self.release.wait(10)
        if self.fail_batches and len(items) > 1:
            raise RuntimeError("one of these items is bad")
        return [value * 2 for _, value in items]


def _refused(error) -> bool:
    """The recorder's failure wrote nothing (a refusal); any other error may have."""
    return isinstance(error, RuntimeError)


def _threads(combiner, key, values, answers) -> list[threading.Thread]:
    def run(value):
        try:
            answers[value] = combiner(key, (key, value))
        except Exception as error:  # noqa: BLE001 (the test reads it)
            answers[value] = error

    threads = [threading.Thread(target=run, args=(v,)) for v in values]
    for thread in threads:
        thread.start()
    return threads


def _wait_until_waiting(combiner, key, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(combiner._waiting.get(key, ())) < count:
        assert time.monotonic() < deadline, "the threads never queued"
        time.sleep(0.005)


def _behind_a_slow_call(combiner, recorder, first, following, meanwhile=None) -> dict:
    """`first`'s call of key "slow" under way, then the `following` values arriving and
    queueing behind it (and `meanwhile()` run), then the call released: every answer."""
    answers = {}
    threads = _threads(combiner, "slow", [first], answers)
    assert recorder.started.wait(10)
    threads += _threads(combiner, "slow", following, answers)
    _wait_until_waiting(combiner, "slow", len(following))
    if meanwhile is not None:
        meanwhile()
    recorder.release.set()
    for thread in threads:
        thread.join(10)
    return answers


def test_one_call_alone_carries_its_own_item():
    recorder = Recorder()
    combiner = Combiner(recorder, resend=_refused)

    assert combiner("k", ("k", 21)) == 42
    assert recorder.batches == [[("k", 21)]]
    assert combiner._waiting == {}


def test_calls_arriving_while_one_of_their_key_runs_share_the_next_call():
    # Given a call of key "slow" under way
    recorder = Recorder()
    combiner = Combiner(recorder, resend=_refused)
    # when five more of that key arrive, and one of another key
    fast = []
    answers = _behind_a_slow_call(
        combiner, recorder, 1, [2, 3, 4, 5, 6], lambda: fast.append(combiner("fast", ("fast", 7)))
    )
    assert fast == [14]  # another key never waits

    # then the five went in one call, and each got its own answer
    slow = [batch for batch in recorder.batches if batch[0][0] == "slow"]
    assert [len(batch) for batch in slow] == [1, 5]
    assert sorted(value for _, value in slow[1]) == [2, 3, 4, 5, 6]
    assert answers == {n: 2 * n for n in range(1, 7)}
    assert combiner._waiting == {}


def test_no_call_carries_more_than_the_most(monkeypatch):
    monkeypatch.setattr(combining, "MOST", 3)
    recorder = Recorder()
    combiner = Combiner(recorder, resend=_refused)
    answers = _behind_a_slow_call(combiner, recorder, 0, list(range(1, 8)))

    assert [len(batch) for batch in recorder.batches] == [1, 3, 3, 1]
    assert answers == {n: 2 * n for n in range(8)}


def test_a_failed_call_of_several_is_sent_again_one_item_each():
    # Given calls of several items that fail (one of them is bad), and single ones that do not
    recorder = Recorder(fail_batches=True)
    combiner = Combiner(recorder, resend=_refused)
    answers = _behind_a_slow_call(combiner, recorder, 1, [2, 3, 4])

    # then every item got its own answer from a call of its own
    assert answers == {1: 2, 2: 4, 3: 6, 4: 8}
    assert sorted(len(batch) for batch in recorder.batches) == [1, 1, 1, 1, 3]
    assert combiner._waiting == {}


def test_a_failed_call_of_one_raises_to_its_caller_and_frees_the_key():
    def failing(items):
        raise ValueError("bad")

    combiner = Combiner(failing, resend=_refused)
    with pytest.raises(ValueError, match="bad"):
        combiner("k", ("k", 1))
    assert combiner._waiting == {}


def test_a_call_of_several_that_may_have_written_fails_every_caller_alike():
    # Given calls of several items that fail in a way that may have written (not a refusal)
    recorder = Recorder(fail_batches=True)

    def lost(items):
        try:
            return recorder(items)
        except RuntimeError:
            raise ConnectionError("lost mid-call") from None

    combiner = Combiner(lost, resend=_refused)
    answers = _behind_a_slow_call(combiner, recorder, 1, [2, 3, 4])

    # then none of them was sent again: each raised that error
    assert answers[1] == 2
    assert all(isinstance(answers[n], ConnectionError) for n in (2, 3, 4)), answers
    assert [len(batch) for batch in recorder.batches] == [1, 3]
    assert combiner._waiting == {}
