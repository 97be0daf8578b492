"""Works: the done queue (waiting for delivery) and the in-flight queue (paging in), all vCPUs."""
from __future__ import annotations

from ..base import Panel, Row, ViewCtx
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
        self._base_serials: frozenset[int] = frozenset()
        self._base_snap = None

    def update_ctx(self, ctx: ViewCtx) -> None:
        self.ctx = ctx
        order = sorted(range(len(ctx.snap.apf)), key=lambda i: (i != ctx.vcpu, i))
        items = [("done", w) for i in order for w in ctx.snap.apf[i].done]
        items += [("flight", w) for i in order for w in ctx.snap.apf[i].queue if w.state == "paging_in"]
        self.items = items
        if ctx.base is not self._base_snap:
            self._base_snap = ctx.base
            self._base_serials = frozenset(w.serial for a in ctx.base.apf for w in (*a.queue, *a.done))
        keep = self._selected_serial
        self.follow = False
        self.set_rows(len(items))
        if keep is not None:
            for i, (_s, w) in enumerate(items):
                if w.serial == keep:
                    self.cursor = i
                    self.scroll_cursor_visible()
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

    def header(self, width: int) -> list[Row]:
        apfs = self.ctx.snap.apf
        done = sum(len(a.done) for a in apfs)
        flight = sum(1 for a in apfs for w in a.queue if w.state == "paging_in")
        wa = sum(1 for a in apfs for w in a.done if w.wakeup_all)
        r = Row()
        r.add(f"done {done}", self.st("good") if done else self.st("dim"))
        r.add(f" · in flight {flight}", self.st("warn") if flight else self.st("dim"))
        r.add(f" · wake-all {wa}", self.st("accent") if wa else self.st("dim"))
        r.add(" · queued " + " ".join(f"{a.index}:{a.queued}" for a in apfs), self.st("dim"))
        h = Row()
        for txt, w, right in (("list", 8, False), ("cpu", 4, False), ("work", 7, True), ("  token", 12, False),
                              ("gfn", 9, False), ("age", 8, True), ("  np", 6, False), ("gva", 12, False)):
            h.cell(txt, w, self.st("head"), right)
        return [r, h]

    def row_key(self, i: int):
        section, w = self.items[i]
        return (w.serial, section, short(self.ctx.snap.time - w.created), w.serial not in self._base_serials,
                w.vcpu == self.ctx.vcpu)

    def render_row(self, i: int, width: int) -> Row:
        ctx = self.ctx
        section, w = self.items[i]
        r = Row()
        if w.wakeup_all:
            r.cell("wake-all", 8, self.st("accent"))
        elif section == "done":
            r.cell("done", 8, self.st("good"))
        else:
            r.cell("paging", 8, self.st("warn"))
        r.cell(f" {w.vcpu}", 4, self.st("accent") if w.vcpu == ctx.vcpu else None)
        r.cell(f"#{w.serial}", 7, self.st("changed") if w.serial not in self._base_serials else None, right=True)
        r.cell("  ~0 (all)" if w.wakeup_all else f"  {w.token:#x}", 12)
        r.cell("-" if w.gfn is None else f"{w.gfn:#x}", 9)
        r.cell(short(ctx.snap.time - w.created), 8, right=True)
        r.cell(f"  {w.not_present or '-'}", 6)
        r.cell("" if w.wakeup_all else f"{w.gva:#x}", 12, self.st("dim"))
        return r
