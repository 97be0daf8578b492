"""Registers of the selected vCPU: general registers, RFLAGS decoded, control registers, EFER,
segment selectors and CPL; what changed since the previous pause highlighted.  A cursor picks one
register (arrows), Enter edits it (the app sends Engine.set_register)."""
from __future__ import annotations

from textual.binding import Binding

from ..base import Panel, Row, ViewCtx, changed_style

GPRS = "rax rbx rcx rdx rsi rdi rbp rsp r8 r9 r10 r11 r12 r13 r14 r15 rip".split()
FLAGS = ((0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"), (10, "DF"),
         (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC"), (19, "VIF"), (20, "VIP"), (21, "ID"))
CR0_BITS = ((0, "PE"), (1, "MP"), (2, "EM"), (3, "TS"), (4, "ET"), (5, "NE"), (16, "WP"), (18, "AM"),
            (29, "NW"), (30, "CD"), (31, "PG"))
CR4_BITS = ((0, "VME"), (1, "PVI"), (2, "TSD"), (3, "DE"), (4, "PSE"), (5, "PAE"), (6, "MCE"), (7, "PGE"),
            (8, "PCE"), (9, "OSFXSR"), (10, "OSXMMEXCPT"), (11, "UMIP"), (16, "FSGSBASE"), (17, "PCIDE"),
            (18, "OSXSAVE"), (20, "SMEP"), (21, "SMAP"))
EFER_BITS = ((0, "SCE"), (8, "LME"), (10, "LMA"), (11, "NXE"))


def bits(value: int, table) -> str:
    return " ".join(name for b, name in table if value >> b & 1)


WIDE_NAME = 8          # name column of the registers with long names (fs_base, rflags)
SEGS = ("cs", "ss", "ds", "es", "fs", "gs")


def grid(width: int) -> list[tuple[str, tuple[str, ...]]]:
    """The panel's rows at a content width: (kind, register names).  64-bit registers go 3, 2 or 1 to a
    row as they fit; the order of the names is the cursor's order."""
    per = 3 if width >= 70 else 2 if width >= 46 else 1
    rows: list[tuple[str, tuple[str, ...]]] = []
    for k in range(0, len(GPRS), per):
        rows.append(("q", tuple(GPRS[k:k + per])))
    for name in ("rflags", "cr0", "cr4", "efer"):
        rows.append(("bits", (name,)))
    wide = 2 if width >= 52 else 1
    for pair in (("cr2", "cr3"), ("fs_base", "gs_base")):
        for k in range(0, 2, wide):
            rows.append(("wq", pair[k:k + wide]))
    segs = SEGS + ("cpl",)
    per_seg = max(1, (width - 1) // 10)
    for k in range(0, len(segs), per_seg):
        rows.append(("segs", segs[k:k + per_seg]))
    return rows


def height_for(width: int) -> int:
    """Lines the panel needs at a content width (the debug area sizes it by this)."""
    return len(grid(width))


class RegsPanel(Panel):
    PANEL_ID = "regs"
    TITLE = "Registers"
    KEY = "r · enter edit"
    TIER = 1
    EMPTY_HINT = "No registers: the machine has not been built."

    BINDINGS = [
        Binding("up", "move(0, -1)", "up", show=False),
        Binding("down", "move(0, 1)", "down", show=False),
        Binding("left", "move(-1, 0)", "left", show=False),
        Binding("right", "move(1, 0)", "right", show=False),
        Binding("home", "select('rax')", "first", show=False),
        Binding("end", "select('gs')", "last", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.selected = "rax"
        self._grid: list[tuple[str, tuple[str, ...]]] = []
        self._grid_width = -1
        self._regs: dict = {}
        self._old: dict = {}

    def update_ctx(self, ctx: ViewCtx) -> None:
        self.ctx = ctx
        snap, base = ctx.snap, ctx.base
        self._regs = snap.regs[ctx.vcpu] if ctx.vcpu < len(snap.regs) else {}
        self._old = base.regs[ctx.vcpu] if ctx.vcpu < len(base.regs) else {}
        self._regrid()

    def _regrid(self) -> None:
        w = self.content_width()
        if w != self._grid_width:
            self._grid, self._grid_width = grid(w), w
        self.set_rows(len(self._grid) if self._regs else 0)

    def relayout(self) -> None:
        self._regrid()

    def value(self, name: str) -> int | None:
        return self._regs.get(name)

    def _changed(self, name: str) -> bool:
        v = self._regs.get(name)
        return v != self._old.get(name, v)

    # --- cursor ---------------------------------------------------------------------------------
    def _where(self) -> tuple[int, int]:
        for y, (_k, names) in enumerate(self._grid):
            if self.selected in names:
                return y, names.index(self.selected)
        return 0, 0

    def action_move(self, dx: int, dy: int) -> None:
        if not self._grid:
            return
        y, x = self._where()
        if dy:
            y = max(0, min(len(self._grid) - 1, y + dy))
            names = self._grid[y][1]
            x = min(x, len(names) - 1)
        else:
            names = self._grid[y][1]
            x += dx
            if x < 0 and y > 0:
                y -= 1
                x = len(self._grid[y][1]) - 1
            elif x >= len(names) and y < len(self._grid) - 1:
                y, x = y + 1, 0
            x = max(0, min(len(self._grid[y][1]) - 1, x))
        self.action_select(self._grid[y][1][x])

    def action_select(self, name: str) -> None:
        self.selected = name
        self.invalidate()
        y = self._where()[0]
        if y < self.top:
            self.scroll_to_row(y)
        elif y >= self.top + self.body_height():
            self.scroll_to_row(y - self.body_height() + 1)

    def on_click(self, event) -> None:
        y = self.top + event.y - self.header_height()
        if not 0 <= y < len(self._grid):
            return
        kind, names = self._grid[y]
        if kind == "segs":
            x = min(len(names) - 1, max(0, (event.x - 1) // 10))
        elif kind in ("q", "wq"):
            cw = (4 if kind == "q" else WIDE_NAME) + 18
            x = min(len(names) - 1, max(0, (event.x - 1) // cw))
        else:
            x = 0
        self.action_select(names[x])

    # --- rows -----------------------------------------------------------------------------------
    def row_key(self, i: int):
        kind, names = self._grid[i]
        sel = self.selected if self.selected in names else None
        return (kind, tuple((n, self._regs.get(n), self._changed(n)) for n in names), sel,
                self.has_focus if sel else None)

    def _cursor(self, name: str):
        if name != self.selected:
            return None
        return self.st("cursor") if self.has_focus else self.st("sel")

    def render_row(self, i: int, width: int) -> Row:
        kind, names = self._grid[i]
        regs = self._regs
        r = Row(" ")
        if kind in ("q", "wq"):
            nw = 4 if kind == "q" else WIDE_NAME
            for k, name in enumerate(names):
                if k:
                    r.add("  ")
                cur = self._cursor(name)
                r.cell(name, nw, self.st("head") + cur if cur else self.st("head"))
                v = regs.get(name)
                r.add(f"{v:016x}" if v is not None else "-".rjust(16), self._style(name, cur))
        elif kind == "bits":
            name = names[0]
            cur = self._cursor(name)
            r.cell(name, WIDE_NAME, self.st("head") + cur if cur else self.st("head"))
            v = regs.get(name)
            if v is None:
                return r.add("-", self._style(name, cur))
            r.add(f"{v:#010x}", self._style(name, cur))
            table = {"rflags": FLAGS, "cr0": CR0_BITS, "cr4": CR4_BITS, "efer": EFER_BITS}[name]
            r.add(f"  {bits(v, table)}", self.st("accent"))
        else:
            for name in names:
                cur = self._cursor(name)
                label = "CPL" if name == "cpl" else name
                r.add(f"{label}=", self.st("head") + cur if cur else self.st("head"))
                v = regs.get(name)
                r.add("-" if v is None else f"{v}" if name == "cpl" else f"{v:#06x}", self._style(name, cur))
                r.add(" ")
        return r

    def _style(self, name: str, cur):
        """The value's style: changed or not (the cursor marks the name, so a change stays visible)."""
        return changed_style(self, self._changed(name))
