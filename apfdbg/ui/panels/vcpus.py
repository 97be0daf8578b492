"""vCPUs: state, RIP with symbol, CPL, IF, CR2, MSR_KVM_ASYNC_PF_EN decoded, queued, retired, task."""
from __future__ import annotations

from rich.text import Text

from ..base import Panel, ViewCtx, cell
from ..fmt import STATE_LABELS, apf_fields, num, short

_STATE_STYLE = {"running": "good", "apf-halted": "warn", "stalled": "bad", "idle": "dim", "stopped": "bad",
                "shutdown": "bad"}
WIDE = 128


class VcpuPanel(Panel):
    PANEL_ID = "vcpus"
    TITLE = "vCPUs"
    KEY = "1"
    EMPTY_HINT = "No vCPUs: the machine has not been built."

    def update_ctx(self, ctx: ViewCtx) -> None:
        self.ctx = ctx
        self.set_rows(len(ctx.snap.vcpus) * self._lines_per_vcpu())

    def _lines_per_vcpu(self) -> int:
        return 1 if self.scrollable_content_region.width >= WIDE else 2

    def on_resize(self) -> None:
        if self.ctx is not None:
            self.rows = len(self.ctx.snap.vcpus) * self._lines_per_vcpu()
        super().on_resize()

    def header(self, width: int) -> list[Text]:
        h = self.st("head")
        if width >= WIDE:
            t = Text()
            for txt, w, right in (("  #", 4, False), ("state", 16, False), ("RIP", 26, False), ("CPL", 4, False),
                                  ("IF", 3, False), ("CR2", 12, False), ("MSR_KVM_ASYNC_PF_EN", 40, False),
                                  ("queued", 7, True), ("retired", 14, True), ("  task", 14, False),
                                  ("pending", 8, False)):
                t.append(cell(txt, w, h, right))
            return [t]
        return []

    def render_row(self, i: int, width: int) -> Text:
        ctx = self.ctx
        lines = self._lines_per_vcpu()
        vi, part = divmod(i, lines)
        snap = ctx.snap
        v = snap.vcpus[vi]
        apf = snap.apf[vi]
        b = ctx.base.vcpus[vi] if vi < len(ctx.base.vcpus) else v
        bapf = ctx.base.apf[vi] if vi < len(ctx.base.apf) else apf
        ch = self.st("changed")

        def c(text: str, w: int, changed: bool, style=None, right=False) -> Text:
            st = style
            if changed:
                st = (style + ch) if style is not None else ch
            return cell(text, w, st, right)

        sel = vi == ctx.vcpu
        mark = Text("▶ " if sel else "  ", style=self.st("accent"))
        state = STATE_LABELS.get(v.state, v.state)
        if v.state == "stalled" and v.stall_gfn is not None:
            state = f"stalled on {v.stall_gfn:#x}"
        sstyle = self.st(_STATE_STYLE.get(v.state, "dim"))
        where = v.where if v.where.startswith("0x") else f"{v.where}"
        msr = apf.msr_val
        msr_txt = Text(f"{msr:#x}")
        if msr:
            msr_txt.append(" ")
            for k, val, note in apf_fields(msr, snap.profile):
                if k == "rsvd" and val == "0x0":
                    continue
                msr_txt.append(f"{k}={val} ", style=self.st("warn") if note else self.st("dim"))
        else:
            msr_txt.append(" (APF off)", style=self.st("dim"))
        if msr != bapf.msr_val:
            msr_txt.stylize(ch)
        task = v.task or "-"
        if width >= WIDE:
            t = Text()
            t.append(mark)
            t.append(cell(f"{vi:<2d}", 2, self.st("accent") if sel else None))
            t.append(c(state, 16, v.state != b.state, sstyle))
            t.append(c(where, 26, v.rip != b.rip))
            t.append(c(str(v.cpl), 4, v.cpl != b.cpl))
            t.append(c("1" if v.interrupts else "0", 3, v.interrupts != b.interrupts,
                       None if v.interrupts else self.st("warn")))
            t.append(c(f"{v.cr2:#x}", 12, v.cr2 != b.cr2))
            msr_txt.truncate(39, pad=True)
            t.append(msr_txt)
            t.append(" ")
            t.append(c(str(apf.queued), 7, apf.queued != bapf.queued, right=True))
            t.append(c(num(v.retired), 14, v.retired != b.retired, right=True))
            t.append("  ")
            t.append(c(task, 12, v.task != b.task))
            t.append(c(v.pending, 8, v.pending != b.pending, self.st("warn")))
            return t
        t = Text()
        if part == 0:
            t.append(mark)
            t.append(cell(f"{vi}", 2, self.st("accent") if sel else None))
            t.append(c(state, 16, v.state != b.state, sstyle))
            t.append(" ")
            t.append(c(where, max(8, width - 50), v.rip != b.rip))
            t.append(" CPL")
            t.append(c(str(v.cpl), 2, v.cpl != b.cpl))
            t.append("IF")
            t.append(c("1" if v.interrupts else "0", 2, v.interrupts != b.interrupts,
                       None if v.interrupts else self.st("warn")))
            t.append("CR2 ")
            t.append(c(f"{v.cr2:#x}", 11, v.cr2 != b.cr2))
            t.append(c(task, 12, v.task != b.task, self.st("accent")))
            return t
        t.append("    ")
        t.append(Text("msr ", style=self.st("dim")))
        t.append(msr_txt)
        t.append(Text(" queued ", style=self.st("dim")))
        t.append(c(str(apf.queued), 3, apf.queued != bapf.queued))
        t.append(Text(" retired ", style=self.st("dim")))
        t.append(c(short(v.retired), 8, v.retired != b.retired))
        if v.pending:
            t.append(Text(" pending ", style=self.st("dim")))
            t.append(c(v.pending, 6, v.pending != b.pending, self.st("warn")))
        return t
