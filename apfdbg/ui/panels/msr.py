"""MSR accesses: every RDMSR/WRMSR with time, vCPU, MSR, value decoded field by field, result."""
from __future__ import annotations

from ..base import EventListPanel, Row
from ..fmt import MSR_APF, apf_fields, msr_name


class MsrPanel(EventListPanel):
    PANEL_ID = "msr"
    TITLE = "MSR accesses"
    KEY = "2"
    SELECTABLE = True
    EMPTY_HINT = ("No RDMSR/WRMSR yet. A paravirtual guest turns async page faults on by writing "
                  "its 64-byte area's address | 1 to MSR_KVM_ASYNC_PF_EN (0x4b564d02) on each vCPU. "
                  "Run the guest (space) or step it (.).")
    KINDS = ("msr_read", "msr_write")

    def selected_seq(self) -> int | None:
        return self._seqs[self.cursor] if self.cursor is not None and self.cursor < len(self._seqs) else None

    def cursor_moved(self) -> None:
        self.app.explain_seq(self.selected_seq())

    def header(self, width: int) -> list[Row]:
        r = Row()
        for txt, w, right in (("time", 11, True), (" cpu", 5, False), ("op", 3, False), ("MSR", 16, False),
                              ("value", 11, False), ("fields, result", 40, False)):
            r.cell(txt, w, self.st("head"), right)
        return [r]

    def row_key(self, i: int):
        seq = self._seqs[i]
        return (seq, seq >= self.ctx.base.event_count)

    def render_row(self, i: int, width: int) -> Row:
        ctx = self.ctx
        seq = self._seqs[i]
        e = ctx.snap.events.get(seq)
        if e is None:
            return Row("(dropped from the log)", self.st("dim"))
        r = Row()
        r.cell(f"{e.time:,}", 11, self.st("changed") if seq >= ctx.base.event_count else None, right=True)
        r.cell(f"  {e.vcpu}", 5)
        write = e.kind == "msr_write"
        r.cell("W" if write else "R", 3, self.st("accent") if write else None)
        apf = e.index == MSR_APF
        r.cell(msr_name(e.index), 16, self.st("accent") if apf else None)
        value = f"{e.value:#x}"
        r.cell(value, 11 if len(value) <= 10 else 19)
        if apf:
            for k, v, note in apf_fields(e.value, ctx.snap.profile):
                if k == "rsvd" and not note:
                    continue
                r.add(f"{k}=", self.st("dim"))
                r.add(f"{v} ", self.st("warn") if note else None)
        if e.result == "gp":
            r.add(f" #GP: {e.reason}", self.st("bad"))
        elif e.reason:
            r.add(f" {e.reason}", self.st("good"))
        return r
