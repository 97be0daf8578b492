"""Host memory map: every guest frame, resident / swapped out / page-in in flight; pick frames here
to page out."""
from __future__ import annotations

from rich.text import Text
from textual.binding import Binding

from ..base import Panel, ViewCtx

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
        self._waiters: dict[int, str] = {}

    def per_row(self) -> int:
        avail = self.scrollable_content_region.width - 10
        w = 16
        while w * 2 <= avail and w < 128:
            w *= 2
        return w

    def update_ctx(self, ctx: ViewCtx) -> None:
        self.ctx = ctx
        snap = ctx.snap
        if snap.swapped is not ctx.base.swapped:
            self._base_swapped = frozenset(ctx.base.swapped)
        self._swapped = frozenset(snap.swapped)
        self._flight = frozenset(snap.in_flight)
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

    def on_resize(self) -> None:
        if self.ctx is not None:
            self.rows = -(-self.ctx.snap.frames // self.per_row())
        super().on_resize()
        self._scroll_to_gfn()

    def header(self, width: int) -> list[Text]:
        snap = self.ctx.snap
        t = Text()
        t.append(f"{GLYPH_SWAPPED} swapped {len(self._swapped)}", style=self.st("swapped"))
        t.append(f"  {GLYPH_FLIGHT} in flight {len(self._flight)}", style=self.st("inflight"))
        if self.pool:
            t.append(f"  {GLYPH_POOL} pager's {len(self.pool)}", style=self.st("eligible"))
        t.append(f"  {GLYPH_RES} resident", style=self.st("dim"))
        c = Text()
        g = self.gfn
        if g is not None:
            c.append(f"▸ gfn {g:#x} (gpa {g << 12:#x}): ", style=self.st("accent"))
            if g in self._flight:
                c.append("page-in in flight", style=self.st("inflight"))
            elif g in self._swapped:
                c.append("swapped out", style=self.st("swapped"))
            else:
                c.append("resident")
            if g in self._waiters:
                c.append(f" · {self._waiters[g]}", style=self.st("dim"))
            c.append(" · o pages it out", style=self.st("hint"))
        lines = [t, c]
        if not self._swapped and not self.pool:
            lines.append(Text("Nothing swapped out. Move with the arrows and press o to page a frame out, "
                              "w for the focused vCPU's working page, R for random frames.", style=self.st("hint")))
        return lines

    def render_row(self, r: int, width: int) -> Text:
        per = self.per_row()
        first = r * per
        frames = self.ctx.snap.frames
        t = Text(f"{first:#07x} ", style=self.st("dim"))
        sw, fl, pool, base = self._swapped, self._flight, self.pool, self._base_swapped
        cur = self.gfn
        styles = {k: self.st(k) for k in ("swapped", "inflight", "eligible", "dim", "changed", "cursor")}
        for g in range(first, min(first + per, frames)):
            if g in fl:
                ch, st = GLYPH_FLIGHT, styles["inflight"]
            elif g in sw:
                ch, st = GLYPH_SWAPPED, styles["swapped"]
            elif g in pool:
                ch, st = GLYPH_POOL, styles["eligible"]
            else:
                ch, st = GLYPH_RES, styles["dim"]
            if (g in sw) != (g in base):
                st = st + styles["changed"]
            if g == cur:
                st = st + styles["cursor"]
            t.append(ch, style=st)
        return t

    # --- cursor ---------------------------------------------------------------------------------
    def _set_gfn(self, g: int) -> None:
        if self.ctx is None:
            return
        g = max(0, min(self.ctx.snap.frames - 1, g))
        self.gfn = g
        self.invalidate()
        self._scroll_to_gfn()

    def _scroll_to_gfn(self) -> None:
        if self.gfn is None or not self.rows:
            return
        row = self.gfn // self.per_row()
        top, h = int(self.scroll_y), self.body_height()
        if row < top:
            self.scroll_to(y=row, animate=False, immediate=True)
        elif row >= top + h:
            self.scroll_to(y=row - h + 1, animate=False, immediate=True)

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
        row = int(self.scroll_y) + event.y - self.header_height()
        col = event.x - 8
        if row >= 0 and 0 <= col < self.per_row():
            self._set_gfn(row * self.per_row() + col)
