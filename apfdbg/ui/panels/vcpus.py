"""vCPUs: state, RIP with symbol, CPL, IF, CR2, MSR_KVM_ASYNC_PF_EN decoded, queued, retired, task."""
from __future__ import annotations

from ..base import Panel, Row, ViewCtx
from ..fmt import STATE_LABELS, apf_fields, num, short

_STATE_STYLE = {"running": "good", "apf-halted": "warn", "stalled": "bad", "idle": "dim", "stopped": "bad",
                "shutdown": "bad"}
WIDE = 140
COLUMNS = (("  #", 4, False), ("state", 19, False), ("RIP", 25, False), ("CPL", 4, False), ("IF", 3, False),
           ("CR2", 12, False), ("MSR_KVM_ASYNC_PF_EN", 36, False), ("queued", 7, True), ("retired", 12, True),
           ("  task", 14, False), ("pending", 8, False))


class VcpuPanel(Panel):
    PANEL_ID = "vcpus"
    TITLE = "vCPUs"
    KEY = "1"
    TIER = 0
    EMPTY_HINT = "No vCPUs: the machine has not been built."
    _lpv = 2

    def update_ctx(self, ctx: ViewCtx) -> None:
        self.ctx = ctx
        self._lpv = 1 if self.content_width() >= WIDE else 2
        self.set_rows(len(ctx.snap.vcpus) * self._lpv)

    def relayout(self) -> None:
        lpv = 1 if self.content_width() >= WIDE else 2
        if lpv != self._lpv:
            self._lpv = lpv
            self.rows = len(self.ctx.snap.vcpus) * lpv
            self.refresh(layout=True)

    def get_content_height(self, container, viewport, width: int) -> int:
        n = len(self.ctx.snap.vcpus) if self.ctx is not None else 2
        return n * (1 if width >= WIDE else 2) + (1 if width >= WIDE else 0)

    def header(self, width: int) -> list[Row]:
        if self._lpv != 1:
            return []
        r = Row()
        for txt, w, right in COLUMNS:
            r.cell(txt, w, self.st("head"), right)
        return [r]

    def row_key(self, i: int):
        ctx = self.ctx
        vi, part = divmod(i, self._lpv)
        snap, base = ctx.snap, ctx.base
        if vi >= len(snap.vcpus):
            return ("none", i)
        b = base.vcpus[vi] if vi < len(base.vcpus) else None
        ba = base.apf[vi] if vi < len(base.apf) else None
        a = snap.apf[vi]
        return (vi, part, self._lpv, snap.vcpus[vi], a.msr_val, a.queued, b, ba and ba.msr_val, ba and ba.queued,
                vi == ctx.vcpu)

    def render_row(self, i: int, width: int) -> Row:
        ctx = self.ctx
        vi, part = divmod(i, self._lpv)
        snap = ctx.snap
        if vi >= len(snap.vcpus):
            return Row()
        v, apf = snap.vcpus[vi], snap.apf[vi]
        b = ctx.base.vcpus[vi] if vi < len(ctx.base.vcpus) else v
        bapf = ctx.base.apf[vi] if vi < len(ctx.base.apf) else apf
        ch = self.st("changed")

        def c(r: Row, text: str, w: int, changed: bool, style=None, right=False) -> None:
            if changed:
                style = ch if style is None else style + ch
            r.cell(text, w, style, right)

        sel = vi == ctx.vcpu
        state = STATE_LABELS.get(v.state, v.state)
        if v.state == "stalled" and v.stall_gfn is not None:
            state = f"stalled on {v.stall_gfn:#x}"
        sstyle = self.st(_STATE_STYLE.get(v.state, "dim"))
        msr = apf.msr_val
        msr_changed = msr != bapf.msr_val
        fields = [] if not msr else [(k, val, note) for k, val, note in apf_fields(msr, snap.profile)
                                     if not (k == "rsvd" and not note)]
        task = v.task or "-"
        r = Row()
        if self._lpv == 1:
            r.add("▶ " if sel else "  ", self.st("accent"))
            r.cell(f"{vi:<2d}", 2, self.st("accent") if sel else None)
            c(r, state, 18, v.state != b.state, sstyle)
            r.add(" ")
            c(r, v.where, 24, v.rip != b.rip)
            r.add(" ")
            c(r, str(v.cpl), 4, v.cpl != b.cpl)
            c(r, "1" if v.interrupts else "0", 3, v.interrupts != b.interrupts,
              None if v.interrupts else self.st("warn"))
            c(r, f"{v.cr2:#x}", 12, v.cr2 != b.cr2)
            m = Row()
            m.add(f"{msr:#x}", ch if msr_changed else None)
            if msr:
                for k, val, note in fields:
                    m.add(f" {k}={val}", self.st("warn") if note else self.st("dim"))
            else:
                m.add(" (APF off)", self.st("dim"))
            r.extend(m)
            if m.n < 36:
                r.add(" " * (36 - m.n))
            c(r, str(apf.queued), 7, apf.queued != bapf.queued, right=True)
            c(r, num(v.retired), 12, v.retired != b.retired, right=True)
            r.add("  ")
            c(r, task, 12, v.task != b.task, self.st("accent"))
            c(r, v.pending, 8, v.pending != b.pending, self.st("warn"))
            return r
        if part == 0:
            r.add("▶ " if sel else "  ", self.st("accent"))
            r.cell(f"{vi}", 2, self.st("accent") if sel else None)
            c(r, state, 18, v.state != b.state, sstyle)
            r.add(" ")
            c(r, v.where, max(8, width - 47), v.rip != b.rip)
            r.add(" CPL")
            c(r, str(v.cpl), 2, v.cpl != b.cpl)
            r.add("IF")
            c(r, "1" if v.interrupts else "0", 2, v.interrupts != b.interrupts,
              None if v.interrupts else self.st("warn"))
            r.add("CR2 ")
            c(r, f"{v.cr2:#x}", 10, v.cr2 != b.cr2)
            return r
        r.add("    ")
        r.add("msr ", self.st("dim"))
        r.add(f"{msr:#x}", ch if msr_changed else None)
        if msr:
            for k, val, note in fields:
                if k != "GPA":
                    r.add(f" {k}={val}", self.st("warn") if note else self.st("dim"))
        else:
            r.add(" (off)", self.st("dim"))
        r.add(" q ", self.st("dim"))
        c(r, str(apf.queued), 2, apf.queued != bapf.queued)
        r.add(" ret ", self.st("dim"))
        c(r, short(v.retired), 7, v.retired != b.retired)
        r.add(" task ", self.st("dim"))
        c(r, task, 10, v.task != b.task, self.st("accent"))
        if v.pending:
            r.add(" pend ", self.st("dim"))
            c(r, v.pending, 4, v.pending != b.pending, self.st("warn"))
        return r
