"""What every panel shares: the view context, a cheap row builder, and the panel base class.

A panel never talks to the engine.  On each UI tick the app hands every visible panel a
:class:`ViewCtx` (the latest snapshot, the baseline to highlight changes against, the selected
vCPU); the panel derives its rows from it (cheap: references into the immutable snapshot) and
renders only the rows on screen, through Textual's line API.

Speed matters here (a frame must stay well under 16 ms with a million events and 8 vCPUs of works):
the panel scrolls itself (no virtual size, so a growing timeline never triggers a layout pass), rows
are built as segments (no Rich Text parsing), and a row's strip is cached under a key made of the
data it shows, so an unchanged row costs a dictionary lookup on the next frame.
"""
from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Hashable

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget

if TYPE_CHECKING:
    from ..engine import Snapshot


@dataclass(frozen=True)
class ViewCtx:
    snap: "Snapshot"
    base: "Snapshot"           # highlight what differs from this (the previous pause)
    vcpu: int                  # the selected vCPU

    @property
    def nvcpus(self) -> int:
        return len(self.snap.vcpus)


class Row:
    """One line under construction: (text, style) segments and their width in cells."""

    __slots__ = ("segs", "n")

    def __init__(self, text: str = "", style: Style | None = None) -> None:
        self.segs: list[tuple[str, Style | None]] = []
        self.n = 0
        if text:
            self.add(text, style)

    def add(self, text: str, style: Style | None = None) -> "Row":
        if text:
            self.segs.append((text, style))
            self.n += len(text) if text.isascii() else cell_len(text)
        return self

    def cell(self, text: str, width: int, style: Style | None = None, right: bool = False) -> "Row":
        """A fixed-width cell (truncated with an ellipsis, or padded); the style covers only the text."""
        if len(text) > width:
            text = text[: max(0, width - 1)] + "…" if width > 1 else text[:width]
        pad = width - len(text)
        if right and pad:
            self.add(" " * pad)
        self.add(text, style)
        if not right and pad:
            self.add(" " * pad)
        return self

    def extend(self, other: "Row") -> "Row":
        self.segs.extend(other.segs)
        self.n += other.n
        return self

    @classmethod
    def from_text(cls, text: Text, console) -> "Row":
        r = cls()
        for seg in text.render(console):
            if seg.text and seg.text != "\n":
                r.add(seg.text, seg.style)
        return r


STYLE_CLASSES = {
    "apf--changed", "apf--dim", "apf--good", "apf--bad", "apf--warn", "apf--accent", "apf--head",
    "apf--cursor", "apf--swapped", "apf--inflight", "apf--resident", "apf--eligible", "apf--hint",
    "apf--key", "apf--sel", "apf--bar", "apf--thumb",
}


class Panel(Widget, can_focus=True):
    """A bordered, focusable panel that scrolls its own rows and renders only those on screen.

    Subclasses set PANEL_ID, TITLE, KEY, EMPTY_HINT and implement `update_ctx` (compute rows, call
    `set_rows`) and `render_row(i, width) -> Row`; `row_key(i)` (optional) names the data a row shows,
    so its strip is reused while that data does not change.  `header(width) -> list[Row]` gives fixed
    lines above the scrolled rows.  Panels with `SELECTABLE = True` keep a cursor row.
    """

    PANEL_ID = "panel"
    TITLE = "Panel"
    KEY = ""
    EMPTY_HINT = ""
    SELECTABLE = False
    TIER = 1            # at full speed: 0 = every frame, 1 = every other frame, 2 = twice a second
    ALLOW_MAXIMIZE = True
    COMPONENT_CLASSES = STYLE_CLASSES
    CACHE_ROWS = 2000

    BINDINGS = [
        Binding("up", "cursor(-1)", "up", show=False),
        Binding("down", "cursor(1)", "down", show=False),
        Binding("pageup", "cursor_page(-1)", "page up", show=False),
        Binding("pagedown", "cursor_page(1)", "page down", show=False),
        Binding("home", "cursor_to(0)", "first", show=False),
        Binding("end", "cursor_to(-1)", "last", show=False),
    ]

    def __init__(self) -> None:
        super().__init__(id=self.PANEL_ID, classes="panel")
        self.ctx: ViewCtx | None = None
        self.rows = 0
        self.top = 0                       # first row on screen
        self.cursor: int | None = None
        self.follow = True                 # selectable panels: keep the cursor on the last row
        self._cache: OrderedDict[Hashable, Strip] = OrderedDict()
        self._frame: dict[int, Strip] = {}     # strips of rows without a key, this frame only
        self._header: list[Row] = []
        self._header_width = -1
        self._hint_lines: list[Row] | None = None
        self.border_title = self.TITLE
        if self.KEY:
            self.border_subtitle = self.KEY
        self._styles: dict[str, Style] = {}
        self._base: Style | None = None
        self._mixed: dict[tuple, Style] = {}

    # --- styles ---------------------------------------------------------------------------------
    def st(self, name: str) -> Style:
        """The Rich style of component class `apf--<name>` (theme-aware, cached per theme)."""
        s = self._styles.get(name)
        if s is None:
            s = self._styles[name] = self.get_component_rich_style(f"apf--{name}", partial=False)
        return s

    def notify_style_update(self) -> None:
        self._styles.clear()
        self._base = None
        self._mixed.clear()
        self._cache.clear()
        self._full = True
        self._dirty = True
        self._frame.clear()
        self._header_width = -1
        self._hint_lines = None
        super().notify_style_update()

    def base_style(self) -> Style:
        if self._base is None:
            self._base = self.rich_style
        return self._base

    # --- data -----------------------------------------------------------------------------------
    def update_ctx(self, ctx: ViewCtx) -> None:
        self.ctx = ctx
        self.set_rows(0)

    def set_rows(self, n: int, *, follow: bool = False) -> None:
        """The panel now has `n` rows; `follow` panels keep the cursor on the last row while it was there."""
        self.rows = n
        if self.SELECTABLE:
            if n == 0:
                self.cursor = None
            elif self.cursor is None or (follow and self.follow):
                self.cursor = n - 1 if follow else 0
            else:
                self.cursor = min(self.cursor, n - 1)
        self.invalidate()
        if self.SELECTABLE and self.cursor is not None:
            self.scroll_cursor_visible()
        else:
            self.top = max(0, min(self.top, self.max_top()))

    def invalidate(self, full: bool = False) -> None:
        """The data changed: drop this frame's strips and the header.  The repaint happens in flush():
        only the lines whose content changed (no layout either way)."""
        self._frame.clear()
        self._header_width = -1
        self._hint_lines = None
        if full:
            self._full = True
        self._dirty = True
        if not self._batched:
            self.flush()

    _full = True
    _dirty = True
    _batched = False
    _painted: list | None = None

    def begin_update(self) -> None:
        """The app is about to update several things of this panel: repaint once, in flush()."""
        self._batched = True

    def flush(self) -> None:
        """Repaint what changed since the last paint: every line if the geometry, the scroll position or
        the focus changed, else only the lines whose signature (row key, cursor mark) differs."""
        self._batched = False
        if not self._dirty:
            return
        if self.ctx is None:   # hidden, its old view dropped (app._push): paint it all once it has one
            self._full = True
            return
        self._dirty = False
        self._update_subtitle()
        sig = self._signature()
        old = self._painted
        self._painted = sig
        if self._full or old is None or len(old) != len(sig) or old[0] != sig[0]:
            self._full = False
            self.refresh()
            return
        width = self.content_width()
        y0 = None
        for y in range(1, len(sig)):
            if sig[y] is None or sig[y] != old[y]:
                if y0 is None:
                    y0 = y
            elif y0 is not None:
                self.refresh(Region(0, y0 - 1, width, y - y0))
                y0 = None
        if y0 is not None:
            self.refresh(Region(0, y0 - 1, width, len(sig) - y0))

    def _signature(self) -> list:
        """[geometry, line 0, line 1, ...]: what each line on screen shows (None: unknown, repaint)."""
        hh = self.header_height()
        h = self.content_height()
        sig: list = [(self.content_width(), h, self.top, self.has_focus, self.rows == 0)]
        for y in range(h):
            if y < hh:
                r = self._header[y]
                sig.append(tuple(r.segs))
            elif self.rows == 0:
                sig.append(None if y == hh else ("hint", y))
            else:
                row = self.top + y - hh
                if row >= self.rows:
                    sig.append(("blank",))
                    continue
                key = self.row_key(row)
                mark = 1 if self.SELECTABLE and row == self.cursor else 0
                sig.append(None if key is None else (key, mark))
        return sig

    def on_resize(self, event: events.Resize) -> None:
        self._cw = None
        self._ch = None
        self._cache.clear()
        self._header_width = -1
        if self.ctx is not None:
            self.relayout()
        self.invalidate(full=True)
        self.top = max(0, min(self.top, self.max_top()))   # the view stays full after a resize
        if self.SELECTABLE and self.cursor is not None and self.follow:
            self.scroll_to_row(self.max_top())
        elif self.SELECTABLE and self.cursor is not None:
            self.scroll_cursor_visible()

    def relayout(self) -> None:
        """The panel's size changed (content_width() is the new one): recompute what depends on it."""

    def header(self, width: int) -> list[Row]:
        return []

    def header_height(self) -> int:
        width = self.content_width()
        if self._header_width != width:
            self._header = self.header(width) if self.ctx is not None else []
            self._header_width = width
        return len(self._header)

    _cw: int | None = None
    _ch: int | None = None

    def content_width(self) -> int:
        if self._cw is None:
            w = self.content_region.width
            if w <= 0:
                return 1           # not laid out yet: do not remember
            self._cw = w
        return self._cw

    def content_height(self) -> int:
        if self._ch is None:
            h = self.content_region.height
            if h <= 0:
                return 0
            self._ch = h
        return self._ch

    def render_row(self, i: int, width: int) -> Row:
        return Row()

    def row_key(self, i: int) -> Hashable | None:
        """A key for the data row `i` shows (None: rebuild the row on every frame)."""
        return None

    def empty_hint(self) -> str:
        return self.EMPTY_HINT

    # --- geometry -------------------------------------------------------------------------------
    def body_height(self) -> int:
        return max(1, self.content_height() - self.header_height())

    def max_top(self) -> int:
        return max(0, self.rows - self.body_height())

    def scroll_to_row(self, top: int) -> None:
        top = max(0, min(top, self.max_top()))
        if top != self.top:
            self.top = top
            self.invalidate(full=True)

    # --- line API ---------------------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        width = self.content_width()
        base = self.base_style()
        hh = self.header_height()
        if y < hh:
            return self._strip(self._header[y], width, base)
        if self.ctx is None:   # on screen before its first view (the next push gives it one)
            return Strip.blank(width, base)
        if self.rows == 0:
            if self._hint_lines is None:
                hint = self.empty_hint() if self.ctx is not None else ""
                self._hint_lines = [Row.from_text(line, self.app.console) for line in
                                    Text(hint).wrap(self.app.console, max(8, width - 2))] if hint else []
            i = y - hh - 1
            if 0 <= i < len(self._hint_lines):
                r = Row(" ").extend(self._hint_lines[i])
                r.segs = [(t, self.st("hint") if s is None else s) for t, s in r.segs]
                return self._strip(r, width, base)
            return Strip.blank(width, base)
        row = self.top + y - hh
        if row >= self.rows or row < 0:
            return Strip.blank(width, base)
        return self._row_strip(row, width, base)

    def _row_strip(self, row: int, width: int, base: Style) -> Strip:
        selected = self.SELECTABLE and row == self.cursor
        mark = (2 if self.has_focus else 1) if selected else 0
        key = self.row_key(row)
        if key is not None:
            ck = (key, width, mark)
            strip = self._cache.get(ck)
            if strip is None:
                strip = self._build(row, width, base, mark)
                self._cache[ck] = strip
                if len(self._cache) > self.CACHE_ROWS:
                    self._cache.popitem(last=False)
            return strip
        strip = self._frame.get(row * 4 + mark)
        if strip is None:
            strip = self._frame[row * 4 + mark] = self._build(row, width, base, mark)
        return strip

    def _build(self, row: int, width: int, base: Style, mark: int) -> Strip:
        post = None if not mark else (self.st("cursor") if mark == 2 else self.st("sel"))
        return self._strip(self.render_row(row, width), width, base, post)

    def _strip(self, r: Row, width: int, base: Style, post: Style | None = None) -> Strip:
        mixed = self._mixed
        segs = []
        n = 0
        for text, style in r.segs:
            k = (style, post)
            st = mixed.get(k)
            if st is None:
                st = base + style if style is not None else base
                if post is not None:
                    st = st + post
                mixed[k] = st
            if n + len(text) > width or not text.isascii():
                room = width - n
                if room <= 0:
                    break
                if cell_len(text) > room:
                    text = text[: max(0, room - 1)] + "…"
            segs.append(Segment(text, st))
            n += len(text) if text.isascii() else cell_len(text)
        if n < width:
            k = (None, post)
            st = mixed.get(k)
            if st is None:
                st = mixed[k] = base + post if post is not None else base
            segs.append(Segment(" " * (width - n), st))
        return Strip(segs, width)

    def _update_subtitle(self) -> None:
        """Where the view is, in the bottom border (cheaper than a scrollbar column on every line)."""
        h = self.body_height()
        if self.rows > h:
            pos = f"{self.top + 1:,}-{min(self.top + h, self.rows):,} of {self.rows:,}"
            sub = f"{pos} · {self.KEY}" if self.KEY else pos
        else:
            sub = self.KEY
        if sub != self.border_subtitle:
            self.border_subtitle = sub

    # --- focus, mouse -----------------------------------------------------------------------------
    def on_focus(self) -> None:
        self.invalidate(full=True)

    def on_blur(self) -> None:
        self.invalidate(full=True)

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        event.stop()
        self.follow = False
        self.scroll_to_row(self.top + 3)

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        event.stop()
        self.follow = False
        self.scroll_to_row(self.top - 3)

    def on_click(self, event: events.Click) -> None:
        if self.SELECTABLE and self.rows:
            row = self.top + event.y - self.header_height()
            if 0 <= row < self.rows:
                self.move_cursor(row)

    # --- cursor -------------------------------------------------------------------------------------
    def scroll_cursor_visible(self) -> None:
        if self.cursor is None:
            return
        if self.follow and self.cursor == self.rows - 1:
            self.scroll_to_row(self.max_top())
            return
        h = self.body_height()
        if self.cursor < self.top:
            self.scroll_to_row(self.cursor)
        elif self.cursor >= self.top + h:
            self.scroll_to_row(self.cursor - h + 1)

    def move_cursor(self, to: int) -> None:
        if not self.SELECTABLE or self.rows == 0:
            return
        to = max(0, min(self.rows - 1, to))
        self.follow = to == self.rows - 1
        if to != self.cursor:
            self.cursor = to
            self.invalidate()
            self.cursor_moved()
        self.scroll_cursor_visible()

    def cursor_moved(self) -> None:
        pass

    def action_cursor(self, delta: int) -> None:
        if self.SELECTABLE:
            self.move_cursor((self.cursor or 0) + delta)
        else:
            self.scroll_to_row(self.top + delta)

    def action_cursor_page(self, direction: int) -> None:
        if self.SELECTABLE:
            self.move_cursor((self.cursor or 0) + direction * self.body_height())
        else:
            self.scroll_to_row(self.top + direction * self.body_height())

    def action_cursor_to(self, where: int) -> None:
        if self.SELECTABLE:
            self.move_cursor(where if where >= 0 else self.rows - 1)
        else:
            self.scroll_to_row(0 if where >= 0 else self.max_top())


def changed_style(panel: Panel, changed: bool, style: Style | None = None) -> Style | None:
    if changed:
        return panel.st("changed") if style is None else style + panel.st("changed")
    return style


class EventListPanel(Panel):
    """A panel listing the events of some kinds, following the snapshot's event window."""
    KINDS: tuple[str, ...] = ()

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
            self._seqs.extend(w.select(self.KINDS, since=self._end))
            self._end = w.end
        if self._seqs and self._seqs[0] < w.start:
            del self._seqs[:bisect.bisect_left(self._seqs, w.start)]
        self.set_rows(len(self._seqs), follow=True)
