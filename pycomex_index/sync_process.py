"""The watcher's full syncs in a child process, so the watcher's heap never holds a walk of the archive.

A full sync holds the listing and the stored stamps of the folder it
compares. At 1,000,000 runs the biggest folder (~220,000 runs) took the
daemon from 20 to 88 MB, and freeing them gave little back: Python's
allocator keeps an arena while any object in it lives, and the watcher's own
objects made meanwhile are spread over them. So the catch-up and inotify
mode's re-walks (minutes apart) run in ``python -m
pycomex_index.sync_process``, and all of that memory goes back when
it exits. Polling mode's syncs, seconds apart, stay in the watcher's process:
starting a child each time would cost more than most of them.

The protocol is JSON lines. The parent writes the archive root and the index
location as one line on the child's stdin (not as arguments: a PostgreSQL URL
may hold a password) and keeps stdin open; closing it asks the child to stop
at its next batch boundary, as the watcher's own syncs stop. The child writes
its log records, then its report (or that it stopped, or failed) on stdout.
Anything else the child prints goes to its stderr.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from pycomex_index.store import ArchiveIndex, open_archive_index
from pycomex_index.sync import SyncReport, sync_archive

#: Named, not ``__name__``: in the child this module runs as ``__main__``, outside the package's logger.
MODULE = "pycomex_index.sync_process"
logger = logging.getLogger(MODULE)

#: How often the parent looks whether it was asked to stop, while the child syncs.
STOP_CHECK_SECONDS = 0.2
#: After the stop was asked for, how long the child may take to reach a batch boundary before it is terminated.
#: Stopping it mid-transaction is safe (SQLite and PostgreSQL roll it back), only wasteful: a walk has no batch
#: boundary, and at 1,000,000 runs it lasts a minute.
STOP_GRACE_SECONDS = 3.0
#: The child's main thread, named as the watcher's threads are.
SYNC_THREAD_NAME = "pycomex-index-sync"


class Stopping(Exception):
    """Raised from a sync's progress callback to abandon it (between two committed batches) on stop."""


class SyncProcessError(Exception):
    """The sync failed in the child (its error is in the message, its traceback in the log), or the child died."""


class SilentChild(SyncProcessError):
    """The child could not be started, or ended without a word of the protocol: it may not be this package's."""


#: Whether a child has ever answered in this process (None: none asked yet). A program that embeds Python has
#: a ``sys.executable`` that is no interpreter: no child will ever answer, and full syncs run in the process.
_children_answer: bool | None = None


def abandon_when(stopping: Callable[[], bool]) -> Callable[[int, int | None], None]:
    """A sync progress callback that raises :class:`Stopping` once ``stopping()`` is true."""

    def check(done: int, total: int | None) -> None:
        if stopping():
            raise Stopping()

    return check


def full_sync(index: ArchiveIndex, stopping: Callable[[], bool], *, in_child: bool = True) -> SyncReport:
    """:func:`~pycomex_index.sync.sync_archive` of ``index``, abandoned once ``stopping()``; in a child process
    (:func:`sync_in_child_process`) when ``in_child`` and a child answers here, else in this process."""
    global _children_answer
    if in_child and _children_answer is not False:
        try:
            report = sync_in_child_process(index.root, index.location, stopping)
        except SilentChild as error:
            if _children_answer:
                raise  # children answered before: this one died
            _children_answer = False
            logger.warning("no sync process answered (%s); full syncs run in this process", error)
        except SyncProcessError:
            _children_answer = True
            raise
        else:
            _children_answer = True
            return report
    return sync_archive(index, on_progress=abandon_when(stopping))


def sync_in_child_process(root: str, location: str, stopping: Callable[[], bool]) -> SyncReport:
    """:func:`~pycomex_index.sync.sync_archive` of the archive at ``root`` into the index at ``location``, in a child.

    The child's log records are logged here as they come. Raises
    :class:`Stopping` when ``stopping()`` turned true before the sync ended,
    :class:`SyncProcessError` when it failed (:class:`SilentChild` when no child answered).
    """
    # cwd "/": ``-m`` puts the working directory first on the child's path, where a checkout of this project
    # would shadow the installed package. Unbuffered: the request is written at once, and closing stdin has
    # nothing left to flush into a child that died.
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd="/",
            close_fds=True,
            bufsize=0,
        )
    except OSError as error:
        raise SilentChild(f"{sys.executable!r} cannot be started: {error.strerror or error}") from None
    assert child.stdin is not None and child.stdout is not None
    try:
        try:
            child.stdin.write(json.dumps({"root": root, "location": location}).encode() + b"\n")
        except OSError:
            pass  # it died at start: its exit status says so below
        outcome, answered = _follow(child, stopping)
    finally:
        if child.poll() is None:
            child.kill()  # only on an error of our own while following it
        child.stdin.close()
        child.stdout.close()
        child.wait()
    if "report" in outcome:
        return SyncReport(**outcome["report"])
    if "stopped" in outcome:
        raise Stopping()
    if "error" in outcome:
        raise SyncProcessError(outcome["error"])
    failure = SyncProcessError if answered else SilentChild
    raise failure(f"the sync process exited with status {child.returncode} before it reported")


def _follow(child: subprocess.Popen[bytes], stopping: Callable[[], bool]) -> tuple[dict[str, Any], bool]:
    """Relay the child's log records until it exits: its last message (report, stopped, error; {} if none), and
    whether it wrote any message of the protocol at all."""
    assert child.stdin is not None and child.stdout is not None
    outcome: dict[str, Any] = {}
    answered = False
    pending = b""
    stop_asked_at: float | None = None
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ)
        while True:
            if stop_asked_at is None and stopping():
                stop_asked_at = time.monotonic()
                child.stdin.close()  # the child's end-of-file: stop at the next batch boundary
            elif stop_asked_at is not None and time.monotonic() > stop_asked_at + STOP_GRACE_SECONDS:
                child.terminate()
                stop_asked_at = float("inf")
            if not selector.select(STOP_CHECK_SECONDS):
                continue
            data = os.read(child.stdout.fileno(), 1 << 16)
            if not data:
                break
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                try:
                    message = json.loads(line)
                except ValueError:  # written before the child took its stdout over: a module's print, say
                    message = None
                if not isinstance(message, dict):  # such a print may be JSON, too ("1")
                    logger.warning("the sync process wrote: %s", line.decode(errors="backslashreplace"))
                    continue
                answered = True
                if "log" in message:
                    name, level, text = message["log"]
                    logging.getLogger(name).log(level, "%s", text)
                else:
                    outcome = message
    if stop_asked_at is not None and "report" not in outcome:
        return {"stopped": True}, answered  # terminated, or stopped: either way the stop was asked for
    return outcome, answered


# ---------------------------------------------------------------- the child


class _Channel(logging.Handler):
    """The child's stdout as JSON lines: log records as they are made, then the outcome."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__()
        self.stream = stream

    def send(self, message: dict[str, Any]) -> None:
        self.acquire()  # the handler's own (re-entrant) lock: records may come from the sync's reader threads
        try:
            self.stream.write(json.dumps(message).encode() + b"\n")
            self.stream.flush()
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.send({"log": [record.name, record.levelno, text]})


def main() -> None:
    """The child's side: read the request, sync, report (see the module's docstring)."""
    threading.current_thread().name = SYNC_THREAD_NAME
    channel = _Channel(os.fdopen(os.dup(sys.stdout.fileno()), "wb"))
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not break the protocol
    package_logger = logging.getLogger("pycomex_index")
    package_logger.addHandler(channel)
    package_logger.setLevel(logging.INFO)
    package_logger.propagate = False
    request = json.loads(sys.stdin.buffer.readline() or b"null")
    if not isinstance(request, dict):
        raise SystemExit(f"{MODULE}: no request on stdin")
    stop = threading.Event()
    threading.Thread(target=_stop_at_end_of_input, args=(stop,), name="pycomex-index-sync-stdin", daemon=True).start()
    try:
        with open_archive_index(request["root"], request["location"]) as index:
            report = sync_archive(index, on_progress=abandon_when(stop.is_set))
    except Stopping:
        channel.send({"stopped": True})
    except Exception as error:  # noqa: BLE001 - the parent decides what a failed sync means
        logger.exception("the sync process failed")
        channel.send({"error": f"{type(error).__name__}: {error}".splitlines()[0]})
    else:
        channel.send({"report": dataclasses.asdict(report)})


def _stop_at_end_of_input(stop: threading.Event) -> None:
    # os.read, not sys.stdin: a thread blocked in a buffered read holds its lock, and the interpreter's exit
    # then aborts waiting for it.
    while os.read(sys.stdin.fileno(), 1 << 12):
        pass  # nothing more is sent: end of input means the parent closed it, or died
    stop.set()


if __name__ == "__main__":
    main()
