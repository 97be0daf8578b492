"""MSR accesses: every RDMSR/WRMSR with time, vCPU, MSR, value decoded field by field, result."""
from __future__ import annotations

from rich.text import Text

from ..base import Panel, ViewCtx, cell
from ..fmt import MSR_APF, apf_fields, msr_name


class MsrPanel(Panel):
    PANEL_ID = "msr"
    TITLE = "MSR accesses"
    KEY = "2"
    SELECTABLE = True
    EMPTY_HINT = ("No RDMSR/WRMSR yet. A paravirtual guest turns async page faults on by writing "
                  "its 64-byte area's address | 1 to MSR_KVM_ASYNC_PF_EN (0x4b564d02) on each vCPU. "
                  "Run the guest (space) or step it (.).")

    def __init__(self) -> None:
        super().__init__()
        self._seqs: list[int] = []
        self._end = 0
        self._window_log = None

    def update_ctx(self, ctx: ViewCtx) -> None:
        self.ctx = ctx
        w = ctx.snap.events
        if w is None:
            return self.set_rows(0)
        if w.log is not self._window_log:
            self._window_log, self._seqs, self._end = w.log, [], w.start
        if w.end > self._end:
            self._seqs.extend(w.select(("msr_read", "msr_write"), since=self._end))
            self._end = w.end
        if self._seqs and self._seqs[0] < w.start:
            import bisect
            del self._seqs[:bisect.bisect_left(self._seqs, w.start)]
        self.set_rows(len(self._seqs), follow=True)

    def selected_seq(self) -> int | None:
        return self._seqs[self.cursor] if self.cursor is not None and self.cursor < len(self._seqs) else None

    def cursor_moved(self) -> None:
        self.app.explain_seq(self.selected_seq())

    def header(self, width: int) -> list[Text]:
        h = self.st("head")
        t = Text()
        for txt, w, right in (("time", 12, True), (" cpu", 5, False), ("op", 3, False), ("MSR", 17, False),
                              ("value", 19, False), ("fields / result", 40, False)):
            t.append(cell(txt, w, h, right))
        return [t]

    def render_row(self, i: int, width: int) -> Text:
        ctx = self.ctx
        seq = self._seqs[i]
        e = ctx.snap.events.get(seq)
        if e is None:
            return Text("(dropped from the log)", style=self.st("dim"))
        new = seq >= ctx.base.event_count
        t = Text()
        t.append(cell(f"{e.time:,}", 12, self.st("changed") if new else None, right=True))
        t.append(cell(f"  {e.vcpu}", 5))
        t.append(cell("W" if e.kind == "msr_write" else "R", 3, self.st("accent") if e.kind == "msr_write" else None))
        apf = e.index == MSR_APF
        t.append(cell(msr_name(e.index), 17, self.st("accent") if apf else None))
        t.append(cell(f"{e.value:#x}", 19))
        if apf:
            for k, v, note in apf_fields(e.value, ctx.snap.profile):
                t.append(f"{k}=", style=self.st("dim"))
                t.append(f"{v} ", style=self.st("warn") if note else None)
        if e.result == "gp":
            t.append(f" #GP: {e.reason}", style=self.st("bad"))
        elif e.reason:
            t.append(f" {e.reason}", style=self.st("good"))
        return t
