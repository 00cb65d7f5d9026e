"""The epoch log: segments of checksummed frames, group commit, recovery, readers.

Public pieces: :class:`EpochLog` (open, append, read, scan, follow), :class:`LogRecord`
(what reads return), :class:`Durability` (the allowed ``durability=`` values), and
the recovery ``DECISION_TABLE``.
"""

from udrflow._ext._frame import LogRecord as LogRecord
from udrflow.log._log import EpochLog as EpochLog
from udrflow.log._recovery import DECISION_TABLE as DECISION_TABLE
from udrflow.log._recovery import Action as Action
from udrflow.log._recovery import FrameState as FrameState
from udrflow.log._writer import Durability as Durability

__all__ = ["EpochLog", "LogRecord", "Durability", "DECISION_TABLE", "Action", "FrameState"]
