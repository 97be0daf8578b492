"""What the debugger panels read from the guest, per vCPU: memory, stack (with the interrupt
frame), code around RIP, registers and the current task's name."""
from __future__ import annotations

from dataclasses import dataclass

from unicorn.x86_const import UC_X86_REG_MSR as _MSR_REG
from unicorn.x86_const import UC_X86_REG_RSP as _RSP

from ..machine.debug import ConditionError, REGS, compile_expr
from ..machine.faults import vector_name as _vector_name

#: registers the Registers panel shows (names as in apfdbg.machine.debug.REGS, plus efer)
SNAP_REGS = ("rax rbx rcx rdx rsi rdi rbp rsp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags "
             "cr0 cr2 cr3 cr4 cs ss ds es fs gs fs_base gs_base").split()
MEM_ROWS = 16          # the memory panel's rows of 16 bytes
STACK_WORDS = 32       # qwords of stack from RSP
CODE_BEFORE = 192      # at most this many bytes of code before RIP (from the symbol's start)
CODE_AFTER = 96


@dataclass(frozen=True)
class MemView:
    """`rows` of 16 bytes from `addr` (None: that row is not mapped), read through the vCPU's page
    tables, or guest-physical when `physical`."""
    expr: str
    addr: int | None
    rows: tuple
    physical: bool = False
    error: str = ""


@dataclass(frozen=True)
class FrameView:
    """The interrupt frame of the innermost event being handled (from the delivery that pushed it)."""
    vector: int
    name: str
    at: int                  # address of the frame's first word (the error code when there is one)
    error_code: int | None
    rip: int
    cs: int
    rflags: int
    rsp: int
    ss: int
    handler: int


@dataclass(frozen=True)
class StackView:
    rsp: int
    words: tuple             # qwords from RSP up (None: not mapped)
    frame: FrameView | None


@dataclass(frozen=True)
class CodeView:
    """Guest code read through a vCPU's page tables: `data` starts at `start` (a symbol's start when
    RIP is near one, so disassembly finds instruction boundaries; else RIP)."""
    start: int
    rip: int
    data: bytes


class GuestViews:
    def __init__(self, engine) -> None:
        self.engine = engine
        self._mem_compiled: tuple | None = None  # (text, physical, compiled expression)
        self._mem_cpu = None                   # the vCPU the expression is being evaluated for
        self._frames: dict[int, list] = {}     # per vCPU: recent deliveries (for the stack panel)
        self._last_area: dict[int, int] = {}  # reason area of each vCPU (kept after a disable)

    def _mem_target(self, v, text: str) -> tuple[int, bool]:
        """(address, guest-physical?) of a memory-view expression for vCPU `v`; the expression is
        parsed once and evaluated at every snapshot."""
        self._mem_cpu = v
        if self._mem_compiled is None or self._mem_compiled[0] != text:
            physical = text.startswith("phys ") or text == "reason"
            body = text[5:] if text.startswith("phys ") else text

            def names(n: str) -> int | None:
                if n == "reason":   # not set yet: _mem_view says so; 0 lets expressions be checked
                    return self._last_area.get(self._mem_cpu.index, 0)
                return self.engine._symbol_value(n)
            self._mem_compiled = (text, physical, compile_expr(body, names))
        _, physical, fn = self._mem_compiled
        return fn(v) & (2**64 - 1), physical

    def _mem_check(self, text: str) -> str:
        v = self.engine.machine.vcpus[0]
        try:
            self._mem_target(v, text)
        except ConditionError as e:
            return str(e)
        except Exception as e:  # noqa: BLE001  (an expression the user typed)
            return f"{text!r}: {e}"
        return ""

    def _mem_view(self, v) -> MemView:
        text = self.engine.mem_expr
        if text == "reason" and self._last_area.get(v.index) is None:
            return MemView(text, None, (), True, "no reason area yet (the guest has not enabled async PF)")
        try:
            addr, physical = self._mem_target(v, text)
        except Exception as e:  # noqa: BLE001
            return MemView(text, None, (), False, str(e))
        addr &= ~0xF
        rows = []
        ram = self.engine.machine.ram
        for i in range(MEM_ROWS):
            a = addr + 16 * i
            if physical:
                rows.append(ram.read(a, 16) if ram.contains(a, 16) else None)
            else:
                rows.append(v.peek(a, 16))
        return MemView(text, addr, tuple(rows), physical)

    def _stack_view(self, v) -> StackView | None:
        try:
            rsp = v.reg(_RSP)
        except Exception:  # noqa: BLE001
            return None
        raw = v.peek(rsp, 8 * STACK_WORDS)   # one read; word by word only across an unmapped page
        if raw is not None:
            words = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 8)]
        else:
            words = []
            for i in range(STACK_WORDS):
                w = v.peek(rsp + 8 * i, 8)
                words.append(int.from_bytes(w, "little") if w is not None else None)
        frame = None
        for vector, err, handler, ret_rip, at in reversed(self._frames.get(v.index, ())):
            slot = at + (8 if err is not None else 0)
            if not (rsp <= slot + 32 and slot - rsp <= 0x10000):
                continue
            raw = v.peek(slot, 40)
            if raw is None or int.from_bytes(raw[:8], "little") != ret_rip:
                continue
            q = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, 40, 8)]
            frame = FrameView(vector, _vector_name(vector) if vector < 32 else f"vector {vector:#x}", at, err,
                              q[0], q[1], q[2], q[3], q[4], handler)
            break
        return StackView(rsp, tuple(words), frame)

    def _code_view(self, v, rip: int) -> "CodeView | None":
        """The code around RIP (engine thread): from the covering symbol's start when it is close."""
        try:
            start = rip
            hit = self.engine.image.lookup(rip)
            if hit is not None and 0 < hit[1] <= CODE_BEFORE:
                start = hit[0].addr
            data = v.peek(start, rip - start + CODE_AFTER) if start != rip else None
            if data is None:
                start = rip
                data = v.peek(rip, CODE_AFTER) or v.peek(rip, 16)
            return CodeView(start, rip, data) if data else None
        except Exception:
            return None

    @staticmethod
    def _regs_of(v) -> dict:
        out = {}
        try:
            rd = v.reg if hasattr(v, "reg") else v.uc.reg_read
            for name in SNAP_REGS:
                out[name] = rd(REGS[name])
            out["efer"] = v.uc.reg_read(_MSR_REG, 0xC0000080)
            out["cpl"] = v.cpl()
        except Exception:
            pass
        return out

    def _task_of(self, v) -> str | None:
        """The guest's current task, when its symbols say: `current_task` is an array of one u64
        per vCPU holding either the address of the task's name (a NUL-terminated string) or of a
        task struct with a pointer to its name (into `task_name` when that symbol exists)."""
        sym = self.engine.image.symbol("current_task")
        if sym is None:
            return None
        raw = v.peek(sym.addr + 8 * v.index, 8)
        if raw is None:
            return None
        ptr = int.from_bytes(raw, "little")
        if ptr == 0:
            return None
        names = self.engine.image.symbol("task_name")
        in_names = (lambda a: names.addr <= a < names.addr + max(names.size, 1)) if names else (lambda a: False)
        if in_names(ptr):
            return _cstr(v.peek(ptr, 32))
        body = v.peek(ptr, 128) or b""
        ptrs = [int.from_bytes(body[i:i + 8], "little") for i in range(0, len(body) - 7, 8)]
        for q in ptrs:
            if in_names(q):
                return _cstr(v.peek(q, 32))
        direct = _cstr(body[:32], strict=True)
        if direct:
            return direct
        for q in ptrs:
            if 0x1000 <= q < self.engine.machine.ram.size:
                name = _cstr(v.peek(q, 32), strict=True)
                if name:
                    return name
        return f"task@{ptr:#x}"



def _cstr(raw: bytes | None, strict: bool = False) -> str | None:
    if not raw:
        return None
    s = raw.split(b"\0", 1)[0]
    if strict and (len(s) < 2 or len(s) == len(raw) or not all(32 <= c < 127 for c in s)):
        return None
    return s.decode("ascii", "replace") or None

