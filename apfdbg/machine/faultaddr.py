"""The exact linear address of a failed access.

Unicorn hands the TLB-fill hook only the page, but CR2 (and KVM's gva) is the address of the
first byte that faulted, so we recover it from the faulting instruction's operands. Decoding is
cached per instruction bytes; only the register values are read per fault.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

import capstone
from capstone import x86_const as C
from unicorn import x86_const as X

PAGE = 4096
MASK = 2**64 - 1
_cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_cs.detail = True

_STACK_PUSH = {"push", "call", "pushfq", "pushf", "enter"}
_STACK_POP = {"pop", "ret", "retf", "popfq", "popf", "leave", "iretq", "iret"}
_STRING_SRC = ("movs", "lods", "cmps", "outs")
_STRING_DST = ("movs", "stos", "cmps", "scas", "ins")


def _ureg(cs_reg: int) -> int:
    """The Unicorn id of a capstone register (they number them differently); 0 for none."""
    if not cs_reg:
        return 0
    return getattr(X, f"UC_X86_REG_{_cs.reg_name(cs_reg).upper()}", 0)


@lru_cache(maxsize=4096)
def _operands(code: bytes) -> tuple:
    """(memory operands, implicit accesses) of the first instruction in `code`, decoded at 0.

    A memory operand is (base, index, scale, disp, size, segment_base_reg, rip_relative, length);
    an implicit access is ("push"|"pop"|"src"|"dst", size).
    """
    try:
        insn = next(_cs.disasm(code, 0, 1))
    except StopIteration:
        return (), ()
    mem = []
    for op in insn.operands:
        if op.type != C.X86_OP_MEM:
            continue
        m = op.mem
        seg = {C.X86_REG_FS: X.UC_X86_REG_FS_BASE, C.X86_REG_GS: X.UC_X86_REG_GS_BASE}.get(m.segment, 0)
        mem.append((_ureg(m.base) if m.base != C.X86_REG_RIP else 0, _ureg(m.index), m.scale, m.disp,
                    op.size or 8, seg, m.base == C.X86_REG_RIP, insn.size))
    mnem = insn.mnemonic.split()[-1]
    implicit = []
    if mnem in _STACK_PUSH or mnem.startswith("int"):
        implicit.append(("push", 8))
    if mnem in _STACK_POP:
        implicit.append(("pop", 40 if mnem == "iretq" else 8))
    if mnem.startswith(_STRING_SRC):
        implicit.append(("src", 8))
    if mnem.startswith(_STRING_DST):
        implicit.append(("dst", 8))
    return tuple(mem), tuple(implicit)


def candidates(reg: Callable[[int], int], code: bytes, rip: int) -> list[tuple[int, int]]:
    """(address, size) of every memory access the instruction at `rip` may make."""
    mem, implicit = _operands(bytes(code[:16]))
    out = []
    for base, index, scale, disp, size, seg, riprel, length in mem:
        if riprel:
            ea = rip + length + disp
        else:
            ea = (reg(base) if base else 0) + (reg(index) * scale if index else 0) + disp
        if seg:
            ea += reg(seg)
        out.append((ea & MASK, size))
    for kind, size in implicit:
        if kind == "push":
            out.append(((reg(X.UC_X86_REG_RSP) - 8) & MASK, size))
        elif kind == "pop":
            out.append((reg(X.UC_X86_REG_RSP), size))
        elif kind == "src":
            out.append((reg(X.UC_X86_REG_RSI), size))
        else:
            out.append((reg(X.UC_X86_REG_RDI), size))
    return out


def fault_address(reg: Callable[[int], int], code: bytes, rip: int, page: int) -> int:
    """The first byte on `page` that the instruction at `rip` touches (the page itself if unknown)."""
    page &= ~(PAGE - 1)
    for ea, size in candidates(reg, code, rip):
        if ea < page + PAGE and ea + size > page:
            return max(ea, page)
    return page
