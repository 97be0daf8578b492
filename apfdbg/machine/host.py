"""What the machine asks of a host model (KVM's async PF lives behind this, in apfdbg.kvm).

The machine knows no KVM: it reports exits and lets the host decide. `NullHost` is a host with no
paravirtual features: a vCPU that touches a swapped-out frame waits for it synchronously.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .vcpu import VCpu


class Host(Protocol):
    def msr_ids(self) -> frozenset[int]: ...
    def rdmsr(self, vcpu: "VCpu", index: int) -> int | None: ...          # None: #GP(0)
    def wrmsr(self, vcpu: "VCpu", index: int, value: int) -> bool: ...    # False: #GP(0)
    def cpuid_features(self) -> int: ...                                  # leaf 0x40000001 EAX
    def on_swapped_fault(self, vcpu: "VCpu", gfn: int, gva: int, access: str) -> bool: ...
    """True if the host took care of it (async PF or halt); False: the machine stalls the vCPU."""
    def before_entry(self, vcpu: "VCpu") -> None: ...
    def wants_interrupt_window(self, vcpu: "VCpu") -> bool: ...
    def has_work(self, vcpu: "VCpu") -> bool: ...
    """True if the host makes a sleeping (hlt'ed or host-halted) `vcpu` runnable again."""
    """True if the host has an event for `vcpu` that waits only for it to accept interrupts."""
    def on_interrupt_wake(self, vcpu: "VCpu") -> None: ...
    def on_apic_enabled(self, vcpu: "VCpu") -> None: ...
    """The guest turned `vcpu`'s local APIC on (SVR bit 8 written)."""


class NullHost:
    def msr_ids(self) -> frozenset[int]:
        return frozenset()

    def rdmsr(self, vcpu, index):
        return None

    def wrmsr(self, vcpu, index, value):
        return False

    def cpuid_features(self) -> int:
        return 0

    def on_swapped_fault(self, vcpu, gfn, gva, access) -> bool:
        return False

    def before_entry(self, vcpu) -> None:
        pass

    def wants_interrupt_window(self, vcpu) -> bool:
        return False

    def has_work(self, vcpu) -> bool:
        return False

    def on_interrupt_wake(self, vcpu) -> None:
        pass

    def on_apic_enabled(self, vcpu) -> None:
        pass
