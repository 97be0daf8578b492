"""Code: the selected vCPU's instructions around RIP (capstone), symbol+offset labels, the current
instruction highlighted, breakpoints marked; or (l) the source line RIP is on, from DWARF line info."""
from __future__ import annotations

from pathlib import Path

from ...debug.debuginfo import LineTable, line_table  # noqa: F401  (re-exported)
from ..base import Panel, Row, ViewCtx

SOURCE_CONTEXT = 200          # source lines shown around the current one

_cs = None


def _capstone():
    global _cs
    if _cs is None:
        import capstone
        _cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    return _cs


class CodePanel(Panel):
    PANEL_ID = "code"
    TITLE = "Code"
    KEY = "d · l source · b break · g run to"
    SELECTABLE = True
    TIER = 1
    EMPTY_HINT = "No code to show: the selected vCPU's RIP is not mapped."

    def __init__(self, image=None) -> None:
        super().__init__()
        self.image = image
        self.source_mode = False
        self._insns: list[tuple[int, int, str, str]] = []   # (addr, size, mnemonic, operands)
        self._lines: list[str] = []
        self._first_line = 1
        self._file = ""
        self._cur_line: int | None = None
        self._at: tuple | None = None      # (vcpu, rip, mode) the cursor was last put on
        self._aw = 11

    @property
    def lines(self) -> LineTable | None:
        return line_table(self.image) if self.image is not None else None

    def update_ctx(self, ctx: ViewCtx) -> None:
        self.ctx = ctx
        cv = ctx.snap.code[ctx.vcpu] if ctx.vcpu < len(ctx.snap.code) else None
        rip = ctx.snap.vcpus[ctx.vcpu].rip
        cur = None
        if self.source_mode:
            self._insns = []
            lt = self.lines
            loc = lt.where(rip) if lt else None
            src = lt.source(loc[0]) if loc else None
            if not loc or src is None:
                self._lines, self._cur_line, self._file = [], None, loc[0] if loc else ""
            else:
                self._file, line = loc
                lo = max(1, line - SOURCE_CONTEXT)
                hi = min(len(src), line + SOURCE_CONTEXT)
                self._first_line, self._lines, self._cur_line = lo, src[lo - 1:hi], line
                cur = line - lo
            self.set_rows(len(self._lines))
        else:
            self._insns = []
            if cv is not None:
                for ins in _capstone().disasm_lite(cv.data, cv.start):
                    self._insns.append(ins)
                if not any(a == rip for a, *_ in self._insns):   # misaligned: from RIP only
                    off = rip - cv.start
                    self._insns = list(_capstone().disasm_lite(cv.data[off:], rip)) if 0 <= off < len(cv.data) else []
            cur = next((i for i, ins in enumerate(self._insns) if ins[0] == rip), None)
            self._aw = len(f"{self._insns[-1][0]:#x}") + 1 if self._insns else 11
            self.set_rows(len(self._insns))
        at = (ctx.vcpu, rip, self.source_mode, ctx.snap.time)
        if at != self._at and cur is not None:
            self._at = at
            self.follow = False
            self.cursor = cur
            h = self.body_height()
            self.top = max(0, min(cur - h // 3, self.max_top()))
            self.invalidate(full=True)

    def relayout(self) -> None:
        # the height is known now: put the current line a third of the way down again
        if self.cursor is not None and self._at is not None:
            self.top = max(0, min(self.cursor - self.body_height() // 3, self.max_top()))

    def empty_hint(self) -> str:
        if self.source_mode:
            if self._file:
                return f"Source view: cannot find {self._file} (looked under guests/). l: back to the disassembly."
            return "Source view: no DWARF line info for this address (build the guest with -g). l: disassembly."
        return self.EMPTY_HINT

    def _bp_addrs(self) -> set[int]:
        return {b.addr for b in self.ctx.snap.breakpoints}

    def _update_subtitle(self) -> None:
        super()._update_subtitle()
        if self.ctx is not None:
            t = f"{self.TITLE} · vCPU {self.ctx.vcpu}"
            if self.source_mode:
                t += f" · {Path(self._file).name}:{self._cur_line}" if self._cur_line else " · source"
            if t != self.border_title:
                self.border_title = t

    def row_key(self, i: int):
        snap = self.ctx.snap
        rip = snap.vcpus[self.ctx.vcpu].rip
        bps = tuple(b.addr for b in snap.breakpoints)
        if self.source_mode:
            return ("src", self._file, self._first_line + i, self._cur_line, bps)
        ins = self._insns[i]
        return ("asm", ins, ins[0] == rip, ins[0] in bps, self._aw)

    def selected_addr(self) -> int | None:
        """The address of the selected line (source view: the line's first address), or None."""
        if self.cursor is None:
            return None
        if self.source_mode:
            lt = self.lines
            return lt.line_addr.get((self._file, self._first_line + self.cursor)) if lt else None
        return self._insns[self.cursor][0] if self.cursor < len(self._insns) else None

    def render_row(self, i: int, width: int) -> Row:
        snap = self.ctx.snap
        rip = snap.vcpus[self.ctx.vcpu].rip
        bps = self._bp_addrs()
        r = Row()
        if self.source_mode:
            n = self._first_line + i
            addr = self.lines.line_addr.get((self._file, n))
            cur = n == self._cur_line
            r.add("●" if addr is not None and addr in bps else " ", self.st("bad"))
            r.add("▶" if cur else " ", self.st("accent"))
            r.cell(f"{n}", 6, self.st("dim"), right=True)
            r.add("  ")
            r.add(self._lines[i].expandtabs(8), self.st("changed") if cur else None)
            return r
        addr, size, mnem, ops = self._insns[i]
        cur = addr == rip
        r.add("●" if addr in bps else " ", self.st("bad"))
        r.add("▶ " if cur else "  ", self.st("accent"))
        hit = self.image.lookup(addr) if self.image is not None else None
        label = (f"{hit[0].name}+{hit[1]:#x}" if hit[1] else hit[0].name) if hit else ""
        aw = self._aw            # the address column: as wide as the longest address shown
        r.cell(f"{addr:#x}", aw, self.st("dim"))
        # narrow panel: the label column gives way first (the instruction needs about 34 cells)
        r.cell(label, max(12, min(24, width - 4 - aw - 34)), self.st("accent") if hit and not hit[1] else self.st("dim"))
        r.add(f" {mnem:<7} {ops}", self.st("changed") if cur else None)
        return r
