"""What every part of the stub shares: limits, signal numbers, error replies."""
from __future__ import annotations

import logging

from .protocol import PACKET_SIZE

log = logging.getLogger("apfdbg.gdbstub")

PAGE = 4096
#: Largest ``m`` read: the hex reply must fit in PacketSize.
MAX_READ = PACKET_SIZE // 2 - 16
#: Largest watchpoint range (a Unicorn memory hook range; gdb asks for the whole watched object).
MAX_WATCH = 1 << 20
#: The run's exit status after gdb's ``k`` (kill): even, like the machine's own statuses.
EXIT_KILLED = 12
SIGINT, SIGTRAP, SIGABRT = 2, 5, 6

# error replies (errno values, in hex, as gdbserver does)
E_BADARG = "E16"      # EINVAL: malformed packet, bad hex, bad length
E_FAULT = "E0e"       # EFAULT: memory not mapped (or beyond RAM)
E_NOTHREAD = "E03"    # ESRCH: no such vCPU
E_READONLY = "E0d"    # EACCES: read-only register
E_INTERNAL = "E05"    # EIO: the stub or the machine failed (logged)

_RESUMED = object()   # a handler started the machine: the stop reply comes later
#: packets that change what the TUI shows (registers, memory, points, run state)
_CHANGES = frozenset(bytes([c]) for c in b"GPMXZzcCsSvDk")

POINT_KINDS = {0: "sw", 1: "hw", 2: "write", 3: "read", 4: "access"}
