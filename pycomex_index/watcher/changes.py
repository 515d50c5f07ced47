"""The change queue between the observer and the worker: what changed, and when a batch is due.

The observer's thread only adds paths here (mkdocs' and paperless' rule:
the handler records, one worker does the work). The worker takes a batch
once no event arrived for :data:`SETTLE_SECONDS`, or at the latest
:data:`MAX_BATCH_DELAY_SECONDS` after the first event of a steady stream;
folders to look at again (a half-written file, a failed batch) are due at a
time of their own. The clock is a parameter, so the debounce is tested
without sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

#: A batch is applied once no event arrived for this long...
SETTLE_SECONDS = 0.2
#: ...but a steady stream of writes never holds a batch back longer than this.
MAX_BATCH_DELAY_SECONDS = 0.5


@dataclass
class Batch:
    """What the worker applies next; both sets hold paths relative to the archive root ("" is the root),
    as the index stores them (:func:`~pycomex_index.paths.path_in_index`)."""

    #: Paths events were reported for (a file or a folder).
    paths: set[str] = field(default_factory=set)
    #: Folders to re-examine: requeued by the worker itself, retries that came due, a re-walk's leftovers.
    targets: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.paths or self.targets)

    def __len__(self) -> int:
        return len(self.paths) + len(self.targets)


class ChangeQueue:
    """Pending changes, shared by the observer's thread (adds), the worker (takes) and any thread that
    stops the watcher or reads its backlog."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # A Condition's default lock is an RLock: stop() may run in a signal handler that interrupted
        # a thread holding it.
        self._condition = threading.Condition()
        # Must be held when accessing every field below.
        self._stopping = False
        self._woken = False
        self._paths: set[str] = set()
        self._targets: set[str] = set()
        self._deferred: dict[str, float] = {}
        self._first_event_at = 0.0
        self._last_event_at = 0.0

    # -------------------------------------------------------------- adding

    def add_paths(self, rels: Iterable[str]) -> None:
        """Event paths (relative to the root), from the observer's thread: they wait until events settle."""
        now = self._clock()
        with self._condition:
            for rel in rels:
                if not self._paths:
                    self._first_event_at = now
                self._paths.add(rel)
            self._last_event_at = now
            self._condition.notify_all()

    def add_targets(self, rels: Iterable[str], delay: float = 0.0) -> None:
        """Folders to re-examine, at the next batch or (``delay`` > 0) once that many seconds passed."""
        with self._condition:
            if delay > 0:
                due = self._clock() + delay
                for rel in rels:
                    self._deferred[rel] = due
            else:
                self._targets.update(rels)
            self._condition.notify_all()

    def clear(self) -> None:
        """Forget everything pending (after switching to polling, whose next pass looks at everything)."""
        with self._condition:
            self._paths.clear()
            self._targets.clear()
            self._deferred.clear()

    # ------------------------------------------------------------ control

    def wake(self) -> None:
        """Make the worker's current or next :meth:`take_batch` return at once (something else is due)."""
        with self._condition:
            self._woken = True
            self._condition.notify_all()

    def request_stop(self) -> None:
        with self._condition:
            self._stopping = True
            self._condition.notify_all()

    @property
    def stopping(self) -> bool:
        with self._condition:
            return self._stopping

    def wait_for_stop(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds, or less when a stop is requested; True when stopping."""
        with self._condition:
            return self._condition.wait_for(lambda: self._stopping, timeout)

    def backlog(self) -> int:
        """How many paths and folders wait to be applied."""
        with self._condition:
            return len(self._paths) + len(self._targets) + len(self._deferred)

    # ------------------------------------------------------------- taking

    def take_batch(self, deadline: float) -> Batch | None:
        """Wait until a batch is due and return it; None once stopping.

        Returns an empty batch at ``deadline`` (by the queue's clock) or when
        :meth:`wake` was called, so the worker can do its periodic work.
        """
        with self._condition:
            while True:
                if self._stopping:
                    return None
                now = self._clock()
                batch, wait = self._due(now, deadline - now)
                if batch or self._woken:
                    self._woken = False
                    return batch
                if wait <= 0:
                    return batch
                self._condition.wait(wait)

    def _due(self, now: float, wait: float) -> tuple[Batch, float]:
        """Take what is due at ``now`` (lock held); also how long until more could be."""
        batch = Batch()
        if self._paths:
            quiet = now - self._last_event_at
            age = now - self._first_event_at
            if quiet >= SETTLE_SECONDS or age >= MAX_BATCH_DELAY_SECONDS:
                batch.paths, self._paths = self._paths, set()
            else:
                wait = min(wait, SETTLE_SECONDS - quiet, MAX_BATCH_DELAY_SECONDS - age)
        if self._targets:
            batch.targets, self._targets = self._targets, set()
        for rel, due in list(self._deferred.items()):
            if due <= now:
                del self._deferred[rel]
                batch.targets.add(rel)
            else:
                wait = min(wait, due - now)
        return batch, wait
