"""Guest reason memory: each vCPU's 64-byte area as a hexdump, the reason field decoded."""
from __future__ import annotations

from ..base import Panel, Row, ViewCtx
from ..fmt import REASONS

LINES_PER_VCPU = 5


class ReasonPanel(Panel):
    PANEL_ID = "reason"
    TITLE = "Guest reason memory"
    KEY = "5"
    order: list[int] = []

    def update_ctx(self, ctx: ViewCtx) -> None:
        self.ctx = ctx
        self.order = sorted(range(len(ctx.snap.vcpus)), key=lambda i: (i != ctx.vcpu, i))
        self.set_rows(len(self.order) * LINES_PER_VCPU)

    def row_key(self, i: int):
        ctx = self.ctx
        k, line = divmod(i, LINES_PER_VCPU)
        vi = self.order[k]
        base = ctx.base.reason_areas[vi] if vi < len(ctx.base.reason_areas) else None
        a = ctx.snap.apf[vi]
        return (vi, line, ctx.snap.reason_areas[vi], base, vi == ctx.vcpu, a.area_gpa, a.enabled)

    def render_row(self, i: int, width: int) -> Row:
        ctx = self.ctx
        k, line = divmod(i, LINES_PER_VCPU)
        vi = self.order[k]
        area = ctx.snap.reason_areas[vi]
        base_area = ctx.base.reason_areas[vi] if vi < len(ctx.base.reason_areas) else area
        apf = ctx.snap.apf[vi]
        if line == 0:
            r = Row(f"{'▶' if vi == ctx.vcpu else ' '} vCPU {vi} ", self.st("accent"))
            if area is None:
                r.add("no area yet: APF off (the guest writes GPA|1 to MSR 0x4b564d02)", self.st("hint"))
                return r
            reason = int.from_bytes(area[:4], "little")
            r.add(f"area {apf.area_gpa:#x}  " if apf.enabled else "area (APF now off)  ", self.st("dim"))
            r.add("reason = ")
            changed = base_area is None or area[:4] != base_area[:4]
            r.add(f"{reason} {REASONS.get(reason, '?')}",
                  self.st("changed") if changed else (self.st("warn") if reason else None))
            if changed:
                r.add("  (changed)", self.st("dim"))
            return r
        if area is None:
            return Row()
        off = (line - 1) * 16
        r = Row(f"  +{off:02x} ", self.st("dim"))
        for j in range(16):
            b = area[off + j]
            if base_area is None or base_area[off + j] != b:
                st = self.st("changed")
            elif off + j < 4:
                st = self.st("accent")
            elif b == 0:
                st = self.st("dim")
            else:
                st = None
            r.add(f"{b:02x}", st)
            r.add(" " if j != 7 else "  ")
        if width >= 72:
            r.add(" " + "".join(chr(c) if 32 <= c < 127 else "." for c in area[off:off + 16]), self.st("dim"))
        return r
