"""Where the debugger panels go.  Code, Registers, Stack, Guest memory and Breakpoints share one area
whose columns depend on the terminal's width: side by side when they fit, stacked in two or three
columns when not (a plain Horizontal of fixed Verticals cannot regroup them), so each keeps a width it
can be read at.  `plan` is a pure function; DebugArea applies it with absolute offsets."""
from __future__ import annotations

from textual.widget import Widget

from .base import Panel
from .panels.regs import height_for

#: the panels of the area, in the order they are placed
DEBUG_PANELS = ("code", "regs", "stack", "gmem", "points")
MIN_W = {"code": 60, "regs": 48, "stack": 46, "gmem": 66, "points": 46}
PREF_W = {"regs": 74, "stack": 62, "gmem": 78, "points": 64}
#: the code column's share before the others grow past their minimum (its label column fits then)
CODE_FIRST = 64
#: who gets spare width first, up to PREF_W (the code column comes second, up to CODE_FIRST, and takes
#: what is left)
GROW = ("gmem", "stack", "regs", "points")
#: arrangements, best first: the first whose columns fit (at their minimum widths) is used
TEMPLATES = (
    (("code",), ("regs",), ("stack",), ("gmem",), ("points",)),
    (("code",), ("regs", "stack"), ("gmem",), ("points",)),
    (("code",), ("regs", "stack"), ("gmem", "points")),
    (("code", "gmem", "points"), ("regs", "stack")),
    (("code", "gmem", "regs", "stack", "points"),),
)
MIN_H = 4
#: the least height a panel with a preference is shrunk to (a header and two rows for the breakpoints)
MIN_PREF_H = {"points": 8, "regs": 6, "gmem": 6}


def plan(width: int, height: int, visible: list[str], pref_h: dict[str, int]) -> dict[str, tuple[int, int, int, int]]:
    """(x, y, w, h) of each visible panel.  `pref_h`: the height a panel wants when it shares a column
    (panels not in it share what is left)."""
    vis = set(visible)
    cols: list[tuple[str, ...]] = []
    for t in TEMPLATES:
        cols = [c2 for c2 in (tuple(p for p in c if p in vis) for c in t) if c2]
        if sum(max(MIN_W[p] for p in c) for c in cols) <= width:
            break
    if not cols:
        return {}
    widths = [max(MIN_W[p] for p in c) for c in cols]
    spare = width - sum(widths)
    main = next((i for i, c in enumerate(cols) if "code" in c), 0)
    for g in ("gmem", "code") + GROW[1:]:
        for i, c in enumerate(cols):
            if g in c and (g == "code" or "code" not in c) and spare > 0:
                want = CODE_FIRST if g == "code" else max(PREF_W[p] for p in c)
                add = min(spare, want - widths[i])
                if add > 0:
                    widths[i] += add
                    spare -= add
    widths[main] += max(0, spare)
    if sum(widths) > width:            # narrower than the minimum: the main column gives way
        widths[main] = max(8, widths[main] - (sum(widths) - width))
    out: dict[str, tuple[int, int, int, int]] = {}
    x = 0
    for c, w in zip(cols, widths):
        y = 0
        for p, h in zip(c, split(height, [pref_h.get(p) for p in c], [MIN_PREF_H.get(p, 3) for p in c])):
            out[p] = (x, y, w, h)
            y += h
        x += w
    return out


def split(height: int, prefs: list[int | None], mins: list[int] | None = None) -> list[int]:
    """Heights of panels stacked in `height` rows: those with a preference get it (shrunk in proportion
    when the others would get less than half the column), the others share the rest."""
    n = len(prefs)
    if n == 1:
        return [height]
    flex = [i for i, p in enumerate(prefs) if p is None] or [max(range(n), key=lambda i: prefs[i])]
    fixed = {i: p for i, p in enumerate(prefs) if i not in flex}
    room = height - max(MIN_H * len(flex), height // 2)
    total = sum(fixed.values())
    if total > room:
        mins = mins or [3] * n
        fixed = {i: min(p, max(mins[i], p * max(0, room) // max(1, total))) for i, p in fixed.items()}
        while sum(fixed.values()) > room:       # the minimums overshoot: the tallest gives way first
            over = [i for i in fixed if fixed[i] > min(mins[i], prefs[i])]
            if not over:
                break
            fixed[max(over, key=lambda i: fixed[i])] -= 1
    rest = max(0, height - sum(fixed.values()))
    out = []
    for i in range(n):
        if i in fixed:
            out.append(fixed[i])
        else:
            k = flex.index(i)
            out.append(rest // len(flex) + (1 if k < rest % len(flex) else 0))
    return out


class DebugArea(Widget):
    """The container of the debugger panels (see `plan`)."""

    DEFAULT_CSS = """
    DebugArea { height: 12fr; }
    DebugArea > .panel { position: absolute; }
    """

    def on_resize(self) -> None:
        self.arrange_panels()

    def arrange_panels(self) -> None:
        w, h = self.size
        if w <= 0 or h <= 0:
            return
        panels = {p.PANEL_ID: p for p in self.query_children(Panel)}
        visible = [pid for pid in DEBUG_PANELS if pid in panels and panels[pid].display]
        pref = {}
        if "points" in panels:
            pref["points"] = max(3, len(getattr(panels["points"], "_points", ()))) + 3
        if "gmem" in panels:
            pref["gmem"] = 16 + 3
        regions = plan(w, h, visible, pref)
        if "regs" in regions:      # its height depends on its width: the grid of registers
            x, y, rw, _h = regions["regs"]
            pref["regs"] = height_for(rw - 2) + 2
            regions = plan(w, h, visible, pref)
        maximized = self.screen.maximized
        for pid, (x, y, rw, rh) in regions.items():
            p = panels[pid]
            if p is maximized:
                continue
            st = p.styles
            if (st.offset.x.value, st.offset.y.value) != (x, y) or st.width is None or \
                    st.width.value != rw or st.height is None or st.height.value != rh:
                st.offset = (x, y)
                st.width = rw
                st.height = rh

    def release(self, panel: Panel) -> None:
        """`panel` is about to be zoomed: drop its place in the area (arrange_panels gives it back)."""
        panel.styles.offset = None
        panel.styles.width = None
        panel.styles.height = None
