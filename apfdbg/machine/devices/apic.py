"""A minimal x2APIC: enough for a scheduler tick, IPIs and interrupt priority.

Only the MSR interface exists (x2APIC mode); the timer counts virtual time.
"""
from __future__ import annotations

from typing import Callable, Protocol

from ..timeline import Timeline, Timer
from .base import DeviceFault, MsrDevice

X2APIC_FIRST, X2APIC_LAST = 0x800, 0x8FF
MSR_APIC_BASE = 0x1B

ID, VERSION, TPR, PPR, EOI, LDR, SVR = 0x802, 0x803, 0x808, 0x80A, 0x80B, 0x80D, 0x80F
ISR0, TMR0, IRR0, ESR, ICR = 0x810, 0x818, 0x820, 0x828, 0x830
LVT_TIMER, LVT_LINT0, LVT_LINT1, LVT_ERROR = 0x832, 0x835, 0x836, 0x837
TMICT, TMCCT, TDCR, SELF_IPI = 0x838, 0x839, 0x83E, 0x83F

LVT_MASKED = 1 << 16


class ApicBus(Protocol):
    def send_ipi(self, source: int, shorthand: int, dest: int, vector: int) -> None: ...


ApicFault = DeviceFault
"""An APIC access that raises #GP(0) in the guest."""


class X2Apic(MsrDevice):
    name = "apic"          # the `handler` of its msr_read/msr_write events

    def __init__(self, apic_id: int, timeline: Timeline, bus: ApicBus,
                 on_interrupt: Callable[[], None] = lambda: None,
                 on_enable: Callable[[], None] = lambda: None) -> None:
        self.id = apic_id
        self.timeline = timeline
        self.bus = bus
        self.on_interrupt = on_interrupt  # something became pending: wake the vCPU if it sleeps
        self.on_enable = on_enable        # an SVR write with bit 8 set (a host may re-check its work)
        self.reset()

    def reset(self) -> None:
        self.irr = 0
        self.isr = 0
        self.tpr = 0
        self.svr = 0xFF
        self.lvt_timer = LVT_MASKED
        self.lvt = {LVT_LINT0: LVT_MASKED, LVT_LINT1: LVT_MASKED, LVT_ERROR: LVT_MASKED}
        self.tmict = 0
        self.tdcr = 0
        self.timer_start = 0
        self.icr = 0
        self._timer: Timer | None = None
        self.apic_base = 0xFEE00000 | 0x800 | 0x400 | (0x100 if self.id == 0 else 0)

    # --- state ------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return bool(self.svr & 0x100)

    @property
    def divisor(self) -> int:
        v = ((self.tdcr & 8) >> 1) | (self.tdcr & 3)
        return 1 << ((v + 1) & 7)

    @property
    def timer_mode(self) -> str:
        return ("one-shot", "periodic", "tsc-deadline", "reserved")[(self.lvt_timer >> 17) & 3]

    def current_count(self) -> int:
        if not self.tmict or self._timer is None:
            return 0
        elapsed = (self.timeline.now - self.timer_start) // self.divisor
        if self.timer_mode == "periodic":
            return self.tmict - elapsed % self.tmict
        return max(0, self.tmict - elapsed)

    def ppr(self) -> int:
        isrv = self.isr.bit_length() - 1 if self.isr else 0
        return self.tpr if (self.tpr >> 4) >= (isrv >> 4) else isrv & 0xF0

    def pending_vector(self) -> int | None:
        """The vector the APIC would present to the CPU now, if any."""
        if not self.irr:
            return None
        v = self.irr.bit_length() - 1
        return v if (v >> 4) > (self.ppr() >> 4) else None

    def acknowledge(self) -> int:
        v = self.pending_vector()
        assert v is not None
        self.irr &= ~(1 << v)
        self.isr |= 1 << v
        return v

    def accept(self, vector: int) -> None:
        """A fixed interrupt arrives (timer, IPI, or a host device)."""
        if not self.enabled or vector < 16:
            return
        self.irr |= 1 << vector
        self.on_interrupt()

    # --- timer ------------------------------------------------------------------------------
    def _arm(self) -> None:
        if self._timer:
            self._timer.cancel()
            self._timer = None
        if self.tmict and self.timer_mode in ("one-shot", "periodic"):
            self.timer_start = self.timeline.now
            self._timer = self.timeline.schedule(self.timer_start + self.tmict * self.divisor, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self.enabled and not self.lvt_timer & LVT_MASKED:
            self.accept(self.lvt_timer & 0xFF)
        if self.timer_mode == "periodic" and self.tmict:
            self.timer_start = self.timeline.now
            self._timer = self.timeline.schedule(self.timer_start + self.tmict * self.divisor, self._expire)

    # --- MSR interface ----------------------------------------------------------------------
    def owns(self, index: int) -> bool:
        return index == MSR_APIC_BASE or X2APIC_FIRST <= index <= X2APIC_LAST

    def rdmsr(self, index: int) -> int:
        if index == MSR_APIC_BASE:
            return self.apic_base
        if IRR0 <= index < IRR0 + 8:
            return (self.irr >> (32 * (index - IRR0))) & 0xFFFFFFFF
        if ISR0 <= index < ISR0 + 8:
            return (self.isr >> (32 * (index - ISR0))) & 0xFFFFFFFF
        if TMR0 <= index < TMR0 + 8:
            return 0
        regs = {
            ID: lambda: self.id, VERSION: lambda: 0x50014, TPR: lambda: self.tpr, PPR: self.ppr,
            LDR: lambda: ((self.id >> 4) << 16) | (1 << (self.id & 0xF)), SVR: lambda: self.svr,
            ESR: lambda: 0, ICR: lambda: self.icr, LVT_TIMER: lambda: self.lvt_timer,
            TMICT: lambda: self.tmict, TMCCT: self.current_count, TDCR: lambda: self.tdcr,
        }
        if index in regs:
            return regs[index]()
        if index in self.lvt:
            return self.lvt[index]
        raise ApicFault(f"x2APIC register {index:#x} is not readable")

    def wrmsr(self, index: int, value: int) -> None:
        if index == MSR_APIC_BASE:
            return  # the machine stays in x2APIC mode; relocation and disabling are not modelled
        if index == EOI:
            if value:
                raise ApicFault("EOI takes 0 in x2APIC mode")
            if self.isr:
                self.isr &= ~(1 << (self.isr.bit_length() - 1))
                if self.irr:
                    self.on_interrupt()
            return
        if value >> 32 and index != ICR:
            raise ApicFault(f"x2APIC register {index:#x} is 32-bit")
        if index == TPR:
            self.tpr = value & 0xFF
        elif index == SVR:
            self.svr = value & 0x1FF
            if self.enabled:
                self.on_enable()
        elif index == LVT_TIMER:
            self.lvt_timer = value & 0x700FF
            if not self.enabled:
                self.lvt_timer |= LVT_MASKED
        elif index in self.lvt:
            self.lvt[index] = value & 0x1FFFF
        elif index == TMICT:
            self.tmict = value & 0xFFFFFFFF
            self._arm()
        elif index == TDCR:
            self.tdcr = value & 0xB
        elif index == ESR:
            pass
        elif index == ICR:
            self.icr = value
            self.bus.send_ipi(self.id, (value >> 18) & 3, value >> 32, value & 0xFF)
        elif index == SELF_IPI:
            self.accept(value & 0xFF)
        else:
            raise ApicFault(f"x2APIC register {index:#x} is not writable")
