"""Guest memory: a hexdump of 16 rows at the engine's memory expression (the reason area by default,
`rsp`, a symbol, `phys 0x1000`), re-evaluated at every snapshot; bytes that changed since the previous
pause highlighted, rows labelled with the symbols that start in them."""
from __future__ import annotations

import bisect

from ..base import Panel, Row, ViewCtx

ASCII_EXTRA = 69           # cells a row needs besides its address to show the ASCII column too


class GuestMemPanel(Panel):
    PANEL_ID = "gmem"
    TITLE = "Guest memory"
    KEY = "m · M address"
    TIER = 1
    EMPTY_HINT = "Nothing to show: M sets the address (reason, rsp, rip, cr2, a symbol, phys 0x1000)."

    def __init__(self, image=None) -> None:
        super().__init__()
        self.image = image
        syms = [s for s in (image.symbols if image is not None else ()) if s.addr >= 0x1000]
        self._sym_addrs = [s.addr for s in syms]
        self._syms = syms
        self._view = None
        self._old: dict[int, bytes] = {}     # the baseline's rows by address (for "changed")

    def update_ctx(self, ctx: ViewCtx) -> None:
        self.ctx = ctx
        v = ctx.vcpu
        mv = ctx.snap.memory[v] if v < len(ctx.snap.memory) else None
        old = ctx.base.memory[v] if v < len(ctx.base.memory) else None
        self._view = mv
        self._old = {}
        if old is not None and old.addr is not None and mv is not None and old.physical == mv.physical:
            self._old = {old.addr + 16 * i: r for i, r in enumerate(old.rows) if r is not None}
        self.set_rows(len(mv.rows) if mv is not None and mv.addr is not None else 0)

    def header(self, width: int) -> list[Row]:
        mv = self._view
        if mv is None:
            return []
        r = Row(" ")
        r.add(mv.expr, self.st("head"))
        if mv.error or mv.addr is None:
            r.add(f"  {mv.error or 'no address'}", self.st("bad"))
            return [r]
        r.add(f" → {mv.addr:#x}", self.st("accent"))
        hit = self.image.lookup(mv.addr) if self.image is not None else None
        if hit is not None and hit[0].addr >= 0x1000:
            r.add(f" {hit[0].name}+{hit[1]:#x}" if hit[1] else f" {hit[0].name}", self.st("accent"))
        r.add("  guest-physical" if mv.physical else f"  virtual (vCPU {self.ctx.vcpu})", self.st("dim"))
        return [r]

    def empty_hint(self) -> str:
        mv = self._view
        if mv is not None and mv.error:
            return f"{mv.error}. M sets another address."
        return self.EMPTY_HINT

    def _labels(self, addr: int) -> str:
        """Symbols that start in [addr, addr + 16), `name` at the row start, `+3 name` inside."""
        i = bisect.bisect_left(self._sym_addrs, addr)
        out = []
        while i < len(self._syms) and self._syms[i].addr < addr + 16:
            s = self._syms[i]
            out.append(s.name if s.addr == addr else f"+{s.addr - addr:x} {s.name}")
            i += 1
        return " ".join(dict.fromkeys(out))

    def _row(self, i: int) -> tuple[int, bytes | None, bytes | None]:
        mv = self._view
        a = mv.addr + 16 * i
        return a, mv.rows[i], self._old.get(a)

    def row_key(self, i: int):
        a, data, old = self._row(i)
        return (a, data, old, self._view.physical)

    def render_row(self, i: int, width: int) -> Row:
        a, data, old = self._row(i)
        mv = self._view
        aw = len(f"{mv.addr + 16 * len(mv.rows):x}")
        r = Row(" ")
        r.add(f"{a:0{aw}x} ", self.st("dim"))
        if data is None:
            r.add(" not mapped" if not mv.physical else " outside guest RAM", self.st("hint"))
            return r
        changed, dim = self.st("changed"), self.st("dim")
        for j, b in enumerate(data):
            st = changed if old is not None and old[j] != b else (dim if b == 0 else None)
            r.add(f" {b:02x}", st)
            if j == 7:
                r.add(" ")
        if width >= aw + ASCII_EXTRA:
            r.add("  ")
            for j, b in enumerate(data):
                ch = chr(b) if 32 <= b < 127 else "."
                r.add(ch, changed if old is not None and old[j] != b else dim)
        label = self._labels(a)
        if label:
            r.add(f"  {label}", self.st("accent"))
        return r
