"""The device interfaces: what the machine asks of a device, and nothing else."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..vcpu import VCpu


class DeviceFault(Exception):
    """The access raises #GP(0) in the guest; the message says why (it goes in the trace)."""


class PortDevice:
    """A device on the I/O bus. `ports` are the ports it claims; an `in` from a claimed port
    returns what `port_in` says, an `out` goes to `port_out`. Unclaimed ports read all ones."""
    name = "device"
    ports: tuple[int, ...] = ()

    def port_in(self, vcpu: VCpu, port: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def port_out(self, vcpu: VCpu, port: int, size: int, value: int) -> None:
        pass


class MsrDevice:
    """A per-vCPU device reached through MSRs (the x2APIC). `rdmsr`/`wrmsr` raise DeviceFault
    for an access that is #GP."""
    name = "device"

    def owns(self, index: int) -> bool:
        return False

    def rdmsr(self, index: int) -> int:
        raise DeviceFault("no such register")

    def wrmsr(self, index: int, value: int) -> None:
        raise DeviceFault("no such register")
