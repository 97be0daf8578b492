"""Stack: the selected vCPU's qwords from RSP up, values that point into the image named; inside an
interrupt or exception handler, the frame the delivery pushed (error code, RIP, CS, RFLAGS, RSP, SS)
summed up in the header and bracketed on its rows (listed below them when deeper than the rows read)."""
from __future__ import annotations

from ..base import Panel, Row, ViewCtx
from ..fmt import symbolize
from .regs import FLAGS, bits

ADDR_MIN_WIDTH = 52        # content width from which each row also shows its absolute address
RUN_MIN = 3                # this many equal qwords in a row are shown as one row


def frame_slots(fr) -> list[tuple[int, str, int]]:
    """(address, field, value) of each word of an interrupt frame."""
    fields = ([("error code", fr.error_code)] if fr.error_code is not None else []) + [
        ("rip", fr.rip), ("cs", fr.cs), ("rflags", fr.rflags), ("rsp", fr.rsp), ("ss", fr.ss)]
    return [(fr.at + 8 * i, name, value) for i, (name, value) in enumerate(fields)]


class StackPanel(Panel):
    PANEL_ID = "stack"
    TITLE = "Stack"
    KEY = "y"
    TIER = 1
    EMPTY_HINT = "No stack: RSP of the selected vCPU is not readable."

    def __init__(self, image=None) -> None:
        super().__init__()
        self.image = image
        self._rows: list[tuple] = []
        self._view = None
        self._at: tuple | None = None

    def update_ctx(self, ctx: ViewCtx) -> None:
        self.ctx = ctx
        v = ctx.vcpu
        sv = ctx.snap.stack[v] if v < len(ctx.snap.stack) else None
        base = ctx.base.stack[v] if v < len(ctx.base.stack) else None
        self._view = sv
        rows: list[tuple] = []
        if sv is not None:
            old = {base.rsp + 8 * i: w for i, w in enumerate(base.words)} if base is not None else {}
            marks = {a: (name, k) for k, (a, name, _v) in enumerate(frame_slots(sv.frame))} if sv.frame else {}
            n = len(marks)
            words = sv.words
            i = 0
            while i < len(words):
                a, w = sv.rsp + 8 * i, words[i]
                mark = marks.pop(a, None)
                j = i + 1        # a run of the same unmarked value: one row (as hexdump's '*')
                while mark is None and j < len(words) and words[j] == w and sv.rsp + 8 * j not in marks:
                    j += 1
                if j - i < RUN_MIN:
                    j = i + 1
                changed = w is not None and any(old.get(sv.rsp + 8 * k, w) not in (w, None) for k in range(i, j))
                rows.append(("word", 8 * i, a, w, changed, (mark[0], mark[1], n, sv.frame.name) if mark else None,
                             j - i))
                i = j
            if marks:      # the frame goes on past the words read: its words from the frame itself
                if len(marks) == n:
                    rows.append(("sep", sv.frame.at - sv.rsp))
                for k, (a, name, value) in enumerate(frame_slots(sv.frame)):
                    if a in marks:
                        rows.append(("word", a - sv.rsp, a, value, False, (name, k, n, sv.frame.name), 1))
        self._rows = rows
        self.set_rows(len(rows))
        at = (v, sv.rsp if sv else None, ctx.snap.time)
        if at != self._at:      # a new stop: from RSP again (the header sums the frame up)
            self._at = at
            self.scroll_to_row(0)

    def header(self, width: int) -> list[Row]:
        sv = self._view
        if sv is None:
            return []
        r = Row(" ")
        r.add("rsp ", self.st("head"))
        r.add(f"{sv.rsp:#x}", self.st("accent"))
        r.add(f"  vCPU {self.ctx.vcpu}", self.st("dim"))
        out = [r]
        fr = sv.frame
        if fr is not None:       # the frame summed up: its rows may be below the ones on screen
            name = self.image.describe if self.image is not None else hex
            h = Row(" ")
            h.add(f"in {fr.name} handler ", self.st("warn"))
            h.add(name(fr.handler), self.st("accent"))
            if fr.error_code is not None:
                h.add(f" · error code {fr.error_code:#x}", self.st("warn"))
            h.add(f" · frame at rsp+{fr.at - sv.rsp:#x}", self.st("dim"))
            f = Row(" ")
            f.add("from ", self.st("dim"))
            f.add(name(fr.rip), self.st("accent"))
            f.add(f" · rsp {fr.rsp:#x} · cs {fr.cs:#x} ss {fr.ss:#x} · {bits(fr.rflags, FLAGS)}", self.st("dim"))
            out += [h, f]
        return out

    def row_key(self, i: int):
        return self._rows[i]

    def render_row(self, i: int, width: int) -> Row:
        row = self._rows[i]
        if row[0] == "sep":
            return Row(f" ··· interrupt frame at rsp+{row[1]:#x} ···", self.st("dim"))
        _, off, addr, w, changed, mark, count = row
        r = Row(" ")
        r.cell(f"+{off:#x}", 6, self.st("dim"), right=True)
        if width >= ADDR_MIN_WIDTH:
            r.add(f" {addr:x}", self.st("dim"))
        r.add("  ")
        if w is None:
            r.add("(not mapped)".ljust(16), self.st("hint"))
        else:
            r.add(f"{w:016x}", self.st("changed") if changed else (self.st("dim") if w == 0 else None))
        if count > 1:
            r.add(f"  ×{count} to +{off + 8 * (count - 1):#x}", self.st("dim"))
            return r
        if mark is not None:
            name, k, n, vector = mark
            corner = "┐" if k == 0 else ("┘" if k == n - 1 else "│")
            r.add(f" {corner} ", self.st("warn"))
            label = f"{vector} {name}" if k == 0 else name
            r.add(label, self.st("warn"))
            if name == "rflags":
                r.add(f" {bits(w, FLAGS)}", self.st("dim"))
            elif name in ("rip", "rsp"):
                self._annotate(r, w, " ")
            return r
        if w is not None:
            self._annotate(r, w, "  ")
        return r

    def _annotate(self, r: Row, value: int, sep: str) -> None:
        hit = symbolize(self.image, value)
        if hit is not None:
            text, code = hit
            r.add(sep + text, self.st("accent") if code else self.st("dim"))
