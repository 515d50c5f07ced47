"""How a watcher runs: one frozen, validated :class:`WatchSettings`, built once and passed whole.

The CLI builds it from its options (``watch``, ``daemon start``), the daemon
turns it into the watcher process's command line (:meth:`WatchSettings.to_argv`)
and that process's CLI builds the same settings back. Nothing on the way
fills in defaults a second time, so an explicit value is never replaced by
one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pycomex_index.errors import InvalidWatchSettingsError

DEFAULT_POLL_INTERVAL_SECONDS = 2.0
#: How often inotify mode re-walks the whole archive for edits no watch can see (finished runs).
DEFAULT_RECONCILE_INTERVAL_SECONDS = 300.0
#: A running experiment whose metadata and folder have not changed for this long is taken for interrupted
#: (killed runs stay "running" forever): it is polled every minute instead of watched. A day, so that only
#: a run silent for a whole day (no metadata rewrite, no file added) waits up to a minute to be seen done.
DEFAULT_QUIET_AFTER_SECONDS = 86400.0
#: How long the watcher's lease lasts unless renewed (it is renewed every second): ten heartbeats, so a
#: database stall of a few seconds (a busy SQLite writer) never hands the archive to another host, while
#: the archive of a host that died is free for another within seconds.
DEFAULT_LEASE_SECONDS = 10.0


@dataclass(frozen=True)
class WatchSettings:
    """The watcher's knobs; invalid values raise :class:`InvalidWatchSettingsError` at construction."""

    #: Poll instead of using inotify (network filesystems, where inotify sees no remote writes).
    polling: bool = False
    #: Seconds between two polls of the archive (polling mode) or of running runs past the watch budget.
    poll_interval: float = DEFAULT_POLL_INTERVAL_SECONDS
    #: Most inotify watches to use before polling; None: :func:`~pycomex_index.watcher.default_watch_limit`.
    max_watches: int | None = None
    #: Seconds between two full re-walks in inotify mode (finished runs are not watched).
    reconcile_interval: float = DEFAULT_RECONCILE_INTERVAL_SECONDS
    #: Seconds without a change after which a running experiment is taken for interrupted and polled, not watched.
    quiet_after: float = DEFAULT_QUIET_AFTER_SECONDS
    #: Seconds the watcher's lease lasts unless renewed: after its process went silent that long, another
    #: host may take the archive over (see :mod:`pycomex_index.lease`).
    lease_seconds: float = DEFAULT_LEASE_SECONDS

    def __post_init__(self) -> None:
        object.__setattr__(self, "polling", bool(self.polling))
        for name in ("poll_interval", "reconcile_interval", "quiet_after", "lease_seconds"):
            object.__setattr__(self, name, _positive_seconds(name, getattr(self, name)))
        if self.max_watches is not None:
            if isinstance(self.max_watches, bool) or not isinstance(self.max_watches, int) or self.max_watches < 0:
                raise InvalidWatchSettingsError(
                    "max_watches", f"must be a whole number of at least 0, not {self.max_watches!r}"
                )

    @classmethod
    def from_options(
        cls,
        *,
        polling: bool = False,
        poll_interval: float | None = None,
        max_watches: int | None = None,
        reconcile_interval: float | None = None,
        quiet_after: float | None = None,
        lease_seconds: float | None = None,
    ) -> WatchSettings:
        """Settings from optional values, where None (and only None) means "the default"."""
        defaults = cls()
        return cls(
            polling=polling,
            poll_interval=defaults.poll_interval if poll_interval is None else poll_interval,
            max_watches=max_watches,
            reconcile_interval=defaults.reconcile_interval if reconcile_interval is None else reconcile_interval,
            quiet_after=defaults.quiet_after if quiet_after is None else quiet_after,
            lease_seconds=defaults.lease_seconds if lease_seconds is None else lease_seconds,
        )

    def to_argv(self) -> list[str]:
        """These settings as ``watch`` options (what ``daemon start`` passes to the watcher process)."""
        argv = ["--polling"] if self.polling else []
        argv += ["--interval", repr(self.poll_interval), "--reconcile-interval", repr(self.reconcile_interval)]
        argv += ["--quiet-after", repr(self.quiet_after), "--lease-seconds", repr(self.lease_seconds)]
        if self.max_watches is not None:
            argv += ["--max-watches", str(self.max_watches)]
        return argv


def _positive_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidWatchSettingsError(name, f"must be a number of seconds, not {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidWatchSettingsError(name, f"must be more than 0 seconds, not {value!r}")
    return seconds
