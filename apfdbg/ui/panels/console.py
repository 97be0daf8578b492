"""The guest console (port 0xe9), in time order, all vCPUs."""
from __future__ import annotations

import bisect

from ..base import Panel, Row, ViewCtx


class ConsolePanel(Panel):
    PANEL_ID = "console"
    TITLE = "Guest console"
    KEY = "9"
    SELECTABLE = True
    EMPTY_HINT = "Nothing printed yet: the guest writes its console to port 0xe9, one byte at a time."

    def __init__(self) -> None:
        super().__init__()
        self._seqs: list[int] = []
        self._end = 0
        self._log = None

    def update_ctx(self, ctx: ViewCtx) -> None:
        self.ctx = ctx
        w = ctx.snap.events
        if w is None:
            return self.set_rows(0)
        if w.log is not self._log:
            self._log, self._seqs, self._end = w.log, [], w.start
        if w.end > self._end:
            self._seqs.extend(w.select(("console",), since=self._end))
            self._end = w.end
        if self._seqs and self._seqs[0] < w.start:
            del self._seqs[:bisect.bisect_left(self._seqs, w.start)]
        self.set_rows(len(self._seqs), follow=True)

    def row_key(self, i: int):
        return (self._seqs[i], self.ctx.vcpu)

    def render_row(self, i: int, width: int) -> Row:
        e = self.ctx.snap.events.get(self._seqs[i])
        if e is None:
            return Row("(dropped)", self.st("dim"))
        r = Row()
        r.cell(f"{e.time:,}", 12, self.st("dim"), right=True)
        r.add(f" [{e.vcpu}] ", self.st("accent") if e.vcpu == self.ctx.vcpu else self.st("dim"))
        r.add(e.text.rstrip("\n"))
        return r
