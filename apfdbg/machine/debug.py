"""Breakpoints, watchpoints and single steps: what a debugger front end (TUI, GDB stub) needs.

A stop is a pause of the whole machine (machine.pause_requested) with `machine.debug_stop` saying
why; resuming continues the interrupted turn, so a debugged run stays deterministic.
"""
from __future__ import annotations

import ast
import itertools
import operator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE
from unicorn import x86_const as X

if TYPE_CHECKING:
    from .machine import Machine
    from .vcpu import VCpu

REGS = {name.lower(): getattr(X, f"UC_X86_REG_{name}") for name in (
    "RAX RBX RCX RDX RSI RDI RBP RSP R8 R9 R10 R11 R12 R13 R14 R15 RIP RFLAGS CR0 CR2 CR3 CR4 "
    "CS SS DS ES FS GS FS_BASE GS_BASE").split()}


@dataclass
class Breakpoint:
    id: int
    addr: int
    vcpu: int | None = None          # None: every vCPU
    condition: str | None = None     # e.g. "rax == 5 and u64(rsp + 8) != 0"
    hits: int = 0
    _check: Callable | None = field(default=None, repr=False)
    temporary: bool = False          # a stepping command's own (not listed, removed by its owner)
    label: str = ""                  # how the user wrote it (pf_handler, trap.c:107)


@dataclass
class Catchpoint:
    """An event breakpoint: stop when an event the machine or the host reports matches."""
    id: int
    label: str                       # e.g. "apf not-present token=0x1"
    match: Callable[[object], bool] = field(repr=False)
    vcpu: int | None = None
    hits: int = 0


@dataclass
class Watchpoint:
    id: int
    addr: int
    size: int
    kind: str = "write"              # "write", "read", "access"
    vcpu: int | None = None
    hits: int = 0
    label: str = ""


@dataclass(frozen=True)
class DebugStop:
    reason: str                      # "breakpoint", "watchpoint", "step", "event"
    vcpu: int
    rip: int
    id: int | None = None            # breakpoint / watchpoint id
    address: int | None = None       # watchpoint: the address accessed
    detail: str = ""


class ConditionError(ValueError):
    pass


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.BitAnd: operator.and_, ast.BitOr: operator.or_, ast.BitXor: operator.xor,
        ast.LShift: operator.lshift, ast.RShift: operator.rshift, ast.Mod: operator.mod,
        ast.FloorDiv: operator.floordiv}
_CMP = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
        ast.Gt: operator.gt, ast.GtE: operator.ge}


def compile_condition(text: str, names: Callable[[str], int | None] | None = None) -> Callable[["VCpu"], bool]:
    """A safe expression over registers (rax, rip, cr2, ...) and memory (u8/u16/u32/u64(addr))."""
    ev = compile_expr(text, names)
    return lambda cpu: bool(ev(cpu))


def compile_expr(text: str, names: Callable[[str], int | None] | None = None) -> Callable[["VCpu"], int]:
    """A safe integer expression: registers, numbers, `names` (e.g. the image's symbols),
    u8..u64(addr) memory reads through the vCPU's page tables, arithmetic and comparisons."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ConditionError(f"{text!r}: {e.msg}") from None

    def ev(n, cpu):
        if isinstance(n, ast.Expression):
            return ev(n.body, cpu)
        if isinstance(n, ast.Constant) and isinstance(n.value, int):
            return n.value
        if isinstance(n, ast.Name) and n.id in REGS:
            return cpu.reg(REGS[n.id])
        if isinstance(n, ast.Name) and names is not None:
            val = names(n.id)
            if val is not None:
                return val
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            return _OPS[type(n.op)](ev(n.left, cpu), ev(n.right, cpu)) & (2**64 - 1)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.Not):
            return not ev(n.operand, cpu)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -ev(n.operand, cpu)
        if isinstance(n, ast.BoolOp):
            vals = (ev(v, cpu) for v in n.values)
            return all(vals) if isinstance(n.op, ast.And) else any(vals)
        if isinstance(n, ast.Compare):
            left = ev(n.left, cpu)
            for op, right in zip(n.ops, n.comparators):
                r = ev(right, cpu)
                if type(op) not in _CMP or not _CMP[type(op)](left, r):
                    return False
                left = r
            return True
        if (isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and len(n.args) == 1
                and n.func.id in ("u8", "u16", "u32", "u64")):
            size = int(n.func.id[1:]) // 8
            raw = cpu.peek(ev(n.args[0], cpu), size)
            return int.from_bytes(raw, "little") if raw is not None else 0
        if isinstance(n, ast.Name):
            raise ConditionError(f"{text!r}: no register or symbol named {n.id!r}")
        raise ConditionError(f"{text!r}: {ast.dump(n)[:40]}... is not allowed "
                             "(registers, symbols, numbers, u8..u64(addr), arithmetic, comparisons, and/or/not)")

    ev(tree, _Probe())  # reject bad syntax now, not at the first hit
    return lambda cpu: ev(tree, cpu)


class _Probe:
    def reg(self, _rid):
        return 0

    def peek(self, _va, _size):
        return None


class Debugger:
    def __init__(self, machine: "Machine") -> None:
        self.m = machine
        self.breakpoints: dict[int, Breakpoint] = {}
        self.watchpoints: dict[int, Watchpoint] = {}
        self.catchpoints: dict[int, Catchpoint] = {}
        self._ids = itertools.count(1)
        self._hooks: dict[int, list[tuple["VCpu", int]]] = {}
        machine.debugger = self

    # --- breakpoints --------------------------------------------------------------------------
    def add_breakpoint(self, addr: int, vcpu: int | None = None, condition: str | None = None, *,
                       check: Callable[["VCpu"], bool] | None = None, temporary: bool = False,
                       label: str = "", names: Callable[[str], int | None] | None = None) -> Breakpoint:
        """`check` (a Python predicate on the vCPU) is for stepping commands; users write `condition`."""
        bp = Breakpoint(next(self._ids), addr, vcpu, condition,
                        _check=compile_condition(condition, names) if condition else check,
                        temporary=temporary, label=label)
        self.breakpoints[bp.id] = bp
        hooks = []
        for v in self.m.vcpus:
            if vcpu is None or v.index == vcpu:
                hooks.append((v, v.uc.hook_add(UC_HOOK_CODE, v._on_breakpoint, bp, addr, addr)))
                if addr < 2**64 - 1:  # translated code picks the hook up
                    v.uc.ctl_remove_cache(addr, addr + 1)
                else:                 # no range ends past 2**64
                    v.uc.ctl_flush_tb()
        self._hooks[bp.id] = hooks
        return bp

    def add_watchpoint(self, addr: int, size: int = 8, kind: str = "write",
                       vcpu: int | None = None, label: str = "") -> Watchpoint:
        if kind not in ("write", "read", "access"):
            raise ValueError(f"watchpoint kind {kind!r}: write, read or access")
        wp = Watchpoint(next(self._ids), addr, size, kind, vcpu, label=label)
        self.watchpoints[wp.id] = wp
        types = {"write": UC_HOOK_MEM_WRITE, "read": UC_HOOK_MEM_READ,
                 "access": UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE}[kind]
        hooks = []
        for v in self.m.vcpus:
            if vcpu is None or v.index == vcpu:
                hooks.append((v, v.uc.hook_add(types, v._on_watch, wp, addr, addr + size - 1)))
                v.accel.set_insn_hook(True)  # exact stops: right after the accessing instruction
                v.uc.ctl_flush_tb()
        self._hooks[wp.id] = hooks
        return wp

    def add_catchpoint(self, match: Callable[[object], bool], label: str, vcpu: int | None = None) -> Catchpoint:
        """Stop the machine when an event matching `match` (and `vcpu`) is reported."""
        cp = Catchpoint(next(self._ids), label, match, vcpu)
        self.catchpoints[cp.id] = cp
        if self._on_event not in self.m.sinks:
            self.m.sinks.append(self._on_event)
        return cp

    def remove(self, point_id: int) -> bool:
        for v, h in self._hooks.pop(point_id, []):
            v.uc.hook_del(h)
            v.uc.ctl_flush_tb()
        gone = (self.breakpoints.pop(point_id, None) or self.watchpoints.pop(point_id, None)
                or self.catchpoints.pop(point_id, None))
        if isinstance(gone, Watchpoint):
            for v in self.m.vcpus:
                if not any(w.vcpu is None or w.vcpu == v.index for w in self.watchpoints.values()):
                    v.accel.set_insn_hook(False)
        return gone is not None

    def _on_event(self, e) -> None:
        if not self.catchpoints:
            return
        for cp in self.catchpoints.values():
            if (cp.vcpu is None or e.vcpu == cp.vcpu) and cp.match(e):
                cp.hits += 1
                idx = e.vcpu if e.vcpu is not None else 0
                v = self.m.vcpus[idx] if idx < len(self.m.vcpus) else None
                self.hit(DebugStop("event", idx, v.rip if v is not None else 0, cp.id,
                                   detail=f"{cp.label} (event {e.kind} at time {e.time:,})"))
                return

    # --- stops ---------------------------------------------------------------------------------
    def describe_stop(self, stop: DebugStop, where: Callable[[int], str]) -> str:
        """A stop in words (`where(rip)` names an address): the engine's stop reason and what the
        gdb stub prints for points gdb did not set."""
        v = self.m.vcpus[stop.vcpu] if stop.vcpu < len(self.m.vcpus) else None
        at = where(v.rip if v is not None else stop.rip)
        num = f" {stop.id}" if stop.id is not None else ""
        point = self.breakpoints.get(stop.id) or self.watchpoints.get(stop.id)
        if stop.reason == "watchpoint" and stop.address is not None:
            label = f" ({point.label})" if point is not None and point.label else ""
            return f"watchpoint{num}{label}: access to {stop.address:#x} by vCPU {stop.vcpu}, now at {at}"
        if stop.reason == "event":
            return f"catchpoint{num}: {stop.detail}, vCPU {stop.vcpu} at {at}"
        # a breakpoint set at a source line says which (the address alone names a symbol)
        label = f" ({point.label})" if point is not None and ":" in point.label else ""
        return f"{stop.reason}{num}{label} at {at} on vCPU {stop.vcpu}"

    def hit(self, stop: DebugStop) -> None:
        if self.m.debug_stop is not None:
            return  # the first stop of a slice is the one reported
        self.m.debug_stop = stop
        rp = getattr(self.m, "request_pause", None)
        if rp is not None:
            rp()  # also stops the running vCPU at its next block entry
        else:
            self.m.pause_requested = True
