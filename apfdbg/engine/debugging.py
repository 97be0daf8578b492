"""Debugger commands on the engine: points, register edits, the memory view, and the stepping
commands (apfdbg.debug.stepping), run in slices by the engine loop."""
from __future__ import annotations

from ..debug.debuginfo import line_table
from ..debug.points import PointError, parse_point, set_point
from ..debug.stepping import Interrupted, StepError, Stepper
from ..machine.debug import REGS
from ..scenario import ScenarioError

#: registers the TUI may edit (the others would need the machine to re-derive state it caches)
EDITABLE_REGS = frozenset(("rax rbx rcx rdx rsi rdi rbp rsp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags cr2 "
                           "fs_base gs_base").split())
STEP_MODES = ("into", "over", "out", "line", "line_over")


class DebugCommands:
    """Engine methods (a mixin) for the debugger."""

    def toggle_breakpoint(self, addr: int) -> None:
        """Queue: remove the breakpoints at `addr`, or add one there on every vCPU."""
        def go() -> None:
            dbg = self.debugger
            ids = [bp.id for bp in dbg.breakpoints.values() if bp.addr == addr]
            for i in ids:
                dbg.remove(i)
            if ids:
                self.message = f"removed the breakpoint at {self.image.describe(addr)} ({addr:#x})"
            else:
                bp = dbg.add_breakpoint(addr)
                self.message = f"breakpoint {bp.id} at {self.image.describe(addr)} ({addr:#x}), every vCPU"
        self.command(go)

    def add_point(self, text: str, vcpu: int | None = None) -> None:
        """Queue: a breakpoint, watchpoint or catchpoint in the syntax of apfdbg.debug.points (`vcpu`: the
        default when the text names none). The message says what was set, or what is wrong."""
        def go() -> None:
            try:
                spec = parse_point(text, self.image, len(self.machine.vcpus), vcpu)
            except PointError as e:
                self.message = f"not set: {e}"
                return
            self.message = self._set_point(spec)
        self.command(go)

    def _set_point(self, spec) -> str:
        return set_point(self.debugger, spec, self.image)

    def _initial_points(self, texts: list[str]) -> None:
        for text in texts:
            try:
                self._set_point(parse_point(text, self.image, len(self.machine.vcpus)))
            except PointError as e:
                raise ScenarioError(f"debug.points: {e}") from None
        err = self.views._mem_check(self.mem_expr)
        if err:
            raise ScenarioError(f"debug.memory: {err}")

    def _symbol_value(self, name: str) -> int | None:
        sym = self.image.symbol(name)
        return sym.addr if sym is not None else None

    def remove_point(self, point_id: int) -> None:
        def go() -> None:
            ok = self.debugger.remove(point_id)
            self.message = f"deleted point {point_id}" if ok else f"no point {point_id}"
        self.command(go)

    def set_lock(self, frozen: bool) -> None:
        """Whether stepping commands freeze the other vCPUs (the default) or let them run."""
        def go() -> None:
            self.lock = frozen
            self.message = ("stepping freezes the other vCPUs" if frozen
                            else "the other vCPUs run while one steps")
        self.command(go)

    def set_register(self, vcpu: int, name: str, value: int) -> None:
        """Queue: write a register of a stopped vCPU (general registers, rip, rflags, cr2, fs/gs base)."""
        def go() -> None:
            reg = name.lower()
            if reg not in EDITABLE_REGS:
                self.message = (f"{name} is read-only here: the machine derives state from it (page tables, "
                                "segment caches); change it from the guest")
                return
            v = self.machine.vcpus[vcpu]
            val = value & (2**64 - 1)
            if reg == "rflags":
                val = (val & 0x3F7FD5) | 0x2   # reserved bits as the CPU keeps them
            if reg == "rip":
                v.uc.ctl_remove_cache(val, val + 1)
            v.set_reg(REGS[reg], val)
            self.message = f"vCPU {vcpu}: {reg} = {val:#x}"
        self.command(go)

    def set_memory_view(self, expr: str) -> None:
        """What the memory panel shows: an expression over registers and symbols (`rsp`,
        `apf_reason_area + 64`, `u64(rsp)`), `reason` (the vCPU's reason area, guest-physical) or
        `phys 0x1000` (guest-physical), re-evaluated at every snapshot (so `rsp` follows RSP)."""
        def go() -> None:
            text = expr.strip() or "reason"
            err = self.views._mem_check(text)
            if err:
                self.message = f"memory view: {err}"
                return
            self.mem_expr = text
            self.message = f"memory view: {text}"
        self.command(go)

    def step(self, vcpu: int, mode: str = "into") -> None:
        """Step `vcpu`: "into" (one instruction), "over" (calls and int run through), "out" (to the
        return of the current function or handler), "line" / "line_over" (to the next source line)."""
        if mode == "into":
            self.step_instruction(vcpu)
            return
        if mode not in STEP_MODES:
            raise ValueError(f"step mode {mode!r}: one of {', '.join(STEP_MODES)}")
        self._start_task(vcpu, mode, None)

    def run_to_cursor(self, vcpu: int, addr: int) -> None:
        """Run until `vcpu` reaches `addr` (other stops win), then pause."""
        self._start_task(vcpu, "to", addr)

    def _start_task(self, vcpu: int, mode: str, addr: int | None) -> None:
        self.command(lambda: self._begin_task(vcpu, mode, addr))
        self._drive_sync()

    def _begin_task(self, vcpu: int, mode: str, addr: int | None) -> None:
        """Engine thread: make a stepping command the one in progress and set the engine running."""
        m = self.machine
        if m.exit_requested:
            self.message = self.stop_reason
            return
        self._cancel_task()
        self._break = None
        self._step_events = 0
        st = Stepper(m, vcpu, lock=self.lock, describe=self.image.describe, lines=line_table(self.image),
                     limit=self._task_limit)
        gen = {"into": st.into, "over": st.over, "out": st.out, "line": lambda: st.line(False),
               "line_over": lambda: st.line(True)}.get(mode)
        self._task = gen() if gen else st.to(addr)
        names = {"into": "step (waiting for the vCPU to run)", "over": "step over", "out": "step out",
                 "line": "source step", "line_over": "source next", "to": f"run to {self.image.describe(addr or 0)}"}
        self._task_note = f"{names[mode]} on vCPU {vcpu}" + (" (others frozen)" if self.lock else "")
        self._task_vcpu = vcpu
        self.stop_reason = ""
        self.message = self._task_note
        self._running.set()

    def _task_limit(self) -> int | None:
        return self._sync_limit if self._thread is None and not self.external else None

    def _cancel_task(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.close()   # its temporary breakpoints go

    def _advance_task(self) -> None:
        """Engine thread: run the stepping command until it yields (a UI slice) or ends."""
        m = self.machine
        self._in_step = True
        try:
            next(self._task)
            return
        except StopIteration as e:
            self._task = None
            why = f"vCPU {self._task_vcpu}: {e.value}"
            self._stop_run(why)
            self.message = why
        except Interrupted:
            self._task = None
            if m.debug_stop is None and not m.exit_requested:
                self._stop_run(f"{self._task_note}: interrupted")
        except StepError as e:
            self._task = None
            why = f"{self._task_note}: {e}"
            self._stop_run(why)
            self.message = why
        finally:
            self._in_step = False

