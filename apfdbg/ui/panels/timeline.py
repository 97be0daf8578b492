"""The event timeline: every event of the run, virtualised (a million rows cost what the screen
shows), filterable by vCPU and event kind."""
from __future__ import annotations

import bisect

from ...events import event_key
from ..base import Panel, Row, ViewCtx
from ..fmt import event_summary

_KIND_STYLE = {
    "async_pf_not_present": "warn", "async_pf_ready": "good", "async_pf_completed": "good",
    "async_pf_doublefault": "bad", "sync_fault": "bad", "stall": "bad", "halt": "warn",
    "completion_queue_cleared": "bad", "wakeup_all": "accent", "msr_write": "accent", "gp": "bad",
    "page_out": "dim", "page_in": "dim", "inject:#PF": "accent", "exit": "bad",
}


class TimelinePanel(Panel):
    PANEL_ID = "timeline"
    TITLE = "Event timeline"
    KEY = "6"
    TIER = 0
    SELECTABLE = True
    EMPTY_HINT = ("No events yet. Events appear as the guest runs (space), one at a time with '.', or up "
                  "to the next async-PF event with 'n'. f filters by vCPU and kind.")

    def __init__(self) -> None:
        super().__init__()
        self.keys: frozenset[str] | None = None     # None: every kind
        self.vcpus: frozenset[int | None] | None = None
        self._seqs: list[int] | None = None         # None: no filter (row i = window.start + i)
        self._end = 0
        self._log = None
        self._start = 0

    # --- filter --------------------------------------------------------------------------------
    @property
    def filtered(self) -> bool:
        return self.keys is not None or self.vcpus is not None

    def set_filter(self, keys, vcpus) -> None:
        self.keys = None if keys is None else frozenset(keys)
        self.vcpus = None if vcpus is None else frozenset(vcpus)
        self._seqs = None
        self._end = -1
        self.cursor = None
        self.follow = True
        if self.ctx is not None:
            self.update_ctx(self.ctx)

    def describe_filter(self) -> str:
        if not self.filtered:
            return "all events"
        parts = []
        if self.vcpus is not None:
            parts.append("vCPU " + ",".join("-" if v is None else str(v)
                                            for v in sorted(self.vcpus, key=lambda v: -1 if v is None else v)))
        if self.keys is not None:
            parts.append(f"{len(self.keys)} kinds")
        return "filter: " + "; ".join(parts)

    # --- rows ----------------------------------------------------------------------------------
    def update_ctx(self, ctx: ViewCtx) -> None:
        self.ctx = ctx
        w = ctx.snap.events
        if w is None:
            return self.set_rows(0)
        if not self.filtered:
            self._seqs = None
            self._start = w.start
            n = len(w)
        else:
            vset = None if self.vcpus is None else set(self.vcpus)
            if self._seqs is None or w.log is not self._log or self._end < 0:
                self._log = w.log
                self._seqs = w.select(self.keys, vset)
            elif w.end > self._end:
                self._seqs.extend(w.select(self.keys, vset, since=self._end))
            if self._seqs and self._seqs[0] < w.start:
                del self._seqs[:bisect.bisect_left(self._seqs, w.start)]
            self._end = w.end
            n = len(self._seqs)
        self.set_rows(n, follow=True)

    def seq_of(self, row: int | None) -> int | None:
        if row is None or row < 0 or row >= self.rows:
            return None
        return self._seqs[row] if self._seqs is not None else self._start + row

    def selected_seq(self) -> int | None:
        return self.seq_of(self.cursor)

    def select_seq(self, seq: int) -> None:
        """Put the cursor on event `seq` (or the nearest one the filter shows)."""
        if not self.rows:
            return
        if self._seqs is not None:
            row = min(bisect.bisect_left(self._seqs, seq), self.rows - 1)
        else:
            row = seq - self._start
        self.move_cursor(row)

    def cursor_moved(self) -> None:
        self.app.explain_seq(self.selected_seq())

    def header(self, width: int) -> list[Row]:
        ctx = self.ctx
        w = ctx.snap.events
        t = Row()
        t.add(self.describe_filter(), self.st("accent") if self.filtered else self.st("dim"))
        t.add(f" · {self.rows:,} shown of {ctx.snap.event_count:,}", self.st("dim"))
        if w is not None and w.start:
            t.add(f" (oldest {w.start:,} dropped)", self.st("dim"))
        t.add(" · following" if self.follow else " · end: follow", self.st("dim"))
        h = Row()
        wide = width >= 100
        cols = ((("#", 10, True),) if wide else ()) + (("time", 13 if wide else 11, True), (" cpu", 5, False),
                                                        ("event", 26 if wide else 21, False), ("details", 40, False))
        for txt, wd, right in cols:
            h.cell(txt, wd, self.st("head"), right)
        return [t, h]

    def row_key(self, i: int):
        seq = self.seq_of(i)
        return (seq, seq >= self.ctx.base.event_count, self.ctx.vcpu)

    def render_row(self, i: int, width: int) -> Row:
        ctx = self.ctx
        seq = self.seq_of(i)
        e = ctx.snap.events.get(seq)
        if e is None:
            return Row(f"{seq:>10,}  (dropped)", self.st("dim"))
        key = event_key(e)
        wide = width >= 100
        r = Row()
        if wide:
            r.cell(f"{seq:,}", 10, self.st("dim"), right=True)
        r.cell(f"{e.time:,}", 13 if wide else 11, self.st("changed") if seq >= ctx.base.event_count else None,
               right=True)
        r.cell("   -" if e.vcpu is None else f"   {e.vcpu}", 5, self.st("accent") if e.vcpu == ctx.vcpu else None)
        st = _KIND_STYLE.get(key)
        r.cell(key, 26 if wide else 21, self.st(st) if st else None)
        r.add(event_summary(e))
        return r
