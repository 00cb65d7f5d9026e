"""Where udrflow reads the wall clock: commit timestamps only.

Code that needs "now" takes a clock object, so tests can use
``udrflow.testing.ManualClock`` and check time-dependent behaviour exactly.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_us(self) -> int:
        """Microseconds since the Unix epoch (UTC)."""
        ...


class SystemClock:
    """The real wall clock."""

    def now_us(self) -> int:
        return time.time_ns() // 1000


def utc_now():
    """The wall clock as an aware datetime: Bytewax schedules a source's next poll by a
    wall-clock instant (``next_awake``), so its sources need this one reading of it."""
    import datetime as dt

    return dt.datetime.now(dt.UTC)
