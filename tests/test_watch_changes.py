"""The change queue's debounce, on a clock the test moves: no sleeping."""

from __future__ import annotations

import threading

import pytest

from pycomex_index.watcher.changes import MAX_BATCH_DELAY_SECONDS, SETTLE_SECONDS, ChangeQueue


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(clock: FakeClock) -> ChangeQueue:
    return ChangeQueue(clock=clock)


def take_now(queue: ChangeQueue, clock: FakeClock):
    """What is due at the clock's time (a deadline of now never waits)."""
    return queue.take_batch(deadline=clock())


def test_paths_wait_until_events_settle(queue, clock):
    queue.add_paths(["a/experiment_meta.json", "b"])
    assert not take_now(queue, clock)
    clock.advance(SETTLE_SECONDS / 2)
    assert not take_now(queue, clock)
    clock.advance(SETTLE_SECONDS / 2)
    batch = take_now(queue, clock)
    assert batch.paths == {"a/experiment_meta.json", "b"} and not batch.targets
    assert queue.backlog() == 0


def test_a_steady_stream_of_events_is_applied_after_the_maximum_delay(queue, clock):
    # An event every half settle time: the stream never settles, yet waits no longer than the maximum delay.
    added = []
    for number in range(round(MAX_BATCH_DELAY_SECONDS / (SETTLE_SECONDS / 2))):
        added.append(f"run_{number}")
        queue.add_paths([added[-1]])
        assert not take_now(queue, clock)
        clock.advance(SETTLE_SECONDS / 2)
    added.append("last")
    queue.add_paths(["last"])
    assert take_now(queue, clock).paths == set(added)


def test_requeued_folders_are_due_at_once_and_retries_after_their_delay(queue, clock):
    queue.add_targets(["now"])
    queue.add_targets(["later"], delay=0.25)
    assert take_now(queue, clock).targets == {"now"}
    assert queue.backlog() == 1
    clock.advance(0.2)
    assert not take_now(queue, clock)
    clock.advance(0.05)
    assert take_now(queue, clock).targets == {"later"}


def test_clear_drops_everything_pending(queue, clock):
    queue.add_paths(["a"])
    queue.add_targets(["b"])
    queue.add_targets(["c"], delay=1)
    assert queue.backlog() == 3
    queue.clear()
    clock.advance(5)
    assert not take_now(queue, clock) and queue.backlog() == 0


def test_a_wake_makes_the_next_take_return_at_once_even_before_its_deadline(queue, clock):
    queue.wake()
    batch = queue.take_batch(deadline=clock() + 3600)
    assert batch is not None and not batch


def test_stop_ends_a_waiting_take(queue, clock):
    taken = []
    worker = threading.Thread(target=lambda: taken.append(queue.take_batch(deadline=clock() + 3600)))
    worker.start()
    queue.request_stop()
    worker.join(5)
    assert not worker.is_alive() and taken == [None]
    assert queue.stopping and queue.wait_for_stop(0)
