"""Registers of the selected vCPU: general registers, RFLAGS decoded, control registers, EFER,
segment selectors and CPL; what changed since the previous pause highlighted."""
from __future__ import annotations

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


class RegsPanel(Panel):
    PANEL_ID = "regs"
    TITLE = "Registers"
    KEY = "r"
    TIER = 1
    EMPTY_HINT = "No registers: the machine has not been built."

    def update_ctx(self, ctx: ViewCtx) -> None:
        self.ctx = ctx
        self._rows = self._build_rows(ctx)
        self.set_rows(len(self._rows))

    def _build_rows(self, ctx: ViewCtx) -> list[tuple]:
        snap, base = ctx.snap, ctx.base
        regs = snap.regs[ctx.vcpu] if ctx.vcpu < len(snap.regs) else {}
        old = base.regs[ctx.vcpu] if ctx.vcpu < len(base.regs) else {}
        if not regs:
            return []
        out = []
        gprs = [g for g in GPRS if g in regs]
        for k in range(0, len(gprs), 2):
            out.append(("pair", tuple((g, regs[g], regs[g] != old.get(g, regs[g])) for g in gprs[k:k + 2])))
        for name, table in (("rflags", FLAGS), ("cr0", CR0_BITS), ("cr4", CR4_BITS), ("efer", EFER_BITS)):
            if name in regs:
                out.append(("bits", name, regs[name], bits(regs[name], table), regs[name] != old.get(name, regs[name])))
        for name in ("cr2", "cr3"):
            if name in regs:
                out.append(("pair", ((name, regs[name], regs[name] != old.get(name, regs[name])),)))
        segs = tuple((s, regs[s], regs[s] != old.get(s, regs[s])) for s in ("cs", "ss", "ds", "es", "fs", "gs") if s in regs)
        out.append(("segs", segs, regs.get("cpl"), regs.get("cpl") != old.get("cpl", regs.get("cpl"))))
        for name in ("fs_base", "gs_base"):
            if name in regs:
                out.append(("pair", ((name, regs[name], regs[name] != old.get(name, regs[name])),)))
        return out

    def row_key(self, i: int):
        return self._rows[i]

    def render_row(self, i: int, width: int) -> Row:
        row = self._rows[i]
        r = Row(" ")
        if row[0] == "pair":
            for name, value, ch in row[1]:
                r.cell(name, 8, self.st("head"))
                r.add(f"{value:016x}", changed_style(self, ch))
                r.add("  ")
        elif row[0] == "bits":
            _, name, value, decoded, ch = row
            r.cell(name, 8, self.st("head"))
            r.add(f"{value:#010x}", changed_style(self, ch))
            r.add(f"  {decoded}", self.st("accent"))
        else:
            _, segs, cpl, ch = row
            for name, value, c in segs:
                r.add(f"{name}=", self.st("head"))
                r.add(f"{value:#06x}", changed_style(self, c))
                r.add(" ")
            r.add(" CPL=", self.st("head"))
            r.add(f"{cpl}", changed_style(self, ch))
        return r
