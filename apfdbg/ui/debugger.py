"""The app's step-through debugging commands (a mixin of ApfApp): stepping, run to cursor,
scheduler-locking, breakpoints / watchpoints / catchpoints, register edits, the guest memory address.

Every command goes to the engine (queued for its thread); what it did comes back as the snapshot's
`message`, which `_check_replies` turns into a notification (a warning when the engine refused), so the
answer is the engine's own words.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable

from ..engine import EDITABLE_REGS, Snapshot
from .dialogs import PromptScreen, parse_number

POINT_HINT = """\
pf_handler · trap.c:107 · pf_handler+0x10 · 0x1027e0   [vcpu N | vcpu all] [if cr2 == 0x1000]
watch | rwatch | awatch ADDRESS [SIZE]      write / read / any access of SIZE bytes (8)
catch apf [not-present | ready] [token=0x1] [gfn=0x802] · catch msr [kvm_asyncpf_en]
catch gp · catch pf · catch halt · catch triple-fault · catch event KIND [field=value]"""
CATCH_FORMS = ("catch apf not-present", "catch apf ready", "catch msr kvm_asyncpf_en", "catch gp", "catch pf",
               "catch halt", "catch triple-fault", "catch event ", "watch ", "rwatch ", "awatch ")
MEM_HINT = """\
reason: the vCPU's async-PF reason area (guest-physical) · rsp, rip, cr2: follow a register
a symbol · apf_reason_area + 64 · rsp - 0x40 · u64(rsp): the qword at rsp · phys 0x1000"""
REG_HINT = "0x1f or 31; bare digits with a-f are hex (1bfef8); the value is written at once."
#: a debugger stop names the vCPU it happened on: the UI selects it (as gdb switches thread)
STOP_VCPU = re.compile(r"^(?:(?:breakpoint|watchpoint|catchpoint)\b.*?(?:\bon|\bby|,) vCPU (\d+)|vCPU (\d+)\b)")
REPLY_TIMEOUT = 5.0


@dataclass
class Reply:
    """A command whose answer we wait for: the first message after `after` commands that `judge` knows
    ("info" or "warning"; None: not this command's)."""
    after: int
    judge: Callable[[str], str | None]
    sent: float


class DebugActions:
    """Mixed into ApfApp (uses its engine, snap, vcpu, panel(), poll(), notify())."""

    _replies: list[Reply]
    _followed: tuple | None = None
    _mem_tried: str | None = None

    # --- answers ----------------------------------------------------------------------------------
    def _await_reply(self, judge: Callable[[str], str | None]) -> None:
        if not hasattr(self, "_replies"):
            self._replies = []
        self._replies.append(Reply(self.engine.latest.commands, judge, time.monotonic()))

    def _check_replies(self, snap: Snapshot) -> None:
        pending = getattr(self, "_replies", None)
        if not pending:
            return
        now = time.monotonic()
        for r in list(pending):
            verdict = r.judge(snap.message) if snap.commands > r.after else None
            if verdict is not None:
                pending.remove(r)
                self.notify(snap.message, severity="warning" if verdict == "warning" else "information",
                            timeout=8 if verdict == "warning" else 5)
            elif now - r.sent > REPLY_TIMEOUT:
                pending.remove(r)

    def _follow_stop(self, snap: Snapshot) -> None:
        """A new debugger stop on another vCPU: select that vCPU."""
        if snap.running or not snap.stop_reason:
            return
        key = (snap.time, snap.stop_reason)      # not the command count: a dialog's command is no stop
        if key == self._followed:
            return
        self._followed = key
        m = STOP_VCPU.match(snap.stop_reason)
        if m:
            v = int(m.group(1) or m.group(2))
            if v < len(snap.vcpus):
                self.vcpu = v

    def _sent(self) -> None:
        self._expect_change()
        self.poll()

    # --- stepping (the engine runs stepping commands at full speed, whatever the pace) ----------
    def _step(self, mode: str) -> None:
        if self.gdb_drives():
            return
        self.engine.pause()
        self.engine.step(self.vcpu, mode)
        self._sent()

    def action_step_over(self) -> None:
        self._step("over")

    def action_step_out(self) -> None:
        self._step("out")

    def action_step_line(self) -> None:
        self._step("line")

    def action_step_line_over(self) -> None:
        self._step("line_over")

    def action_run_to_cursor(self) -> None:
        if self.gdb_drives():
            return
        addr = self.selected_code_addr("g runs the selected vCPU to it")
        if addr is None:
            return
        self.engine.pause()
        self.engine.run_to_cursor(self.vcpu, addr)
        self._sent()

    def action_toggle_lock(self) -> None:
        frozen = not self.engine.latest.lock
        self._await_reply(lambda m: "info" if m.startswith(("stepping freezes", "the other vCPUs run")) else None)
        self.engine.set_lock(frozen)
        self._sent()

    # --- breakpoints, watchpoints, catchpoints -----------------------------------------------------
    def action_add_point(self) -> None:
        self.action_focus_panel("points")

        def done(text: str | None) -> None:
            if not text:
                return
            self._await_reply(lambda m: "warning" if m.startswith("not set:") else
                              "info" if m.startswith(("breakpoint ", "watchpoint ", "catchpoint ")) else None)
            self.engine.add_point(text)
            self._sent()
        self.push_screen(PromptScreen("Add a breakpoint, watchpoint or catchpoint (every vCPU unless 'vcpu N')",
                                      POINT_HINT, suggestions=self._point_suggestions(), check=self._check_point),
                         done)

    def _check_point(self, text: str) -> str:
        from ..debug.points import PointError, parse_point
        try:
            parse_point(text, self.engine.image, len(self.snap.vcpus) if self.snap else 1)
        except PointError as e:
            return str(e)
        return ""

    def _point_suggestions(self) -> list[str]:
        img = self.engine.image
        funcs = [s.name for s in img.symbols if s.addr >= 0x1000 and s.kind in ("func", "notype")]
        return list(CATCH_FORMS) + sorted(funcs)

    def action_remove_point(self) -> None:
        pts = self.panel("points")
        if self.focused_panel() is not pts:
            self.notify("Delete removes the point selected in the Breakpoints panel: focus it first (B, Escape).",
                        severity="warning")
            return
        p = pts.selected_point()
        if p is None:
            self.notify("No breakpoints to delete (B adds one).", severity="warning")
            return
        self._await_reply(lambda m: "info" if m.startswith("deleted point") else
                          "warning" if m.startswith("no point") else None)
        self.engine.remove_point(p.id)
        self._sent()

    # --- registers ----------------------------------------------------------------------------------
    def action_edit_register(self) -> None:
        regs = self.panel("regs")
        if self.focused_panel() is not regs:
            self.action_focus_panel("regs")
            self.notify("Select a register with the arrows, then Enter edits it.")
            return
        if self.snap is not None and self.snap.running:
            self.notify("Pause first (space): the registers change under a running guest.", severity="warning")
            return
        name, vcpu = regs.selected, self.vcpu
        cur = regs.value(name)
        judge = self._register_judge(name, vcpu)
        if name not in EDITABLE_REGS:      # the engine says why it will not (and writes nothing)
            self._await_reply(judge)
            self.engine.set_register(vcpu, name, cur or 0)
            self._sent()
            return

        def check(text: str) -> str:
            try:
                parse_number(text)
            except ValueError as e:
                return str(e)
            return ""

        def done(text: str | None) -> None:
            if text is None:
                return
            self._await_reply(judge)
            self.engine.set_register(vcpu, name, parse_number(text))
            self._sent()
        self.push_screen(PromptScreen(f"vCPU {vcpu}: set {name}", REG_HINT, f"{cur or 0:#x}", check=check), done)

    @staticmethod
    def _register_judge(name: str, vcpu: int) -> Callable[[str], str | None]:
        def judge(m: str) -> str | None:
            if m.startswith(f"vCPU {vcpu}: {name.lower()} = "):
                return "info"
            if m.startswith(f"{name} is read-only"):
                return "warning"
            return None
        return judge

    # --- guest memory ---------------------------------------------------------------------------------
    def action_memory_address(self) -> None:
        self.action_focus_panel("gmem")
        snap = self.snap
        mv = snap.memory[self.vcpu] if snap is not None and self.vcpu < len(snap.memory) else None
        value = self._mem_tried or (mv.expr if mv is not None else "reason")
        img = self.engine.image
        data = [s.name for s in img.symbols if s.addr >= 0x1000 and s.kind == "object"]
        sym = "apf_reason_area" if img.symbol("apf_reason_area") else (data[0] if data else None)
        presets = ["reason", "rsp", "rip", "cr2"] + ([sym] if sym else [])

        def done(text: str | None) -> None:
            if text is None:
                return
            want = f"memory view: {text or 'reason'}"

            def judge(m: str) -> str | None:
                if not m.startswith("memory view: "):
                    return None
                self._mem_tried = None if m == want else text
                return "info" if m == want else "warning"
            self._await_reply(judge)
            self.engine.set_memory_view(text)
            self._sent()
        self.push_screen(PromptScreen("Guest memory: address expression (re-evaluated at every stop)", MEM_HINT,
                                      value, suggestions=presets + sorted(s.name for s in img.symbols
                                                                          if s.addr >= 0x1000),
                                      presets=presets), done)
