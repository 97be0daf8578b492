"""QEMU's isa-debug-exit at port 0xf4: a write of v ends the run with status (v << 1) | 1."""
from __future__ import annotations

from .base import PortDevice


class DebugExit(PortDevice):
    name = "isa-debug-exit"
    ports = (0xF4,)

    def port_out(self, vcpu, port, size, value) -> None:
        # The vCPU stops at once, after the out: nothing after it runs (docs/guest-abi.md).
        vcpu.stop_with(("debug-exit", value & ((1 << (8 * size)) - 1)))
