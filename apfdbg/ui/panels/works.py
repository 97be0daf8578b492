"""Works: the done queue (waiting for delivery) and the in-flight queue (paging in), all vCPUs."""
from __future__ import annotations

from rich.text import Text

from ..base import Panel, ViewCtx, cell
from ..fmt import short


class WorksPanel(Panel):
    PANEL_ID = "works"
    TITLE = "Works: done / in flight"
    KEY = "4"
    SELECTABLE = True
    EMPTY_HINT = ("No outstanding works. A work is queued when a vCPU with interrupts on touches a "
                  "swapped-out frame (async PF); it sits here while the host pages the frame in, then on "
                  "the done list until KVM delivers 'page ready'. Page frames out (o, w, R) to make some; "
                  "a wake-all (a) queues a dummy.")

    def __init__(self) -> None:
        super().__init__()
        self.items: list = []      # (section, WorkInfo)
        self._selected_serial: int | None = None

    def update_ctx(self, ctx: ViewCtx) -> None:
        self.ctx = ctx
        items = []
        order = sorted(range(len(ctx.snap.apf)), key=lambda i: (i != ctx.vcpu, i))
        for i in order:
            apf = ctx.snap.apf[i]
            for w in apf.done:
                items.append(("done", w))
        for i in order:
            apf = ctx.snap.apf[i]
            for w in apf.queue:
                if w.state == "paging_in":
                    items.append(("flight", w))
        self.items = items
        self._base_serials = {w.serial for a in ctx.base.apf for w in (*a.queue, *a.done)}
        keep = self._selected_serial
        self.set_rows(len(items))
        if keep is not None and items:
            for i, (_s, w) in enumerate(items):
                if w.serial == keep:
                    self.cursor = i
                    break
        self._remember()

    def _remember(self) -> None:
        w = self.selected_work()
        self._selected_serial = w.serial if w is not None else None

    def selected_work(self):
        if self.cursor is None or self.cursor >= len(self.items):
            return None
        return self.items[self.cursor][1]

    def cursor_moved(self) -> None:
        self._remember()

    def header(self, width: int) -> list[Text]:
        ctx = self.ctx
        done = sum(len(a.done) for a in ctx.snap.apf)
        flight = sum(1 for a in ctx.snap.apf for w in a.queue if w.state == "paging_in")
        wa = sum(1 for a in ctx.snap.apf for w in a.done if w.wakeup_all)
        t = Text()
        t.append(f"done {done}", style=self.st("good") if done else self.st("dim"))
        t.append(f" · in flight {flight}", style=self.st("warn") if flight else self.st("dim"))
        t.append(f" · wake-all {wa}", style=self.st("accent") if wa else self.st("dim"))
        t.append(" · queued " + " ".join(f"{a.index}:{a.queued}" for a in ctx.snap.apf), style=self.st("dim"))
        h = Text()
        for txt, w, right in (("list", 8, False), ("cpu", 4, False), ("work", 7, True), ("  token", 12, False),
                              ("gfn", 9, False), ("age", 8, True), ("  np", 6, False), ("gva", 12, False)):
            h.append(cell(txt, w, self.st("head"), right))
        return [t, h]

    def render_row(self, i: int, width: int) -> Text:
        ctx = self.ctx
        section, w = self.items[i]
        new = w.serial not in self._base_serials
        t = Text()
        if w.wakeup_all:
            t.append(cell("wake-all", 8, self.st("accent")))
        elif section == "done":
            t.append(cell("done", 8, self.st("good")))
        else:
            t.append(cell("paging", 8, self.st("warn")))
        t.append(cell(f" {w.vcpu}", 4, self.st("accent") if w.vcpu == ctx.vcpu else None))
        t.append(cell(f"#{w.serial}", 7, self.st("changed") if new else None, right=True))
        tok = "~0 (all)" if w.wakeup_all else f"{w.token:#x}"
        t.append(cell(f"  {tok}", 12))
        t.append(cell("-" if w.gfn is None else f"{w.gfn:#x}", 9))
        t.append(cell(short(ctx.snap.time - w.created), 8, right=True))
        t.append(cell(f"  {w.not_present or '-'}", 6))
        t.append(cell("" if w.wakeup_all else f"{w.gva:#x}", 12, self.st("dim")))
        return t
