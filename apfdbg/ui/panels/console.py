"""The guest console (port 0xe9), in time order, all vCPUs."""
from __future__ import annotations

from ..base import EventListPanel, Row


class ConsolePanel(EventListPanel):
    PANEL_ID = "console"
    TITLE = "Guest console"
    KEY = "9"
    SELECTABLE = True
    EMPTY_HINT = "Nothing printed yet: the guest writes its console to port 0xe9, one byte at a time."
    KINDS = ("console",)

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
