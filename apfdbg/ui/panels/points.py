"""Breakpoints: every breakpoint, watchpoint and catchpoint (apfdbg.debug.points syntax), one row each: id,
kind, what, vCPU, hits, condition; the one the run stopped at marked, hit counts that grew since the
previous pause highlighted.  B adds one, Delete removes the selected one."""
from __future__ import annotations

import re

from ..base import Panel, Row, ViewCtx

KIND_MARK = {"break": "●", "watch": "◆", "catch": "◎"}
STOPPED_AT = re.compile(r"^(?:breakpoint|watchpoint|catchpoint) (\d+)\b")


class PointsPanel(Panel):
    PANEL_ID = "points"
    TITLE = "Breakpoints"
    KEY = "B add · del delete"
    SELECTABLE = True
    TIER = 2
    EMPTY_HINT = ("No breakpoints. B adds one: pf_handler · trap.c:107 if cr2 == 1 · pf_handler vcpu 1 · "
                  "watch apf_reason_area 4 · rwatch 0x1000 · catch apf not-present token=0x1 · "
                  "catch apf ready · catch msr kvm_asyncpf_en · catch gp · catch halt · catch triple-fault")

    def __init__(self) -> None:
        super().__init__()
        self._points: tuple = ()
        self._old: dict[int, int] = {}
        self._stopped: int | None = None
        self.follow = False            # the cursor stays where it is as points come and go

    def update_ctx(self, ctx: ViewCtx) -> None:
        self.ctx = ctx
        snap = ctx.snap
        self._points = snap.points
        self._old = {p.id: p.hits for p in ctx.base.points}
        m = STOPPED_AT.match(snap.stop_reason) if not snap.running else None
        stopped = int(m.group(1)) if m else None
        self.set_rows(len(self._points))
        if stopped is not None and stopped != self._stopped:     # a new stop: select its point
            row = next((i for i, p in enumerate(self._points) if p.id == stopped), None)
            if row is not None:
                self.move_cursor(row)
        self._stopped = stopped

    def selected_point(self):
        if self.cursor is None or self.cursor >= len(self._points):
            return None
        return self._points[self.cursor]

    def header(self, width: int) -> list[Row]:
        if not self._points:
            return []
        r = Row("  ")
        r.cell("#", 4, self.st("head"))
        r.cell("kind", 6, self.st("head"))
        r.cell("what", self._label_width(width), self.st("head"))
        r.cell("vCPU", 5, self.st("head"))
        r.cell("hits", 5, self.st("head"), right=True)
        r.add("  condition / address", self.st("head"))
        return [r]

    @staticmethod
    def _label_width(width: int) -> int:
        return max(12, min(34, width - 38))

    def row_key(self, i: int):
        p = self._points[i]
        return (p, self._old.get(p.id), p.id == self._stopped)

    def render_row(self, i: int, width: int) -> Row:
        p = self._points[i]
        stopped = p.id == self._stopped
        r = Row("▶ " if stopped else "  ", self.st("accent"))
        r.cell(f"{KIND_MARK.get(p.kind, ' ')}{p.id}", 4, self.st("bad"))
        r.cell(p.kind, 6, self.st("dim"))
        r.cell(p.label, self._label_width(width) - 1, self.st("accent") if stopped else None)
        r.add(" ")
        r.cell("all" if p.vcpu is None else str(p.vcpu), 5)
        old = self._old.get(p.id, 0)
        r.cell(str(p.hits), 5, self.st("changed") if p.hits != old else (self.st("dim") if not p.hits else None),
               right=True)
        if p.condition:
            r.add(f"  if {p.condition}", self.st("warn"))
        elif p.addr is not None and not p.label.startswith("0x"):
            r.add(f"  {p.addr:#x}", self.st("dim"))
        return r
