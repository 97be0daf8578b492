"""The guest console (port 0xe9), in time order, all vCPUs."""
from __future__ import annotations

import bisect

from rich.text import Text

from ..base import Panel, ViewCtx, cell


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

    def render_row(self, i: int, width: int) -> Text:
        e = self.ctx.snap.events.get(self._seqs[i])
        if e is None:
            return Text("(dropped)", style=self.st("dim"))
        t = Text()
        t.append(cell(f"{e.time:,}", 12, self.st("dim"), right=True))
        t.append(f" [{e.vcpu}] ", style=self.st("accent") if e.vcpu == self.ctx.vcpu else self.st("dim"))
        t.append(e.text.rstrip("\n"))
        return t
