"""The panels of the TUI, one module each (see docs/ui.md)."""
from .code import CodePanel
from .console import ConsolePanel
from .explain import ExplainPanel
from .gmem import GuestMemPanel
from .hashtable import HashPanel
from .memory import MemoryPanel
from .msr import MsrPanel
from .points import PointsPanel
from .reason import ReasonPanel
from .regs import RegsPanel
from .stack import StackPanel
from .timeline import TimelinePanel
from .vcpus import VcpuPanel
from .works import WorksPanel

#: every panel class, in focus order (the digit keys follow it)
PANELS = [VcpuPanel, MsrPanel, HashPanel, WorksPanel, ReasonPanel, TimelinePanel, MemoryPanel, ExplainPanel,
          ConsolePanel, CodePanel, RegsPanel, StackPanel, GuestMemPanel, PointsPanel]
#: panels hidden until asked for (their key, tab, H or the panels screen shows them)
HIDDEN_BY_DEFAULT = ("code", "regs", "stack", "gmem", "points")

__all__ = ["PANELS", "VcpuPanel", "MsrPanel", "HashPanel", "WorksPanel", "ReasonPanel", "TimelinePanel",
           "MemoryPanel", "ExplainPanel", "ConsolePanel", "CodePanel", "RegsPanel", "StackPanel",
           "GuestMemPanel", "PointsPanel", "HIDDEN_BY_DEFAULT"]
