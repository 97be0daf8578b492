"""Host memory map: every guest frame, resident / swapped out / page-in in flight; pick frames here
to page out."""
from __future__ import annotations

from bisect import bisect_left

from textual.binding import Binding

from ..base import Panel, Row, ViewCtx

GLYPH_SWAPPED = "█"
GLYPH_FLIGHT = "▒"
GLYPH_POOL = "▪"
GLYPH_RES = "·"


class MemoryPanel(Panel):
    PANEL_ID = "memory"
    TITLE = "Host memory map"
    KEY = "7"

    BINDINGS = [
        Binding("left", "move(-1)", "left", show=False),
        Binding("right", "move(1)", "right", show=False),
        Binding("up", "move_row(-1)", "up", show=False),
        Binding("down", "move_row(1)", "down", show=False),
        Binding("pageup", "move_row(-8)", "page up", show=False),
        Binding("pagedown", "move_row(8)", "page down", show=False),
        Binding("home", "goto_first", "first frame of interest", show=False),
        Binding("end", "goto_last", "last frame", show=False),
    ]

    def __init__(self, pager_frames: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.pool = frozenset(pager_frames)
        self.gfn: int | None = min(pager_frames) if pager_frames else None
        self._swapped: frozenset[int] = frozenset()
        self._flight: frozenset[int] = frozenset()
        self._base_swapped: frozenset[int] = frozenset()
        self._base_snap = None
        self._waiters: dict[int, str] = {}
        self._version = 0
        self._placed = False

    def per_row(self) -> int:
        avail = self.content_width() - 10
        w = 16
        while w * 2 <= avail and w < 128:
            w *= 2
        return w

    def update_ctx(self, ctx: ViewCtx) -> None:
        self.ctx = ctx
        snap = ctx.snap
        if ctx.base is not self._base_snap:
            self._base_snap = ctx.base
            self._base_swapped = frozenset(ctx.base.swapped)
            self._version += 1
        swapped, flight = frozenset(snap.swapped), frozenset(snap.in_flight)
        if swapped != self._swapped or flight != self._flight:
            self._swapped, self._flight = swapped, flight
            self._version += 1
        self._waiters = {}
        for a in snap.apf:
            for w in a.queue:
                if w.gfn is not None and w.state == "paging_in":
                    self._waiters.setdefault(w.gfn, f"vCPU {w.vcpu} work #{w.serial} token {w.token:#x}")
        for v in snap.vcpus:
            if v.stall_gfn is not None:
                self._waiters.setdefault(v.stall_gfn, f"vCPU {v.index} stalled on it")
        if self.gfn is None:
            self.gfn = min(snap.swapped) if snap.swapped else min(0x100, snap.frames - 1)
        self.set_rows(-(-snap.frames // self.per_row()))
        if not self._placed and self.content_region.height > 0:
            self._placed = True
            self._scroll_to_gfn(center=True)

    def relayout(self) -> None:
        self.rows = -(-self.ctx.snap.frames // self.per_row())

    def on_resize(self, event) -> None:
        super().on_resize(event)
        self._scroll_to_gfn(center=True)

    def header(self, width: int) -> list[Row]:
        t = Row()
        t.add(f"{GLYPH_SWAPPED} out {len(self._swapped)}", self.st("swapped"))
        t.add(f" {GLYPH_FLIGHT} in flight {len(self._flight)}", self.st("inflight"))
        if self.pool:
            t.add(f" {GLYPH_POOL} pager's {len(self.pool)}", self.st("eligible"))
        t.add(f" {GLYPH_RES} resident", self.st("dim"))
        c = Row()
        g = self.gfn
        if g is not None:
            c.add(f"▸ gfn {g:#x} (gpa {g << 12:#x}): ", self.st("accent"))
            if g in self._flight:
                c.add("page-in in flight", self.st("inflight"))
            elif g in self._swapped:
                c.add("swapped out", self.st("swapped"))
            else:
                c.add("resident")
            if g in self._waiters:
                c.add(f" · {self._waiters[g]}", self.st("dim"))
            c.add(" · o: page out", self.st("hint"))
        lines = [t, c]
        if not self._swapped and not self.pool:
            lines.append(Row("Nothing swapped out. Move with the arrows and press o to page a frame out, "
                             "w for the selected vCPU's working page, R for random frames.", self.st("hint")))
        return lines

    def row_key(self, r: int):
        """What row `r` shows: the swapped / in-flight frames in it now and at the baseline (slices of
        sorted lists, so a row whose frames did not change keeps its strip)."""
        per = self.per_row()
        lo, hi = r * per, (r + 1) * per
        cur = self.gfn if self.gfn is not None and lo <= self.gfn < hi else None

        def part(xs):
            return tuple(xs[bisect_left(xs, lo):bisect_left(xs, hi)])
        snap, base = self.ctx.snap, self.ctx.base
        return (r, per, part(snap.swapped), part(snap.in_flight), part(base.swapped), cur)

    def render_row(self, r: int, width: int) -> Row:
        per = self.per_row()
        first = r * per
        frames = self.ctx.snap.frames
        row = Row(f"{first:#07x} ", self.st("dim"))
        sw, fl, pool, base = self._swapped, self._flight, self.pool, self._base_swapped
        cur = self.gfn
        st = {k: self.st(k) for k in ("swapped", "inflight", "eligible", "dim", "changed", "cursor")}
        run, run_style = [], None
        for g in range(first, min(first + per, frames)):
            if g in fl:
                ch, s = GLYPH_FLIGHT, st["inflight"]
            elif g in sw:
                ch, s = GLYPH_SWAPPED, st["swapped"]
            elif g in pool:
                ch, s = GLYPH_POOL, st["eligible"]
            else:
                ch, s = GLYPH_RES, st["dim"]
            if (g in sw) != (g in base):
                s = s + st["changed"]
            if g == cur:
                s = s + st["cursor"]
            if s is not run_style and run:
                row.add("".join(run), run_style)
                run = []
            run.append(ch)
            run_style = s
        if run:
            row.add("".join(run), run_style)
        return row

    # --- cursor ---------------------------------------------------------------------------------
    def _set_gfn(self, g: int) -> None:
        if self.ctx is None:
            return
        self.gfn = max(0, min(self.ctx.snap.frames - 1, g))
        self.invalidate()
        self._scroll_to_gfn()

    def _scroll_to_gfn(self, center: bool = False) -> None:
        if self.gfn is None or not self.rows:
            return
        row = self.gfn // self.per_row()
        h = self.body_height()
        if center:
            self.scroll_to_row(row - h // 3)
        elif row < self.top:
            self.scroll_to_row(row)
        elif row >= self.top + h:
            self.scroll_to_row(row - h + 1)

    def action_move(self, d: int) -> None:
        self._set_gfn((self.gfn or 0) + d)

    def action_move_row(self, d: int) -> None:
        self._set_gfn((self.gfn or 0) + d * self.per_row())

    def action_goto_first(self) -> None:
        if self.pool:
            self._set_gfn(min(self.pool))
        elif self._swapped:
            self._set_gfn(min(self._swapped))
        else:
            self._set_gfn(0)

    def action_goto_last(self) -> None:
        self._set_gfn(self.ctx.snap.frames - 1 if self.ctx else 0)

    def on_click(self, event) -> None:
        if self.ctx is None:
            return
        row = self.top + event.y - self.header_height()
        col = event.x - 8
        if row >= 0 and 0 <= col < self.per_row():
            self._set_gfn(row * self.per_row() + col)
