"""The machine: vCPUs interleaved in instruction quanta over one guest RAM, in one thread.

It owns virtual time, the exits every vCPU takes (MSR, CPUID, ports, host-swapped frames), host
paging, and the event stream. It knows nothing of KVM (see host.py) or of any UI.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Iterable

from . import boot, events as ev
from .config import MachineConfig
from .decode import BlockDecoder
from .host import Host, NullHost
from .image import Image, ImageError
from .ram import GuestRAM
from .timeline import Timeline
from .vcpu import State, VCpu
from .devices import DeviceFault
from .devices.debug_exit import DebugExit
from .devices.debugcon import DebugConsole

MSR_TSC, MSR_EFER = 0x10, 0xC0000080
EFER_VALID = 0x1 | 0x100 | 0x400 | 0x800 | 0x4000
# Architectural MSRs Unicorn implements; the value lives in Unicorn's CPU state.
PASSTHROUGH = {
    MSR_EFER: "EFER", 0xC0000081: "STAR", 0xC0000082: "LSTAR", 0xC0000083: "CSTAR",
    0xC0000084: "FMASK", 0xC0000100: "FS_BASE", 0xC0000101: "GS_BASE",
    0xC0000102: "KERNEL_GS_BASE", 0xC0000103: "TSC_AUX", 0x174: "SYSENTER_CS",
    0x175: "SYSENTER_ESP", 0x176: "SYSENTER_EIP", 0x277: "PAT",
}
CANONICAL_MSRS = {0xC0000082, 0xC0000083, 0xC0000100, 0xC0000101, 0xC0000102, 0x175, 0x176}
KVM_SIGNATURE = (0x4B4D564B, 0x564B4D56, 0x4D)  # "KVMKVMKVM\0\0\0" in EBX, ECX, EDX

EXIT_DEADLOCK, EXIT_SHUTDOWN, EXIT_LIMIT, EXIT_BAD_INPUT = 2, 4, 6, 8
SOLO_BUDGET = 1 << 24  # instructions a lone runnable vCPU runs between looks at the machine

EVENT_TYPES: dict[str, type[ev.Event]] = {
    cls.model_fields["kind"].default: cls
    for cls in vars(ev).values()
    if isinstance(cls, type) and issubclass(cls, ev.Event) and cls is not ev.Event
}
MACHINE_EVENT_TYPES = tuple(EVENT_TYPES.values())


def canonical(v: int) -> bool:
    top = v >> 47
    return top == 0 or top == 0x1FFFF


@dataclass
class RunResult:
    status: int
    reason: str
    instructions: int
    per_vcpu: list[int] = field(default_factory=list)


class Machine:
    def __init__(self, image: Image, config: MachineConfig | None = None, host: Host | None = None,
                 seed: int = 0) -> None:
        self.config = config or MachineConfig()
        placed = image.placed(self.config.ram_size, self.config.vcpus)
        self.image = image
        self.entry = image.entry
        self.host: Host = host or NullHost()
        self.rng = random.Random(seed)
        self.timeline = Timeline()
        self.decoder = BlockDecoder()
        self.sinks: list[Callable[[ev.Event], None]] = []
        self.counts: dict[str, int] = {}
        self.ram = GuestRAM(self.config.ram_size)
        #: port -> the device that claims it (devices/); other ports read all ones
        self.port_devices = {p: d for d in (DebugConsole(), DebugExit()) for p in d.ports}
        boot.write_boot_area(self.ram, self.config.vcpus)
        for seg in placed:
            self.ram.write(seg.paddr, seg.data)
            if seg.memsz > len(seg.data):
                self.ram.write(seg.paddr + len(seg.data), bytes(seg.memsz - len(seg.data)))
        self.vcpus = [VCpu(self, i) for i in range(self.config.vcpus)]
        self.exit_requested = False
        #: while a vCPU hook runs (cpuid, in, out): the exact time of its instruction, for events
        self.hook_time: int | None = None
        self.exit_status = 0
        self.exit_reason = ""
        self.tsc_offset = 0
        self.page_in_latency: Callable[[int], int | None] = lambda gfn: 0
        self._page_waiters: dict[int, list[Callable[[], None]]] = {}
        self._next = 0  # round-robin position
        self._activity = 0
        self._round_left = 0
        self._round_mark: tuple[int, int] | None = None
        self._turn = None  # (vcpu, end) of a turn a pause interrupted
        self._finished = False
        self._solo = False        # the current turn is the only runnable vCPU's
        self._woke_other = False  # ... and it just made another one runnable: end the turn
        self.pause_requested = False
        self.stop_request: tuple[int, str] | None = None   # request_stop(): the host process ends
        self.debugger = None      # apfdbg.machine.debug.Debugger, once one is attached
        self.debug_stop = None    # why the last debug stop happened (DebugStop)

    # --- time -------------------------------------------------------------------------------
    @property
    def now(self) -> int:
        return self.timeline.now

    def tsc(self) -> int:
        """What rdtsc and IA32_TSC read: virtual time plus the offset a TSC write set."""
        return (self.now + self.tsc_offset) & (2**64 - 1)

    def advance(self, n: int) -> None:
        self.timeline.now += n

    # --- events -----------------------------------------------------------------------------
    def emit(self, kind: str, vcpu: int | None, **fields) -> None:
        self.emit_at(self.now if self.hook_time is None else self.hook_time, kind, vcpu, **fields)

    def emit_at(self, time: int, kind: str, vcpu: int | None, **fields) -> None:
        # model_construct: our own fields need no validation on this hot path; the trace tests
        # parse every record of real runs against the schema.
        event = EVENT_TYPES[kind].model_construct(time=time, vcpu=vcpu, kind=kind, **fields)
        self.publish(event)

    def publish(self, event: ev.Event) -> None:
        """Hosts publish their own typed events through here too, so the stream stays one."""
        self.counts[event.kind] = self.counts.get(event.kind, 0) + 1
        self._activity += 1  # a round with no event and no instruction is idle
        for sink in self.sinks:
            sink(event)

    def request_exit(self, status: int, reason: str) -> None:
        if not self.exit_requested:
            self.exit_requested = True
            self.exit_status = status
            self.exit_reason = reason

    def request_stop(self, status: int, reason: str) -> None:
        """End the run soon with `status`, from any thread or a signal handler: a pause, then the
        exit at the next turn boundary (run() returns; the trace's last event says why)."""
        self.stop_request = (status, reason)
        self.request_pause()

    def request_pause(self) -> None:
        """Pause soon, from any thread: the running vCPU stops at its next block entry (the C hook
        reads its budget there) and the interrupted turn resumes, with the same budget, at the next
        step(). Unlike step(until=...), this never changes the run."""
        self.pause_requested = True
        turn = self._turn
        if turn is not None:
            st = turn[0].accel.state
            st.irq_window_end = 0
            st.budget_end = 0

    @property
    def running_vcpu(self) -> VCpu | None:
        """The vCPU whose turn is in progress (or was cut short by a pause)."""
        return self._turn[0] if self._turn is not None else None

    def kick(self, vcpu: VCpu) -> None:
        """Something became pending for `vcpu` (it is looked at on its next turn)."""
        self._activity += 1
        self._woke_other = True

    # --- exits ------------------------------------------------------------------------------
    def cpuid(self, vcpu: VCpu, leaf: int, sub: int) -> tuple[int, int, int, int] | None:
        if leaf == 0x40000000:
            res = (0x40000001, *KVM_SIGNATURE)
        elif leaf == 0x40000001:
            res = (self.host.cpuid_features() & 0xFFFFFFFF, 0, 0, 0)
        elif 0x40000002 <= leaf <= 0x400000FF:
            res = (0, 0, 0, 0)
        elif leaf == 1:
            # Ask Unicorn's model for the rest of leaf 1 once (it answers per engine the same).
            a, b, c, d = self._leaf1
            res = (a, (b & 0x00FFFFFF) | (vcpu.index << 24), c | (1 << 31), d)
        else:
            return None
        self.emit("cpuid", vcpu.index, leaf=leaf, subleaf=sub, eax=res[0], ebx=res[1], ecx=res[2], edx=res[3])
        return res

    @property
    def _leaf1(self) -> tuple[int, int, int, int]:
        cached = getattr(self, "_leaf1_cache", None)
        if cached is None:
            cached = self._leaf1_cache = _probe_leaf1()
        return cached

    def rdmsr(self, vcpu: VCpu, index: int) -> int | None:
        value, handler, reason = None, "none", "unknown MSR (KVM without ignore_msrs: #GP)"
        if index in self.host.msr_ids():
            return self.host.rdmsr(vcpu, index)  # the host reports its own msr_read event
        dev = next((d for d in vcpu.msr_devices if d.owns(index)), None)
        if dev is not None:
            handler = dev.name
            try:
                value, reason = dev.rdmsr(index), ""
            except DeviceFault as e:
                reason = str(e)
        elif index == MSR_TSC:
            value, handler, reason = self.tsc(), "arch", ""
        elif index in PASSTHROUGH:
            value, handler, reason = vcpu.uc.msr_read(index), "arch", ""
        self.emit("msr_read", vcpu.index, index=index, value=value or 0,
                  result="ok" if value is not None else "gp", handler=handler, reason=reason)
        return value

    def wrmsr(self, vcpu: VCpu, index: int, value: int) -> bool:
        ok, handler, reason = False, "none", "unknown MSR (KVM without ignore_msrs: #GP)"
        if index in self.host.msr_ids():
            return self.host.wrmsr(vcpu, index, value)  # the host reports its own msr_write event
        dev = next((d for d in vcpu.msr_devices if d.owns(index)), None)
        if dev is not None:
            handler = dev.name
            try:
                dev.wrmsr(index, value)
                ok, reason = True, ""
            except DeviceFault as e:
                reason = str(e)
        elif index == MSR_TSC:
            self.tsc_offset = value - self.now
            ok, handler, reason = True, "arch", ""
        elif index in PASSTHROUGH:
            handler = "arch"
            if index == MSR_EFER and value & ~EFER_VALID:
                reason = "reserved EFER bits"
            elif index in CANONICAL_MSRS and not canonical(value):
                reason = "non-canonical address"
            else:
                vcpu.uc.msr_write(index, value)
                ok, reason = True, ""
        self.emit("msr_write", vcpu.index, index=index, value=value,
                  result="ok" if ok else "gp", handler=handler, reason=reason if not ok else "")
        return ok

    def port_in(self, vcpu: VCpu, port: int, size: int) -> int:
        dev = self.port_devices.get(port)
        value = (1 << (8 * size)) - 1 if dev is None else dev.port_in(vcpu, port, size)
        self.emit("io", vcpu.index, port=port, size=size, value=value, direction="in")
        return value

    def port_out(self, vcpu: VCpu, port: int, size: int, value: int) -> None:
        dev = self.port_devices.get(port)
        if dev is None:
            self.emit("io", vcpu.index, port=port, size=size, value=value, direction="out")
        else:
            dev.port_out(vcpu, port, size, value)

    def send_ipi(self, source: int, shorthand: int, dest: int, vector: int) -> None:
        """x2APIC ICR write: fixed delivery to one APIC id, self, all, or all but self."""
        if shorthand == 1:
            targets = [source]
        elif shorthand == 2:
            targets = range(len(self.vcpus))
        elif shorthand == 3:
            targets = [i for i in range(len(self.vcpus)) if i != source]
        else:
            targets = [dest] if dest < len(self.vcpus) else []
        for t in targets:
            self.vcpus[t].apic.accept(vector)

    def random_u64(self) -> int:
        return self.rng.getrandbits(64)

    # --- host paging ------------------------------------------------------------------------
    def page_out(self, gfns: int | Iterable[int]) -> list[int]:
        """Swap frames out; every vCPU's next access to them exits. Returns the frames newly out."""
        done = []
        for gfn in [gfns] if isinstance(gfns, int) else gfns:
            if 0 <= gfn < self.ram.frames and not self.ram.is_swapped(gfn):
                self.ram.set_swapped(gfn, True)
                done.append(gfn)
                self.emit("page_out", None, gfn=gfn)
        if done:
            for v in self.vcpus:
                v.accel.flush_tlb()
        return done

    def take_accessed(self) -> bytes:
        """Which frames any vCPU mapped since the last call (one byte per frame), then start anew:
        the host's accessed bits, for a pager that ages frames (LRU)."""
        raw = self.ram.take_accessed()
        for v in self.vcpus:
            v.accel.flush_tlb()
        return raw

    def page_in(self, gfn: int) -> None:
        if 0 <= gfn < self.ram.frames and self.ram.is_swapped(gfn):  # outside RAM: never out
            self.ram.set_swapped(gfn, False)
            self.emit("page_in", None, gfn=gfn)
        for cb in self._page_waiters.pop(gfn, []):
            cb()

    def request_page_in(self, gfn: int, on_done: Callable[[], None] | None = None) -> None:
        """Start the host's I/O for `gfn`; it completes after the pager's latency (None: by hand)."""
        first = gfn not in self._page_waiters
        self._page_waiters.setdefault(gfn, [])
        if on_done:
            self._page_waiters[gfn].append(on_done)
        if first:
            delay = self.page_in_latency(gfn)
            if delay is not None:
                self.timeline.schedule(self.now + delay, lambda: self.page_in(gfn))

    def swapped_fault(self, vcpu: VCpu, gfn: int, gva: int, access: str) -> None:
        self.emit("swapped_fault", vcpu.index, gfn=gfn, gva=gva, access=access, rip=vcpu.rip)
        if self.host.on_swapped_fault(vcpu, gfn, gva, access):
            return
        self.stall(vcpu, gfn)

    def stall(self, vcpu: VCpu, gfn: int) -> None:
        """Synchronous wait: the vCPU does nothing until the frame is back."""
        vcpu.state = State.STALLED
        vcpu.stall_gfn = gfn
        self.emit("stall", vcpu.index, gfn=gfn)

        def resume() -> None:
            if vcpu.state is State.STALLED and vcpu.stall_gfn == gfn:
                vcpu.state = State.RUNNING
                vcpu.stall_gfn = None
                self.emit("unstall", vcpu.index, gfn=gfn)
        self.request_page_in(gfn, resume)

    # --- running ----------------------------------------------------------------------------
    def run(self, max_insns: int | None = None) -> RunResult:
        """Run to the guest's exit (or the instruction limit)."""
        limit = max_insns if max_insns is not None else self.config.max_insns
        while not self.exit_requested:
            self.pause_requested = False
            self.step(until=limit)
            if self.stop_request is not None:
                self.request_exit(*self.stop_request)
            if limit is not None and self.now >= limit and not self.exit_requested:
                self.request_exit(EXIT_LIMIT, f"instruction limit {limit} reached")
        return self.finish()

    def step(self, until: int | None = None) -> None:
        """Run vCPU turns until a pause is requested, the run exits, or virtual time reaches `until`.

        A pause can land in the middle of a turn; the next call resumes that same turn with the
        budget it had, so pausing never changes what the guest sees.
        """
        tl, n = self.timeline, len(self.vcpus)
        while not self.exit_requested and not self.pause_requested and self.stop_request is None:
            if self._turn is None:
                if until is not None and tl.now >= until:
                    return
                if self._round_left == 0:
                    if self._round_mark == (tl.now, self._activity):
                        due = tl.next_due()
                        if due is None:
                            self.request_exit(EXIT_DEADLOCK, "every vCPU is stopped and nothing can wake one")
                            return
                        tl.now = max(tl.now, due)  # every vCPU waits: skip to the next host event
                    tl.run_due()
                    self._round_left = n
                    self._round_mark = (tl.now, self._activity)
                    continue
                v = self.vcpus[self._next]
                self._next = (self._next + 1) % n
                self._round_left -= 1
                # Alone (nobody else can run until an exit or a timed event says so), a vCPU
                # needs no quantum: run it to the next timed event, or until it wakes another.
                solo = all(o is v or not o.wants_to_run() for o in self.vcpus)
                budget = SOLO_BUDGET if solo else self.config.quantum
                self._solo = solo
                self._woke_other = False
                due = tl.next_due()
                if due is not None:
                    budget = min(budget, max(1, due - tl.now))
                if until is not None:
                    budget = min(budget, max(1, until - tl.now))
                self._turn = (v, v.retired + budget)
            v, end = self._turn
            if not v.run(end):
                return  # paused mid-turn: resume it next time
            self._turn = None
            due = tl.next_due()
            if due is not None and due <= tl.now:
                tl.run_due()

    def run_alone(self, v: VCpu, until: int | None = None, *, until_runnable: bool = False) -> str:
        """Run only `v`, every other vCPU frozen (gdb's scheduler-locking), until a pause, the exit
        or virtual time `until`; timed host events still happen, and while `v` cannot run time skips
        to the next one.  Returns "paused", "time", "exited" or "blocked" (nothing can wake `v`)."""
        tl = self.timeline
        self._solo = False
        while True:
            if self.exit_requested:
                return "exited"
            if self.pause_requested:
                return "paused"
            if until is not None and tl.now >= until:
                return "time"
            due = tl.next_due()
            if due is not None and due <= tl.now:
                tl.run_due()
                continue
            if until_runnable and v.wants_to_run():
                return "runnable"
            if not v.wants_to_run():
                if due is None:
                    return "blocked"
                tl.now = due if until is None else min(due, until)
                continue
            budget = SOLO_BUDGET
            if due is not None:
                budget = min(budget, due - tl.now)
            if until is not None:
                budget = min(budget, until - tl.now)
            mark = (v.retired, tl.now, self._activity)
            if not v.run(v.retired + max(1, budget)):
                return "paused"
            if (v.retired, tl.now, self._activity) == mark and tl.next_due() == due:
                if due is None:
                    return "blocked"
                tl.now = due if until is None else min(due, until)

    def finish(self) -> RunResult:
        """Flush what is buffered and report the end of the run (once)."""
        if not self._finished:
            self._finished = True
            for v in self.vcpus:
                v.flush_console()
            self.emit("exit", None, status=self.exit_status, reason=self.exit_reason)
        return RunResult(self.exit_status, self.exit_reason, self.now, [v.retired for v in self.vcpus])

    def close(self) -> None:
        for v in self.vcpus:
            v.close()
        self.vcpus = []


def _probe_leaf1() -> tuple[int, int, int, int]:
    from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
    from unicorn import x86_const as X
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, b"\x0f\xa2")
    uc.reg_write(X.UC_X86_REG_RAX, 1)
    uc.emu_start(0x1000, 0x1002)
    return tuple(uc.reg_read(r) & 0xFFFFFFFF for r in
                 (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX))


__all__ = ["Machine", "MachineConfig", "RunResult", "ImageError", "EXIT_DEADLOCK", "EXIT_SHUTDOWN",
           "EXIT_LIMIT", "EXIT_BAD_INPUT"]
