"""Guest reason memory: each vCPU's 64-byte area as a hexdump, the reason field decoded."""
from __future__ import annotations

from rich.text import Text

from ..base import Panel, ViewCtx
from ..fmt import REASONS

LINES_PER_VCPU = 5


class ReasonPanel(Panel):
    PANEL_ID = "reason"
    TITLE = "Guest reason memory"
    KEY = "5"

    def update_ctx(self, ctx: ViewCtx) -> None:
        self.ctx = ctx
        self.order = sorted(range(len(ctx.snap.vcpus)), key=lambda i: (i != ctx.vcpu, i))
        self.set_rows(len(self.order) * LINES_PER_VCPU)

    def render_row(self, i: int, width: int) -> Text:
        ctx = self.ctx
        k, line = divmod(i, LINES_PER_VCPU)
        vi = self.order[k]
        area = ctx.snap.reason_areas[vi]
        base_area = ctx.base.reason_areas[vi] if vi < len(ctx.base.reason_areas) else area
        apf = ctx.snap.apf[vi]
        if line == 0:
            t = Text()
            t.append(f"{'▶' if vi == ctx.vcpu else ' '} vCPU {vi} ", style=self.st("accent"))
            if area is None:
                t.append("no area: APF not enabled (the guest writes its area's GPA | 1 to "
                         "MSR_KVM_ASYNC_PF_EN)", style=self.st("hint"))
                return t
            gpa = apf.area_gpa if apf.enabled else None
            reason = int.from_bytes(area[:4], "little")
            t.append(f"area {gpa:#x}  " if gpa is not None else "area (APF now off)  ", style=self.st("dim"))
            t.append("reason = ")
            changed = base_area is None or area[:4] != base_area[:4]
            st = self.st("changed") if changed else (self.st("warn") if reason else None)
            t.append(f"{reason} {REASONS.get(reason, '?')}", style=st)
            if changed:
                t.append("  (changed)", style=self.st("dim"))
            return t
        if area is None:
            return Text("")
        off = (line - 1) * 16
        gpa = (apf.area_gpa if apf.enabled else 0) + off
        t = Text(f"  +{off:02x} ", style=self.st("dim"))
        for j in range(16):
            b = area[off + j]
            changed = base_area is None or base_area[off + j] != b
            if changed:
                st = self.st("changed")
            elif off + j < 4:
                st = self.st("accent")
            elif b == 0:
                st = self.st("dim")
            else:
                st = None
            t.append(f"{b:02x}", style=st)
            t.append(" " if j != 7 else "  ")
        t.append(" " + "".join(chr(c) if 32 <= c < 127 else "." for c in area[off:off + 16]), style=self.st("dim"))
        return t
