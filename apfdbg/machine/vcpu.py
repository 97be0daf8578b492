"""One vCPU: a Unicorn engine over the shared RAM, and the exits a hypervisor handles.

The engine runs free between exits; the only per-block work is the C block hook that counts
retired instructions (accel). Everything Unicorn does not do for a hypervisor (MSRs, CPL changes,
IDT delivery, SYSCALL, host paging) is done here on the way out of `emu_start`.

Long by design: one concern, the exit loop of one vCPU, whose cases share the engine's
mid-block state (retired count, turn base, pending event); splitting it would spread that state.
"""
from __future__ import annotations

import ctypes
from enum import Enum
from typing import TYPE_CHECKING

from unicorn import (UC_ARCH_X86, UC_ERR_INSN_INVALID, UC_HOOK_INSN, UC_HOOK_INSN_INVALID,
                     UC_HOOK_INTR, UC_HOOK_CODE, UC_MODE_64, UC_PROT_ALL, Uc, UcError)
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from . import boot, ucstate
from .accel import VcpuAccel
from .devices.apic import X2Apic
from .delivery import Delivered, combine, deliver
from .faultaddr import fault_address
from .faults import (ERROR_CODE_VECTORS, EXC_DF, EXC_GP, EXC_PF, EXC_UD, AccessFault, BadPhysical,
                     HostSwapped, PendingEvent)

if TYPE_CHECKING:
    from .machine import Machine

RFLAGS_IF = 1 << 9
PAGE = 4096


class State(str, Enum):
    RUNNING = "running"
    IDLE = "idle"              # hlt with IF=1: sleeps until an interrupt it can take
    STOPPED = "stopped"        # hlt with IF=0: stays stopped for good
    APF_HALTED = "apf-halted"  # the host halted it (async PF "halt vcpu" path or doublefault)
    STALLED = "stalled"        # synchronous wait for a swapped-out frame
    SHUTDOWN = "shutdown"      # triple fault


class VCpu:
    def __init__(self, machine: "Machine", index: int) -> None:
        self.machine = machine
        self.index = index
        cfg = machine.config
        uc = self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        # Plain 64-bit register access straight through libunicorn: the binding's generic
        # reg_read costs ~2 us, this ~0.3 us, and the run loop does several per turn.
        self._uch = uc._uch
        self._buf = ctypes.c_uint64()
        self._bufp = ctypes.byref(self._buf)
        uc.ctl_set_tcg_buffer_size(cfg.tcg_buffer_mib << 20)
        uc.mem_map_ptr(0, machine.ram.size, UC_PROT_ALL, machine.ram.ptr)
        uc.ctl_exits_enabled(True)
        uc.ctl_set_exits([])
        self.accel = VcpuAccel.attach(uc, machine.ram.ptr, machine.ram.size,
                                      machine.ram.frame_state_ptr, self._block_miss)
        self.accel.state.frame_access = machine.ram.frame_access_ptr
        self.apic = X2Apic(index, machine.timeline, machine, self._interrupt_arrived,
                           lambda: machine.host.on_apic_enabled(self))
        self.msr_devices = (self.apic,)   # the devices reached through this vCPU's MSRs
        self.state = State.RUNNING
        self.pending: PendingEvent | None = None
        self.stall_gfn: int | None = None
        self.console = bytearray()
        self._line = bytearray()
        self._line_time = 0
        self._exit: tuple | None = None
        self._hooked_sites: set[int] = set()
        self._want_sites: list[tuple[int, str]] = []
        self._turn_base = 0      # accel.retired when the current emu_start began
        self._prefix_until: int | None = None  # run only up to here (see the fetch-fault case)
        self._stepping: int | None = None      # RIP of the instruction a single step runs
        self._bp_skip: int | None = None       # resume from a breakpoint: do not stop there again
        self._watch_hit: tuple[int, int] | None = None  # (watchpoint id, address) to report
        self._ran_free = False  # ran without Unicorn's count hook since the last single step
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)
        uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
        self._reset_registers(machine.entry)

    # --- start state (docs/guest-abi.md) -----------------------------------------------------
    def _reset_registers(self, entry: int) -> None:
        uc, i = self.uc, self.index
        uc.reg_write(X.UC_X86_REG_GDTR, (0, boot.GDT_BASE, boot.gdt_limit(self.machine.config.vcpus), 0))
        uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0, 0))
        ucstate.load_code_and_stack(uc, boot.KERNEL_CS, boot.DESC_KERNEL_CODE,
                                    boot.KERNEL_DS, boot.DESC_KERNEL_DATA)
        for r in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS, X.UC_X86_REG_GS):
            uc.reg_write(r, boot.KERNEL_DS)
        uc.reg_write(X.UC_X86_REG_TR, (boot.tss_selector(i), boot.tss_base(i), boot.TSS_SIZE - 1, 0x8900))
        for r in (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX,
                  X.UC_X86_REG_RBP, X.UC_X86_REG_R8, X.UC_X86_REG_R9, X.UC_X86_REG_R10,
                  X.UC_X86_REG_R11, X.UC_X86_REG_R12, X.UC_X86_REG_R13, X.UC_X86_REG_R14,
                  X.UC_X86_REG_R15):
            uc.reg_write(r, 0)
        uc.reg_write(X.UC_X86_REG_RDI, i)
        uc.reg_write(X.UC_X86_REG_RSI, self.machine.config.vcpus)
        uc.reg_write(X.UC_X86_REG_RSP, boot.stack_top(i))
        uc.reg_write(X.UC_X86_REG_RFLAGS, 0x2)
        uc.reg_write(X.UC_X86_REG_RIP, entry)

    def close(self) -> None:
        self.accel.detach()

    # --- registers --------------------------------------------------------------------------
    def reg(self, rid: int) -> int:
        """A 64-bit register (or a selector, zero-extended)."""
        self._buf.value = 0
        uclib.uc_reg_read(self._uch, rid, self._bufp)
        return self._buf.value

    def set_reg(self, rid: int, value: int) -> None:
        self._buf.value = value & 0xFFFFFFFFFFFFFFFF
        uclib.uc_reg_write(self._uch, rid, self._bufp)

    @property
    def rip(self) -> int:
        return self.reg(X.UC_X86_REG_RIP)

    @property
    def rflags(self) -> int:
        return self.reg(X.UC_X86_REG_RFLAGS)

    def cpl(self) -> int:
        return ucstate.cpl(self.uc)

    @property
    def retired(self) -> int:
        return self.accel.retired

    def interrupt_allowed(self) -> bool:
        """IF=1, no STI/MOV SS shadow and no event waiting for (re)injection (KVM's test)."""
        return (self.pending is None and bool(self.rflags & RFLAGS_IF)
                and not ucstate.interrupt_shadow(self.uc))

    # --- linear memory, as the CPU sees it ----------------------------------------------------
    def translate(self, va: int, access: str = "read", user: bool | None = None, set_ad: bool = True) -> int:
        """Guest linear -> guest physical; raises an AccessFault subclass."""
        if user is None:
            user = self.cpl() == 3
        return self.accel.translate(va, access, user, set_ad)

    def read_linear(self, va: int, size: int, user: bool = False) -> bytes:
        out = bytearray()
        while size:
            chunk = min(size, PAGE - (va & 0xFFF))
            gpa = self.translate(va, "read", user)
            out += self.machine.ram.read(gpa, chunk)
            va, size = va + chunk, size - chunk
        return bytes(out)

    def check_writable(self, va: int, size: int) -> list[int]:
        gpas = []
        while size:
            chunk = min(size, PAGE - (va & 0xFFF))
            gpas.append(self.translate(va, "write", False))
            va, size = va + chunk, size - chunk
        return gpas

    def write_physical(self, gpa: int, data: bytes) -> None:
        self.machine.ram.write(gpa, data)

    def peek(self, va: int, size: int) -> bytes | None:
        """Debugger read: no A/D side effects, None if unmapped or swapped out."""
        try:
            out = bytearray()
            while size:
                chunk = min(size, PAGE - (va & 0xFFF))
                gpa = self.accel.translate(va, "read", False, False)
                out += self.machine.ram.read(gpa, chunk)
                va, size = va + chunk, size - chunk
            return bytes(out)
        except AccessFault:
            return None

    # --- delivery support (delivery.CpuView) ------------------------------------------------
    def regs_for_delivery(self):
        r = self.reg
        return (r(X.UC_X86_REG_RIP), r(X.UC_X86_REG_RSP), r(X.UC_X86_REG_RFLAGS),
                r(X.UC_X86_REG_CS) & 0xFFFF, r(X.UC_X86_REG_SS) & 0xFFFF, ucstate.cpl(self.uc))

    def tables(self) -> dict[str, tuple[int, int]]:
        return ucstate.descriptor_tables(self.uc)

    def table(self, which: str) -> tuple[int, int]:
        return self.tables()[which]

    def finish_delivery(self, rip, rsp, rflags, cs, cs_desc, ss, ss_desc, cpl_changes, cr2) -> None:
        uc = self.uc
        if cr2 is not None:
            uc.reg_write(X.UC_X86_REG_CR2, cr2)
        if cpl_changes or cs != self.reg(X.UC_X86_REG_CS) & 0xFFFF:
            ucstate.load_code_and_stack(uc, cs, cs_desc, ss, ss_desc)
        self.set_reg(X.UC_X86_REG_RSP, rsp)
        self.set_reg(X.UC_X86_REG_RFLAGS, rflags)
        self.set_reg(X.UC_X86_REG_RIP, rip)
        ucstate.set_interrupt_shadow(uc, False)

    # --- events -----------------------------------------------------------------------------
    def queue_exception(self, vector: int, error_code: int | None = None, cr2: int | None = None,
                        source: str = "exception") -> None:
        """Queue an exception; if one is already waiting, apply the double-fault rules."""
        if self.pending is not None and self.pending.source in ("exception", "host"):
            nxt = combine(self.pending.vector, vector)
            if nxt is None:
                self._triple_fault(self.pending.vector, vector)
                return
            if nxt == EXC_DF:
                self.machine.emit("double_fault", self.index, first=self.pending.vector, second=vector)
                vector, error_code, cr2 = EXC_DF, 0, None
        if error_code is None and vector in ERROR_CODE_VECTORS and source != "software":
            error_code = 0
        self.pending = PendingEvent(vector, source, error_code, cr2)

    def inject_page_fault(self, cr2: int, error_code: int) -> None:
        """For the host model: a #PF it injects (async PF not-present / page ready)."""
        self.pending = PendingEvent(EXC_PF, "host", error_code, cr2)

    def inject_interrupt(self, vector: int) -> None:
        """For the host model: a fixed, edge interrupt from the host into this vCPU's local APIC."""
        self.apic.accept(vector)

    def apic_enabled(self) -> bool:
        """For the host model: the local APIC is on (SVR bit 8)."""
        return self.apic.enabled

    def set_halted(self, halted: bool) -> None:
        """For the host model: apf.halted (the vCPU waits for a page, but wakes for interrupts)."""
        if halted and self.state is State.RUNNING:
            self.state = State.APF_HALTED
        elif not halted and self.state is State.APF_HALTED:
            self.state = State.RUNNING
            self.machine.kick(self)

    def _software_interrupt(self, vector: int, rip: int) -> None:
        """`int n`, `int3`, `into`: delivered with the gate-DPL check; RIP is already past them,
        but a fault while delivering points at the instruction (the last one of its block, found
        only if delivery does fault)."""
        addr, size, _n = self.accel.cur_block
        block = (addr, size) if rip == addr + size else None
        self.pending = PendingEvent(vector, "software", insn_rip=block)

    def _software_insn_rip(self, block: tuple[int, int] | None) -> int | None:
        if block is None:
            return None
        info = self.machine.decoder.decode(self._block_bytes(*block))
        return block[0] + info.offsets[-1] if info.offsets else None

    def _interrupt_arrived(self) -> None:
        self.machine.kick(self)

    def deliver_pending(self) -> bool:
        """Deliver what can be delivered now; True if the vCPU can run afterwards."""
        if self.pending is None and not self.apic.irr:
            return True  # the common case, without reading a register
        for _ in range(4):
            if self.pending is None:
                if self.state in (State.RUNNING, State.IDLE, State.APF_HALTED) and self._take_interrupt():
                    continue
                return True
            ev = self.pending
            try:
                res = deliver(self, ev)
            except HostSwapped as e:
                self.machine.swapped_fault(self, e.gfn, e.va, e.access)
                return False
            except BadPhysical as e:
                self._bad_access(e.gpa, e.va)
                return False
            if isinstance(res, Delivered):
                self.pending = None
                self.machine.emit("inject", self.index, vector=ev.vector, error_code=ev.error_code,
                                  cr2=ev.cr2 if ev.vector == EXC_PF else None, source=ev.source,
                                  rip=res.return_rip, handler=res.handler)
                if self.state in (State.IDLE, State.APF_HALTED):
                    self._wake("event")
                return True
            nxt = combine(ev.vector, res.vector) if ev.source != "interrupt" else res.vector
            if ev.source == "software":
                nxt = res.vector
                insn = self._software_insn_rip(ev.insn_rip)
                if insn is not None:
                    self.set_reg(X.UC_X86_REG_RIP, insn)
            if nxt is None:
                self._triple_fault(ev.vector, res.vector)
                return False
            if nxt == EXC_DF:
                self.machine.emit("double_fault", self.index, first=ev.vector, second=res.vector)
                self.pending = PendingEvent(EXC_DF, "exception", 0)
            else:
                self.pending = PendingEvent(nxt, "exception", res.error_code, res.cr2)
        return True

    def _take_interrupt(self) -> bool:
        """Accept the APIC's highest pending interrupt if the CPU can take it now."""
        if self.apic.pending_vector() is None or not self.rflags & RFLAGS_IF:
            return False
        if ucstate.interrupt_shadow(self.uc):
            return False
        self.pending = PendingEvent(self.apic.acknowledge(), "interrupt")
        return True

    def _wake(self, reason: str) -> None:
        if self.state is State.APF_HALTED:
            self.machine.host.on_interrupt_wake(self)
        self.state = State.RUNNING
        self.machine.emit("resume", self.index, reason=reason)

    def wants_to_run(self) -> bool:
        state = self.state
        if state is State.RUNNING:
            return True
        if state is State.IDLE or state is State.APF_HALTED:
            if self.pending is not None or (
                    self.apic.pending_vector() is not None and bool(self.rflags & RFLAGS_IF)):
                return True
        if state is State.STALLED or state is State.SHUTDOWN:
            return False
        return self.machine.host.has_work(self)

    def _triple_fault(self, first: int, second: int) -> None:
        self.pending = None
        self.state = State.SHUTDOWN
        self.machine.emit("triple_fault", self.index, first=first, second=second, rip=self.rip)
        self.machine.request_exit(4, f"vCPU {self.index} triple fault (shutdown)")

    def _bad_access(self, gpa: int, va: int) -> None:
        self.state = State.SHUTDOWN
        self.machine.emit("bad_access", self.index, gpa=gpa, gva=va, rip=self.rip)
        self.machine.request_exit(4, f"vCPU {self.index} accessed {gpa:#x}, which is not guest RAM")

    # --- running ----------------------------------------------------------------------------
    def run(self, end: int) -> bool:
        """Run until `retired` reaches `end`, handling exits; False if a pause cut the turn short."""
        acc, m = self.accel, self.machine
        while not m.exit_requested:
            if m.pause_requested:
                return False
            if m._solo and m._woke_other:
                return True  # another vCPU can run now: the lone turn ends here
            state = self.state
            if state is State.STALLED or state is State.SHUTDOWN:
                return True  # blocked in the host: KVM would not enter the guest either
            if state is not State.RUNNING and m.host.has_work(self):
                self._wake("host work")  # e.g. a done async PF makes a halted vCPU runnable
            m.host.before_entry(self)
            if not self.wants_to_run():
                return True
            if not self.deliver_pending() or self.state is not State.RUNNING:
                return True
            if m.pause_requested:
                return False  # e.g. a catchpoint on the delivery: stop at the handler's first instruction
            due = m.timeline.next_due()
            if due is not None:  # an exit may have armed a timer (APIC, host) since the turn began
                if due <= m.now:
                    return True
                end = min(end, acc.retired + (due - m.now))
            if acc.retired >= end:
                return True
            self._arm_interrupt_window(end)
            acc.stop_reason = 0
            self._exit = None
            self._turn_base = acc.retired
            err = None
            if self._prefix_until is not None:
                self.uc.ctl_set_exits([self._prefix_until])
            self._ran_free = True
            try:
                self.uc.emu_start(self.reg(X.UC_X86_REG_RIP), 0)
            except UcError as e:
                err = e
            self._after_stop(err)
            if self._prefix_until is not None and acc.stop_reason != VcpuAccel.STOP_MEMFAULT:
                self.uc.ctl_set_exits([])
                self._prefix_until = None
        return True

    def step(self) -> str:
        """Execute exactly one instruction, or take the event due first and stop at its handler.

        Returns "instruction", "event", or why nothing ran ("blocked", "idle", "exited")."""
        acc, m = self.accel, self.machine
        if m.exit_requested:
            return "exited"
        if self.state is State.STALLED or self.state is State.SHUTDOWN or self.state is State.STOPPED:
            return "blocked"
        if self.state is not State.RUNNING and m.host.has_work(self):
            self._wake("host work")
        m.host.before_entry(self)
        if not self.wants_to_run():
            return "idle"
        injected = m.counts.get("inject", 0)
        if not self.deliver_pending() or self.state is not State.RUNNING:
            return "blocked"
        if m.counts.get("inject", 0) != injected:
            return "event"
        st = acc.state
        if self._ran_free:
            # Unicorn adds its instruction-count hook without dropping code translated before,
            # which then would not count: translate afresh for single steps.
            self.uc.ctl_flush_tb()
            self._ran_free = False
        for _ in range(3):  # a first visit to a block may only install its exit hooks
            rip = self.reg(X.UC_X86_REG_RIP)
            st.irq_window_end = 0
            st.budget_end = 2**64 - 1
            acc.stop_reason = 0
            self._exit = None
            self._turn_base = acc.retired
            self._stepping = rip
            self._bp_skip = rip  # stepping off a breakpoint runs its instruction
            err = None
            try:
                self.uc.emu_start(rip, 0, 0, 1)
            except UcError as e:
                err = e
            try:
                self._after_stop(err)
            finally:
                self._stepping = None
                if self._bp_skip == rip:
                    self._bp_skip = None
            # A first visit to a block may stop before it only to install exit hooks: then
            # nothing ran and the step is tried again; otherwise the instruction is done.
            if (acc.stop_reason != VcpuAccel.STOP_NEW_BLOCK or self._exit is not None
                    or acc.retired != self._turn_base or self.reg(X.UC_X86_REG_RIP) != rip):
                break
        st.watch_hit = 0  # the step itself ends right after the access
        if self._watch_hit is not None:
            from .debug import DebugStop
            (wid, address), self._watch_hit = self._watch_hit, None
            m.debugger.hit(DebugStop("watchpoint", self.index, self.rip, wid, address))
        return "instruction"

    def _arm_interrupt_window(self, end: int) -> None:
        """If an interrupt (or a host page-ready) waits only for IF=1, have the block hook stop at
        the first block entry where IF is 1, as a CPU takes it right after sti/popf/iret."""
        st = self.accel.state
        waiting = self.pending is None and (
            (self.apic.irr and self.apic.pending_vector() is not None)
            or self.machine.host.wants_interrupt_window(self))
        if waiting:
            st.irq_window_end = end
            st.irq_window_skip = 1 if ucstate.interrupt_shadow(self.uc) else 0
            st.budget_end = 0
        else:
            st.irq_window_end = 0
            st.budget_end = end

    def _precise_retired(self, rip: int) -> int:
        """Instructions retired before the one at `rip` (the block hook counts whole blocks)."""
        acc = self.accel
        addr, size, icount = acc.cur_block
        if addr <= rip < addr + size:
            info = self.machine.decoder.decode(self._block_bytes(addr, size))
            return acc.retired - (icount - info.retired_before(rip - addr))
        return acc.retired

    def _settle(self, rip: int) -> None:
        """Make `retired` exact at a mid-block stop (rip -1: stopped at a block boundary) and
        move machine time forward."""
        acc = self.accel
        if rip != -1:
            acc.retired = self._precise_retired(rip)
        retired = acc.retired
        self.machine.advance(retired - self._turn_base)
        self._turn_base = retired

    def _after_stop(self, err: UcError | None) -> None:
        acc, uc, m = self.accel, self.uc, self.machine
        rip = self.reg(X.UC_X86_REG_RIP)
        reason = acc.stop_reason
        exit_ = self._exit
        if reason in (VcpuAccel.STOP_BUDGET, VcpuAccel.STOP_IRQ_WINDOW) and exit_ is None:
            self._settle(-1)
            if self._watch_hit is not None:
                from .debug import DebugStop
                (wid, address), self._watch_hit = self._watch_hit, None
                m.debugger.hit(DebugStop("watchpoint", self.index, rip, wid, address))
            return
        if reason == VcpuAccel.STOP_WATCH and exit_ is None:
            self._settle(rip)
            if self._watch_hit is not None:
                from .debug import DebugStop
                (wid, address), self._watch_hit = self._watch_hit, None
                m.debugger.hit(DebugStop("watchpoint", self.index, rip, wid, address))
            return
        if reason == VcpuAccel.STOP_NEW_BLOCK and exit_ is None:
            self._settle(-1)
            self._hook_sites()
            return
        if reason == VcpuAccel.STOP_MEMFAULT:
            f = acc.fault
            ucstate.reset_exception_state(uc)
            page = f.va & ~(PAGE - 1)
            if f.access == "fetch":
                self._settle(-1)  # fetches fail before the block hook: nothing of it ran
                if rip & ~(PAGE - 1) != page:
                    crossing = self._first_insn_reaching(rip, page)
                    if crossing != rip:
                        # Unicorn refused the whole block because a later instruction lies on
                        # the missing page: run up to that instruction, then it faults exactly.
                        self._prefix_until = crossing
                        uc.ctl_remove_cache(rip, rip + 1)
                        return
                va = max(rip, page)
            else:
                self._settle(rip)
                va = fault_address(self.reg, self.peek(rip, 16) or b"", rip, page)
            if f.kind == "host":
                m.swapped_fault(self, f.gfn, va, f.access)
            elif f.kind == "guest":
                self.queue_exception(EXC_PF, f.error_code, va)
            elif f.kind == "noncanonical":
                self.queue_exception(EXC_GP, 0)
            else:
                self._bad_access(f.gpa, va)
            return
        if exit_ is not None:
            kind = exit_[0]
            if kind == "intr":
                vector, software, error_code = exit_[1], exit_[2], exit_[3]
                ucstate.reset_exception_state(uc)  # Unicorn bug #1883: or the next one arrives as #DF
                self._settle(rip)
                if software:
                    self._software_interrupt(vector, rip)
                else:
                    self.queue_exception(vector, error_code)
            elif kind == "site":
                self._settle(rip)
                self._emulate(exit_[1], rip)
            elif kind == "syscall":
                self._settle(rip)
                self._syscall(rip)
            elif kind == "debug":
                what, point, address = exit_[1], exit_[2], exit_[3]
                self._settle(rip)
                self._bp_skip = rip
                from .debug import DebugStop
                m.debugger.hit(DebugStop(what, self.index, rip, point, address))
            elif kind == "io-gp":
                self._settle(exit_[1])
                uc.reg_write(X.UC_X86_REG_RIP, exit_[1])
                self.queue_exception(EXC_GP, 0)
            elif kind == "ud":
                self._settle(rip)
                self.queue_exception(EXC_UD)
            elif kind == "debug-exit":
                self._settle(rip)
                m.request_exit((exit_[1] << 1) | 1, f"guest wrote {exit_[1]:#x} to port 0xf4")
            return
        if err is not None:
            self._settle(rip)
            if err.errno == UC_ERR_INSN_INVALID:
                self.queue_exception(EXC_UD)
                return
            self.state = State.SHUTDOWN
            m.request_exit(4, f"vCPU {self.index}: Unicorn stopped: {err}")
            return
        # A plain return: the end of a prefix run, a single step, or the guest executed hlt.
        self._settle(rip)
        if self._prefix_until is not None and rip == self._prefix_until:
            return
        if self._stepping is not None and not (self._stepping == rip - 1 and self._byte_before(rip) == 0xF4):
            return
        if self._byte_before(rip) == 0xF4:
            if_on = bool(self.rflags & RFLAGS_IF)
            m.emit("hlt", self.index, rip=rip - 1, interrupts=if_on)
            self.state = State.IDLE if if_on else State.STOPPED
            return
        self.state = State.SHUTDOWN
        m.request_exit(4, f"vCPU {self.index}: emulation stopped at {rip:#x} for no known reason")

    def _first_insn_reaching(self, rip: int, page: int) -> int:
        """Address of the first instruction from `rip` whose bytes reach `page`."""
        code = self.peek(rip, page - rip) or b""
        end = rip
        for addr, size, _m, _o in self.machine.decoder.cs.disasm_lite(code, rip):
            if addr + size > page:
                break
            end = addr + size
        return end

    def _byte_before(self, rip: int) -> int | None:
        b = self.peek(rip - 1, 1)
        return b[0] if b else None

    def _block_bytes(self, addr: int, size: int) -> bytes:
        return self.peek(addr, size) or b""

    # --- hooks (run inside emu_start: record, stop, act outside) ------------------------------
    def _on_intr(self, uc, intno, _ud) -> None:
        if self.accel.stop_reason == VcpuAccel.STOP_MEMFAULT:
            uc.emu_stop()
            return
        software = ucstate.exception_is_software(uc)
        ec = ucstate.pending_error_code(uc) if intno in ERROR_CODE_VECTORS and not software else None
        self._exit = ("intr", intno, software, ec)
        uc.emu_stop()

    def _on_invalid(self, uc, _ud) -> bool:
        self._exit = ("ud",)
        uc.emu_stop()
        return True

    def _on_site(self, uc, address, size, kind) -> None:
        self._exit = ("site", kind)
        uc.emu_stop()

    def _on_syscall(self, uc, _ud) -> None:
        self._exit = ("syscall",)
        uc.emu_stop()

    def _on_cpuid(self, uc, _ud) -> int:
        leaf = uc.reg_read(X.UC_X86_REG_EAX) & 0xFFFFFFFF
        sub = uc.reg_read(X.UC_X86_REG_ECX) & 0xFFFFFFFF
        m = self.machine
        m.hook_time = self.hook_now(uc)
        try:
            res = m.cpuid(self, leaf, sub)
        finally:
            m.hook_time = None
        if res is None:
            return 0
        for reg, val in zip((X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX), res):
            uc.reg_write(reg, val)
        return 1

    def _io_allowed(self, port: int, size: int) -> bool:
        """CPL <= IOPL, or the TSS I/O bitmap allows every byte (Unicorn's hooks skip the check)."""
        if self.cpl() <= (self.rflags >> 12) & 3:
            return True
        base, limit = self.tables()["tr"]
        raw = self.peek(base + 102, 2)
        if raw is None:
            return False
        off = int.from_bytes(raw, "little")
        first, last = off + port // 8, off + (port + size - 1) // 8
        if last > limit:
            return False
        bits = self.peek(base + first, last - first + 1)
        if bits is None:
            return False
        mask = ((1 << size) - 1) << (port % 8)
        return not int.from_bytes(bits, "little") & mask

    def _io_fault(self, uc) -> bool:
        if self._io_allowed(*self._io_args):
            return False
        self._exit = ("io-gp", uc.reg_read(X.UC_X86_REG_RIP))
        uc.emu_stop()
        return True

    def _on_in(self, uc, port, size, _ud) -> int:
        self._io_args = (port, size)
        if self._io_fault(uc):
            return 0
        m = self.machine
        m.hook_time = self.hook_now(uc)
        try:
            return m.port_in(self, port, size)
        finally:
            m.hook_time = None

    def _on_out(self, uc, port, size, value, _ud) -> None:
        self._io_args = (port, size)
        if self._io_fault(uc):
            return
        m = self.machine
        m.hook_time = self.hook_now(uc)
        try:
            m.port_out(self, port, size, value)
        finally:
            m.hook_time = None

    def hook_now(self, uc) -> int:
        """The exact virtual time of the instruction a hook runs for. Machine time moves only when a
        turn settles, and where it settles depends on pauses (gdb's slices, the UI's ticks): an event
        stamped with it would differ between a paused and an unpaused run."""
        return self.machine.now + self._precise_retired(uc.reg_read(X.UC_X86_REG_RIP)) - self._turn_base

    def stop_with(self, exit_: tuple) -> None:
        """A device ends this vCPU's turn right after the instruction (handled in `_after_run`)."""
        self._exit = exit_
        self.uc.emu_stop()

    def console_byte(self, b: int) -> None:
        """From the port hook: the line's time is that of its last byte (flush_console may run
        later, outside any turn, where hook_now means nothing)."""
        self.console.append(b)
        self._line.append(b)
        self._line_time = self.hook_now(self.uc)
        if b == 0x0A or len(self._line) >= 256:
            self.flush_console()

    def flush_console(self) -> None:
        if self._line:
            self.machine.emit_at(self._line_time, "console", self.index, text=self._line.decode("utf-8", "replace"))
            self._line.clear()

    def _block_miss(self, addr: int, size: int) -> int:
        """C callback on the first entry of a block: its instruction count, or 0 to stop first."""
        info = self.machine.decoder.decode(self._block_bytes(addr, size))
        want = [(addr + off, kind) for off, kind in info.specials if addr + off not in self._hooked_sites]
        if want:
            self._want_sites = want
            self._want_block = (addr, size)
            return 0
        return info.icount or 1

    def _on_breakpoint(self, uc, address, size, bp) -> None:
        if self._bp_skip == address:  # resuming from this very breakpoint: run the instruction
            self._bp_skip = None
            return
        if bp._check is not None and not bp._check(self):
            return
        bp.hits += 1
        self._exit = ("debug", "breakpoint", bp.id, None)
        uc.emu_stop()

    def _on_watch(self, uc, access, address, size, value, wp) -> None:
        # Stopping inside a memory hook leaves Unicorn half-way through the instruction (a call's
        # push done, RIP still on the call): the C instruction hook stops before the next one.
        if self._watch_hit is None:
            wp.hits += 1
            self._watch_hit = (wp.id, address)
        st = self.accel.state
        if self.accel._insn_hook is not None:
            st.watch_hit = 1
        else:  # no instruction hook: the next block entry
            st.irq_window_end = 0
            st.budget_end = 0

    def _on_iretq(self, uc, address, size, _ud) -> None:
        """Before an iretq: if the frame restores RF=1, have the block hook clear it once the
        next block starts (see docs/machine.md)."""
        rsp = self.reg(X.UC_X86_REG_RSP)
        raw = self.peek(rsp + 16, 8)
        if raw is not None and int.from_bytes(raw, "little") & (1 << 16):
            self.accel.state.clear_rf = 1

    def _hook_sites(self) -> None:
        for site, kind in self._want_sites:
            if kind == "iretq":
                self.uc.hook_add(UC_HOOK_CODE, self._on_iretq, None, site, site)
            else:
                self.uc.hook_add(UC_HOOK_CODE, self._on_site, kind, site, site)
            self._hooked_sites.add(site)
        addr, size = self._want_block
        self.uc.ctl_remove_cache(addr, addr + size)
        self._want_sites = []

    # --- emulated instructions ------------------------------------------------------------
    def _advance_rip(self, rip: int, length: int) -> None:
        self.uc.reg_write(X.UC_X86_REG_RIP, rip + length)
        self.accel.retired += 1
        self._turn_base += 1
        self.machine.advance(1)

    def _emulate(self, kind: str, rip: int) -> None:
        uc, m = self.uc, self.machine
        if kind in ("wrmsr", "rdmsr") and self.cpl() != 0:
            self.queue_exception(EXC_GP, 0)
            return
        if kind == "wrmsr":
            idx = uc.reg_read(X.UC_X86_REG_ECX) & 0xFFFFFFFF
            val = ((uc.reg_read(X.UC_X86_REG_EDX) & 0xFFFFFFFF) << 32) | (uc.reg_read(X.UC_X86_REG_EAX) & 0xFFFFFFFF)
            if m.wrmsr(self, idx, val):
                self._advance_rip(rip, 2)
            else:
                self.queue_exception(EXC_GP, 0)
        elif kind == "rdmsr":
            idx = uc.reg_read(X.UC_X86_REG_ECX) & 0xFFFFFFFF
            val = m.rdmsr(self, idx)
            if val is None:
                self.queue_exception(EXC_GP, 0)
                return
            uc.reg_write(X.UC_X86_REG_RAX, val & 0xFFFFFFFF)
            uc.reg_write(X.UC_X86_REG_RDX, (val >> 32) & 0xFFFFFFFF)
            self._advance_rip(rip, 2)
        elif kind in ("rdtsc", "rdtscp"):
            tsc = m.tsc()
            uc.reg_write(X.UC_X86_REG_RAX, tsc & 0xFFFFFFFF)
            uc.reg_write(X.UC_X86_REG_RDX, (tsc >> 32) & 0xFFFFFFFF)
            if kind == "rdtscp":
                uc.reg_write(X.UC_X86_REG_RCX, uc.msr_read(0xC0000103) & 0xFFFFFFFF)  # TSC_AUX
            self._advance_rip(rip, 2 if kind == "rdtsc" else 3)
        elif kind in ("rdrand", "rdseed"):
            insn = self.peek(rip, 15) or b""
            length, reg, width = _rdrand_target(insn)
            if reg is None:
                self.queue_exception(EXC_UD)
                return
            uc.reg_write(reg, m.random_u64() & ((1 << (8 * width)) - 1))
            uc.reg_write(X.UC_X86_REG_RFLAGS, (self.rflags & ~0x8D5) | 1)  # CF=1: a value is ready
            self._advance_rip(rip, length)

    def _syscall(self, rip_after: int) -> None:
        """SYSCALL as the architecture defines it (Unicorn only moves RIP)."""
        uc = self.uc
        efer = uc.msr_read(0xC0000080)
        rip = rip_after - 2
        if not efer & 1:  # EFER.SCE
            uc.reg_write(X.UC_X86_REG_RIP, rip)
            self.accel.retired -= 1
            self.machine.advance(-1)
            self._turn_base -= 1
            self.queue_exception(EXC_UD)
            return
        star, lstar, fmask = uc.msr_read(0xC0000081), uc.msr_read(0xC0000082), uc.msr_read(0xC0000084)
        rflags = self.rflags
        uc.reg_write(X.UC_X86_REG_RCX, rip_after)
        uc.reg_write(X.UC_X86_REG_R11, rflags & ~(1 << 16))
        cs = (star >> 32) & 0xFFFC
        ucstate.load_code_and_stack(uc, cs, boot.DESC_KERNEL_CODE, cs + 8, boot.DESC_KERNEL_DATA)
        uc.reg_write(X.UC_X86_REG_RFLAGS, (rflags & ~fmask & ~(1 << 16)) | 2)
        uc.reg_write(X.UC_X86_REG_RIP, lstar)


def _rdrand_target(insn: bytes):
    """(length, unicorn register, operand bytes) of an `rdrand/rdseed reg` encoding, or (0, None, 0)."""
    i, rex, opsize = 0, 0, 4
    while i < len(insn) and insn[i] in (0x66, 0xF3, 0xF2):
        if insn[i] == 0x66:
            opsize = 2
        i += 1
    if i < len(insn) and 0x40 <= insn[i] <= 0x4F:
        rex = insn[i]
        i += 1
    if rex & 8:
        opsize = 8
    if insn[i:i + 2] != b"\x0f\xc7" or len(insn) < i + 3:
        return 0, None, 0
    modrm = insn[i + 2]
    if modrm >> 6 != 3:
        return 0, None, 0
    num = (modrm & 7) | ((rex & 1) << 3)
    regs = [X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RBX,
            X.UC_X86_REG_RSP, X.UC_X86_REG_RBP, X.UC_X86_REG_RSI, X.UC_X86_REG_RDI,
            X.UC_X86_REG_R8, X.UC_X86_REG_R9, X.UC_X86_REG_R10, X.UC_X86_REG_R11,
            X.UC_X86_REG_R12, X.UC_X86_REG_R13, X.UC_X86_REG_R14, X.UC_X86_REG_R15]
    reg = regs[num]
    if opsize == 2:  # a 16-bit write must keep the upper bits: not worth modelling, refuse
        return 0, None, 0
    return i + 3, reg, opsize

