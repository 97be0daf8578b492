"""The async-PF gfn hash of the selected vCPU: 64 slots, gfn, home bucket, probe distance."""
from __future__ import annotations

from rich.text import Text

from ..base import Panel, ViewCtx

CELL = 20


class HashPanel(Panel):
    PANEL_ID = "hash"
    TITLE = "Async-PF gfn hash"
    KEY = "3"
    EMPTY_HINT = ""

    def update_ctx(self, ctx: ViewCtx) -> None:
        self.ctx = ctx
        self.border_title = f"{self.TITLE} · vCPU {ctx.vcpu}"
        self.set_rows(self._nrows())

    def _ncols(self) -> int:
        return max(1, (self.scrollable_content_region.width + 1) // CELL)

    def _nrows(self) -> int:
        if self.ctx is None or not self.ctx.snap.apf:
            return 0
        n = len(self.ctx.snap.apf[self.ctx.vcpu].gfns)
        return -(-n // self._ncols())

    def on_resize(self) -> None:
        if self.ctx is not None:
            self.rows = self._nrows()
        super().on_resize()

    def header(self, width: int) -> list[Text]:
        ctx = self.ctx
        apf = ctx.snap.apf[ctx.vcpu]
        used = sum(1 for g in apf.gfns if g is not None)
        longest = max((d for d in apf.gfn_distance if d is not None), default=0)
        t = Text()
        t.append(f"{used}/{len(apf.gfns)} used", style=self.st("accent"))
        t.append(f" · longest probe {longest}", style=self.st("warn") if longest else self.st("dim"))
        t.append(" · slot = hash_32(gfn, 6), then +1", style=self.st("dim"))
        lines = [t]
        last = self._last_delete()
        if last is not None:
            m = Text("last delete: ", style=self.st("dim"))
            m.append(f"slot {last.slot} (gfn {last.gfn:#x})")
            if last.moves:
                m.append(" backward shift " + " ".join(f"{a}→{b}" for a, b in last.moves), style=self.st("warn"))
            else:
                m.append(" no entries moved", style=self.st("dim"))
            lines.append(m)
        if used == 0:
            lines.append(Text("Empty: no async PF outstanding on this vCPU. Page frames out (o, w, R) "
                              "or let the pager do it; v switches vCPU.", style=self.st("hint")))
        return lines

    def _last_delete(self):
        w = self.ctx.snap.events
        if w is None:
            return None
        seqs = w.log.index.get(("async_pf_ready", self.ctx.vcpu))
        if not seqs:
            return None
        import bisect
        i = bisect.bisect_left(seqs, w.end) - 1
        while i >= 0 and seqs[i] >= w.start:
            e = w.get(seqs[i])
            if e is not None and e.slot is not None:
                return e
            i -= 1
        return None

    def render_row(self, r: int, width: int) -> Text:
        ctx = self.ctx
        apf = ctx.snap.apf[ctx.vcpu]
        base = ctx.base.apf[ctx.vcpu] if ctx.vcpu < len(ctx.base.apf) else apf
        n = len(apf.gfns)
        ncols = self._ncols()
        nrows = -(-n // ncols)
        t = Text()
        for c in range(ncols):
            slot = c * nrows + r
            if slot >= n:
                break
            gfn, home, dist = apf.gfns[slot], apf.gfn_home[slot], apf.gfn_distance[slot]
            changed = gfn != base.gfns[slot]
            cellt = Text()
            cellt.append(f"{slot:2d} ", style=self.st("dim"))
            if gfn is None:
                cellt.append("·".ljust(CELL - 4), style=self.st("changed") if changed else self.st("dim"))
            else:
                cellt.append(f"{gfn:#07x}", style=self.st("changed") if changed else None)
                cellt.append(f" h{home:<2d}", style=self.st("dim") if dist == 0 else self.st("warn"))
                cellt.append(f" +{dist}" if dist else "   ", style=self.st("warn") if dist else None)
            cellt.truncate(CELL - 1, pad=True)
            t.append(cellt)
            t.append("│" if c < ncols - 1 else "", style=self.st("dim"))
        return t
