"""What every panel shares: the view context, and a virtualised line-panel base class.

A panel never talks to the engine.  On each UI tick the app hands every visible panel a
:class:`ViewCtx` (the latest snapshot, the baseline to highlight changes against, the selected
vCPU); the panel derives its rows from it (cheap: references into the immutable snapshot) and
renders only the rows on screen, through Textual's line API, into cached strips.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

if TYPE_CHECKING:
    from ..engine import Snapshot


@dataclass(frozen=True)
class ViewCtx:
    snap: "Snapshot"
    base: "Snapshot"           # highlight what differs from this (the previous pause)
    vcpu: int                  # the selected vCPU
    selected_event: int | None = None   # sequence number of the event the timeline points at

    @property
    def nvcpus(self) -> int:
        return len(self.snap.vcpus)


STYLE_CLASSES = {
    "apf--changed", "apf--dim", "apf--good", "apf--bad", "apf--warn", "apf--accent", "apf--head",
    "apf--cursor", "apf--swapped", "apf--inflight", "apf--resident", "apf--eligible", "apf--hint",
    "apf--key", "apf--sel",
}


class Panel(ScrollView, can_focus=True):
    """A bordered, focusable panel whose rows are rendered on demand.

    Subclasses set PANEL_ID, TITLE, KEY, EMPTY_HINT and implement `update_ctx` (compute rows and
    call `set_rows`) and `render_row(i, width) -> Text`.  `header(width) -> list[Text]` gives fixed
    lines above the scrolled rows.  Panels with `SELECTABLE = True` keep a cursor row.
    """

    PANEL_ID = "panel"
    TITLE = "Panel"
    KEY = ""
    EMPTY_HINT = ""
    SELECTABLE = False
    COMPONENT_CLASSES = STYLE_CLASSES

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
        self.cursor: int | None = None
        self._cache: dict[tuple, Strip] = {}
        self._header: list[Text] = []
        self._header_width = -1
        self._hint_lines: list[Text] | None = None
        self.border_title = f"{self.TITLE}"
        if self.KEY:
            self.border_subtitle = f"{self.KEY}"
        self._styles: dict[str, Style] = {}

    # --- styles ---------------------------------------------------------------------------------
    def st(self, name: str) -> Style:
        """The Rich style of component class `apf--<name>` (theme-aware, cached per theme)."""
        s = self._styles.get(name)
        if s is None:
            s = self._styles[name] = self.get_component_rich_style(f"apf--{name}", partial=True)
        return s

    def notify_style_update(self) -> None:
        self._styles.clear()
        self.invalidate()
        super().notify_style_update()

    # --- data -----------------------------------------------------------------------------------
    def update_ctx(self, ctx: ViewCtx) -> None:
        self.ctx = ctx
        self.set_rows(0)

    def set_rows(self, n: int, *, follow: bool = False) -> None:
        at_end = self.cursor is not None and self.rows and self.cursor >= self.rows - 1
        self.rows = n
        if self.SELECTABLE:
            if n == 0:
                self.cursor = None
            elif self.cursor is None or (follow and at_end):
                self.cursor = n - 1 if follow else 0
            else:
                self.cursor = min(self.cursor, n - 1)
        self.invalidate()
        self._resize_virtual()
        if self.SELECTABLE and self.cursor is not None and (follow and at_end):
            self.scroll_cursor_visible()

    def invalidate(self) -> None:
        self._cache.clear()
        self._header_width = -1
        self._hint_lines = None
        self.refresh()

    def _resize_virtual(self) -> None:
        width = max(1, self.scrollable_content_region.width)
        self.virtual_size = Size(width, self.rows + self.header_height())

    def on_resize(self) -> None:
        self.invalidate()
        self._resize_virtual()

    def header(self, width: int) -> list[Text]:
        return []

    def header_height(self) -> int:
        width = max(1, self.scrollable_content_region.width)
        if self._header_width != width:
            self._header = self.header(width) if self.ctx is not None else []
            self._header_width = width
        return len(self._header)

    def render_row(self, i: int, width: int) -> Text:
        return Text("")

    def empty_hint(self) -> str:
        return self.EMPTY_HINT

    # --- line API ---------------------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base = self.rich_style
        hh = self.header_height()
        if y < hh:
            return self._strip(self._header[y], width, base)
        if self.rows == 0:
            if self._hint_lines is None:
                hint = self.empty_hint() if self.ctx is not None else ""
                self._hint_lines = list(Text(hint, style=self.st("hint")).wrap(self.app.console, max(8, width - 2))) \
                    if hint else []
            i = y - hh - 1
            if 0 <= i < len(self._hint_lines):
                return self._strip(Text(" ") + self._hint_lines[i], width, base)
            return Strip.blank(width, base)
        row = int(self.scroll_y) + y - hh
        if row >= self.rows or row < 0:
            return Strip.blank(width, base)
        selected = self.SELECTABLE and row == self.cursor
        key = (row, width, selected)
        strip = self._cache.get(key)
        if strip is None:
            text = self.render_row(row, width)
            strip = self._strip(text, width, base, self.st("cursor") if selected and self.has_focus_within_app()
                                else (self.st("sel") if selected else None))
            if len(self._cache) > 4000:
                self._cache.clear()
            self._cache[key] = strip
        return strip

    def has_focus_within_app(self) -> bool:
        return self.has_focus

    def _strip(self, text: Text, width: int, base: Style, post: Style | None = None) -> Strip:
        text.no_wrap = True
        text.overflow = "ellipsis"
        if text.cell_len > width:
            text.truncate(width, overflow="ellipsis")
        segs = list(text.render(self.app.console))
        strip = Strip(segs).adjust_cell_length(width)
        strip = strip.apply_style(base)
        if post is not None:
            strip = Strip(Segment.apply_style(strip, post_style=post), width)
        return strip

    def on_focus(self) -> None:
        self._cache.clear()
        self.refresh()

    def on_blur(self) -> None:
        self._cache.clear()
        self.refresh()

    # --- cursor -------------------------------------------------------------------------------------
    def body_height(self) -> int:
        return max(1, self.scrollable_content_region.height - self.header_height())

    def scroll_cursor_visible(self) -> None:
        if self.cursor is None:
            return
        top = int(self.scroll_y)
        h = self.body_height()
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + h:
            self.scroll_to(y=self.cursor - h + 1, animate=False, immediate=True)

    def move_cursor(self, to: int) -> None:
        if not self.SELECTABLE or self.rows == 0:
            return
        to = max(0, min(self.rows - 1, to))
        if to != self.cursor:
            self.cursor = to
            self._cache.clear()
            self.refresh()
            self.cursor_moved()
        self.scroll_cursor_visible()

    def cursor_moved(self) -> None:
        pass

    def action_cursor(self, delta: int) -> None:
        if self.SELECTABLE:
            self.move_cursor((self.cursor or 0) + delta)
        else:
            self.scroll_to(y=self.scroll_y + delta, animate=False)

    def action_cursor_page(self, direction: int) -> None:
        if self.SELECTABLE:
            self.move_cursor((self.cursor or 0) + direction * self.body_height())
        else:
            self.scroll_to(y=self.scroll_y + direction * self.body_height(), animate=False)

    def action_cursor_to(self, where: int) -> None:
        if self.SELECTABLE:
            self.move_cursor(where if where >= 0 else self.rows - 1)
        else:
            self.scroll_to(y=0 if where >= 0 else self.max_scroll_y, animate=False)

    def on_click(self, event: Any) -> None:
        if self.SELECTABLE and self.rows:
            y = event.y - self.gutter.top if hasattr(self, "gutter") else event.y
            row = int(self.scroll_y) + y - self.header_height()
            if 0 <= row < self.rows:
                self.move_cursor(row)


def cell(text: str, width: int, style: Style | str | None = None, right: bool = False) -> Text:
    """A fixed-width cell (truncated or padded)."""
    if len(text) > width:
        text = text[: max(0, width - 1)] + "…" if width > 1 else text[:width]
    text = text.rjust(width) if right else text.ljust(width)
    return Text(text, style=style or "")


def changed_style(panel: Panel, changed: bool, style: Style | None = None) -> Style | None:
    if changed:
        return panel.st("changed") if style is None else style + panel.st("changed")
    return style
