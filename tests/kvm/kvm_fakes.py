"""Fakes of the ports the machine implements, for the host-model tests."""

from __future__ import annotations

from apfdbg.kvm import AsyncPfHost, get_profile
from apfdbg.kvm.events import Event

RAM_SIZE = 16 << 20
AREA = 0x50000  # a 64-byte aligned area inside RAM


class FakeClock:
    def __init__(self) -> None:
        self.t = 0

    def now(self) -> int:
        return self.t

    def tick(self, n: int = 1) -> None:
        self.t += n


class FakeMemory:
    def __init__(self, size: int = RAM_SIZE) -> None:
        self.size = size
        self.words: dict[int, int] = {}
        self.writes: list[tuple[int, int]] = []

    def is_ram(self, gpa: int, size: int) -> bool:
        return 0 <= gpa and gpa + size <= self.size

    def write_u32(self, gpa: int, value: int) -> None:
        assert self.is_ram(gpa, 4), hex(gpa)
        self.words[gpa] = value & 0xFFFFFFFF
        self.writes.append((gpa, value))

    def read_u32(self, gpa: int) -> int:
        return self.words.get(gpa, 0)


class FakeVcpu:
    """A vCPU whose injected #PFs stay pending (blocking interrupt_allowed) until deliver()."""

    def __init__(self, index: int = 0, *, if_flag: bool = True, cpl: int = 3) -> None:
        self.index = index
        self.if_flag = if_flag
        self.shadow = False
        self._cpl = cpl
        self.pending: list[tuple[int, int]] = []
        self.injected: list[tuple[int, int]] = []
        self.halted = False
        self.halt_calls: list[bool] = []
        self.interrupts: list[int] = []   # vectors sent to its local APIC (today's page-ready)
        self.apic_on = True

    def interrupt_allowed(self) -> bool:
        return self.if_flag and not self.shadow and not self.pending

    def cpl(self) -> int:
        return self._cpl

    def set_cpl(self, cpl: int) -> None:
        self._cpl = cpl

    def inject_page_fault(self, cr2: int, error_code: int) -> None:
        self.pending.append((cr2, error_code))
        self.injected.append((cr2, error_code))

    def set_halted(self, halted: bool) -> None:
        self.halted = halted
        self.halt_calls.append(halted)

    def inject_interrupt(self, vector: int) -> None:
        self.interrupts.append(vector)

    def apic_enabled(self) -> bool:
        return self.apic_on

    def deliver(self, memory: FakeMemory | None = None, area: int = AREA) -> list[tuple[int, int]]:
        """The machine delivers the pending #PFs; the guest handler reads and zeroes the
        reason.  Returns [(cr2, reason)]."""
        out = []
        for cr2, _ec in self.pending:
            reason = 0
            if memory is not None:
                reason = memory.read_u32(area)
                memory.words[area] = 0
            out.append((cr2, reason))
        self.pending.clear()
        return out


class FakePager:
    def __init__(self) -> None:
        self.host: AsyncPfHost | None = None
        self.requests: list = []
        self.cancelled: list = []
        self.now_calls: list = []

    def request_page_in(self, vcpu_index: int, gfn: int, work) -> None:
        self.requests.append((vcpu_index, gfn, work))

    def cancel_page_in(self, work) -> None:
        self.cancelled.append(work)

    def page_in_now(self, work) -> None:
        self.now_calls.append(work)
        assert self.host is not None
        self.host.page_in_done(work)

    def finish(self, work) -> bool:
        assert self.host is not None
        return self.host.page_in_done(work)


class Rig:
    """A host with N fake vCPUs, memory, clock, pager and an event log."""

    def __init__(self, profile: str = "seed", nvcpus: int = 1, **vcpu_kw) -> None:
        self.clock = FakeClock()
        self.mem = FakeMemory()
        self.pager = FakePager()
        self.events: list[Event] = []
        self.vcpus = [FakeVcpu(i, **vcpu_kw) for i in range(nvcpus)]
        self.host = AsyncPfHost(
            self.mem, self.clock, self.events.append, self.pager, get_profile(profile), self.vcpus
        )
        self.pager.host = self.host

    @property
    def v0(self) -> FakeVcpu:
        return self.vcpus[0]

    def st(self, i: int = 0):
        return self.host.state(i)

    def enable(self, i: int = 0, extra: int = 0, area: int = AREA) -> bool:
        from apfdbg.kvm import MSR_KVM_ASYNC_PF_EN

        return self.host.wrmsr(i, MSR_KVM_ASYNC_PF_EN, area | 1 | extra)

    def enable_and_drain(self, i: int = 0, extra: int = 0) -> None:
        """Enable APF and deliver the wake-all the enable queues."""
        assert self.enable(i, extra)
        self.host.before_entry(i)
        self.vcpus[i].deliver(self.mem)

    def kinds(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]

    def reason(self, area: int = AREA) -> int:
        return self.mem.read_u32(area)
