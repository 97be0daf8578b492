"""QEMU's debug console at port 0xe9: each byte written goes to the writing vCPU's console."""
from __future__ import annotations

from .base import PortDevice


class DebugConsole(PortDevice):
    name = "debugcon"
    ports = (0xE9,)

    def port_out(self, vcpu, port, size, value) -> None:
        vcpu.console_byte(value & 0xFF)
