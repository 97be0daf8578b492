"""Explain: the selected (or latest) event in plain words, with the rule behind it."""
from __future__ import annotations

from rich.text import Text

from ..base import Panel, Row, ViewCtx
from ..explain import explain
from ..fmt import APF_BREAK_KINDS


class ExplainPanel(Panel):
    PANEL_ID = "explain"
    TITLE = "Explain"
    KEY = "8"
    TIER = 2
    EMPTY_HINT = ("Select an event in the timeline (6, then arrows) or the MSR list to have it explained; "
                  "otherwise this shows the latest async-PF event. Run the guest with space.")

    def __init__(self) -> None:
        super().__init__()
        self.seq: int | None = None       # what to explain (None: the latest APF event)
        self._lines: list[Row] = []
        self._version = 0
        self._width = -1
        self._what: tuple | None = None

    def update_ctx(self, ctx: ViewCtx) -> None:
        self.ctx = ctx
        self._width = -1
        self._compose_lines()

    def explain_seq(self, seq: int | None) -> None:
        self.seq = seq
        self._what = None
        if self.ctx is not None:
            self._compose_lines()

    def _target(self):
        ctx = self.ctx
        w = ctx.snap.events
        if w is None:
            return None, None
        for seq in (self.seq, ctx.snap.stop_event):
            if seq is not None:
                e = w.get(seq)
                if e is not None:
                    return seq, e
        # the latest APF event
        import bisect
        best = None
        for k in APF_BREAK_KINDS:
            for (kk, _v), idx in list(w.log.index.items()):
                if kk != k or not idx:
                    continue
                i = bisect.bisect_left(idx, w.end) - 1
                if i >= 0 and idx[i] >= w.start and (best is None or idx[i] > best):
                    best = idx[i]
        if best is None:
            return None, None
        return best, w.get(best)

    def _compose_lines(self) -> None:
        width = max(10, self.content_width() - 1)
        seq, e = self._target()
        what = (seq, width, self.seq, self.ctx.snap.stop_event)
        if what == self._what:
            return
        self._what = what
        lines: list[Text] = []
        if e is not None:
            x = explain(e, self.ctx.snap)
            head = Text()
            head.append(x.title, style=self.st("accent") + self.st("head"))
            sel = ("selected" if seq == self.seq else
                   "where the run stopped" if seq == self.ctx.snap.stop_event else "latest async-PF event")
            head.append(f"  · event #{seq:,} ({sel})", style=self.st("dim"))
            lines.extend(head.wrap(self.app.console, width))
            lines.extend(Text(x.text).wrap(self.app.console, width))
            if x.rule:
                r = Text("Rule: ", style=self.st("warn"))
                r.append(x.rule, style=self.st("dim"))
                lines.extend(r.wrap(self.app.console, width))
            for n in x.notes:
                lines.extend(Text(n, style=self.st("dim")).wrap(self.app.console, width))
        self._lines = [Row.from_text(line, self.app.console) for line in lines]
        self._version += 1
        self._width = width
        self.set_rows(len(lines))

    def relayout(self) -> None:
        self._what = None
        self._compose_lines()

    def row_key(self, i: int):
        return (self._version, i)

    def render_row(self, i: int, width: int) -> Row:
        return self._lines[i] if i < len(self._lines) else Row()
