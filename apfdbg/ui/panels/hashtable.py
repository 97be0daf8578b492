"""The async-PF gfn hash of the selected vCPU: 64 slots, gfn, home bucket, probe distance."""
from __future__ import annotations

import bisect

from ..base import Panel, Row, ViewCtx

CELL = 20


class HashPanel(Panel):
    PANEL_ID = "hash"
    TITLE = "Async-PF gfn hash"
    KEY = "3"

    def update_ctx(self, ctx: ViewCtx) -> None:
        self.ctx = ctx
        title = f"{self.TITLE} · vCPU {ctx.vcpu}"
        if self.border_title != title:
            self.border_title = title
        self.set_rows(self._nrows())

    def _ncols(self) -> int:
        return max(1, (self.content_width() + 1) // CELL)

    def _nrows(self) -> int:
        if self.ctx is None or not self.ctx.snap.apf:
            return 0
        return -(-len(self.ctx.snap.apf[self.ctx.vcpu].gfns) // self._ncols())

    def relayout(self) -> None:
        self.rows = self._nrows()

    def header(self, width: int) -> list[Row]:
        ctx = self.ctx
        apf = ctx.snap.apf[ctx.vcpu]
        used = sum(1 for g in apf.gfns if g is not None)
        longest = max((d for d in apf.gfn_distance if d is not None), default=0)
        r = Row()
        r.add(f"{used}/{len(apf.gfns)} used", self.st("accent"))
        r.add(f" · longest probe {longest}", self.st("warn") if longest else self.st("dim"))
        r.add(" · slot = hash_32(gfn, 6), then +1", self.st("dim"))
        lines = [r]
        last = self._last_delete()
        if last is not None:
            m = Row("last delete: ", self.st("dim"))
            m.add(f"slot {last.slot} (gfn {last.gfn:#x})")
            if last.moves:
                m.add(" backward shift " + " ".join(f"{a}→{b}" for a, b in last.moves), self.st("warn"))
            else:
                m.add(" no entries moved", self.st("dim"))
            lines.append(m)
        if used == 0:
            lines.append(Row("Empty: no async PF outstanding on this vCPU. Page frames out (o, w, R) "
                             "or let the pager do it; v switches vCPU.", self.st("hint")))
        return lines

    def _last_delete(self):
        w = self.ctx.snap.events
        if w is None:
            return None
        seqs = w.log.index.get(("async_pf_ready", self.ctx.vcpu))
        if not seqs:
            return None
        i = bisect.bisect_left(seqs, w.end) - 1
        while i >= 0 and seqs[i] >= w.start:
            e = w.get(seqs[i])
            if e is not None and e.slot is not None:
                return e
            i -= 1
        return None

    def _cells(self, r: int) -> tuple:
        ctx = self.ctx
        apf = ctx.snap.apf[ctx.vcpu]
        base = ctx.base.apf[ctx.vcpu] if ctx.vcpu < len(ctx.base.apf) else apf
        n = len(apf.gfns)
        ncols = self._ncols()
        nrows = -(-n // ncols)
        out = []
        for c in range(ncols):
            slot = c * nrows + r
            if slot >= n:
                break
            out.append((slot, apf.gfns[slot], apf.gfn_home[slot], apf.gfn_distance[slot],
                        apf.gfns[slot] != base.gfns[slot]))
        return tuple(out)

    def row_key(self, r: int):
        return (r, self._ncols(), self._cells(r))

    def render_row(self, r: int, width: int) -> Row:
        cells = self._cells(r)
        row = Row()
        for k, (slot, gfn, home, dist, changed) in enumerate(cells):
            c = Row()
            c.add(f"{slot:2d} ", self.st("dim"))
            if gfn is None:
                c.add("·", self.st("changed") if changed else self.st("dim"))
            else:
                c.add(f"{gfn:#07x}", self.st("changed") if changed else None)
                c.add(f" h{home:<2d}", self.st("dim") if dist == 0 else self.st("warn"))
                if dist:
                    c.add(f" +{dist}", self.st("warn"))
            row.extend(c)
            if c.n < CELL - 1:
                row.add(" " * (CELL - 1 - c.n))
            if k < len(cells) - 1:
                row.add("│", self.st("dim"))
        return row
