"""The exact linear address of a failed access.

Unicorn hands the TLB-fill hook only the page, but CR2 (and KVM's gva) is the address of the
first byte that faulted, so we recover it from the faulting instruction's operands.
"""
from __future__ import annotations

import capstone
from capstone import x86_const as C
from unicorn import x86_const as X

PAGE = 4096
_cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_cs.detail = True

_STACK_PUSH = {"push", "call", "pushfq", "pushf", "enter"}
_STACK_POP = {"pop", "ret", "retf", "popfq", "popf", "leave", "iretq", "iret"}
_STRING_SRC = ("movs", "lods", "cmps", "outs")
_STRING_DST = ("movs", "stos", "cmps", "scas", "ins")


def _reg(uc, cs_reg: int) -> int:
    """Value of a capstone register via Unicorn (capstone and Unicorn number them differently)."""
    name = _cs.reg_name(cs_reg)
    if name is None:
        return 0
    return uc.reg_read(getattr(X, f"UC_X86_REG_{name.upper()}"))


def candidates(uc, code: bytes, rip: int) -> list[tuple[int, int]]:
    """(address, size) of every memory access the instruction at `rip` may make."""
    try:
        insn = next(_cs.disasm(code, rip, 1))
    except StopIteration:
        return []
    out = []
    for op in insn.operands:
        if op.type != C.X86_OP_MEM:
            continue
        m = op.mem
        if m.base == C.X86_REG_RIP:
            ea = rip + insn.size + m.disp
        else:
            ea = (_reg(uc, m.base) if m.base else 0) + (_reg(uc, m.index) * m.scale if m.index else 0) + m.disp
        if m.segment in (C.X86_REG_FS, C.X86_REG_GS):
            ea += uc.reg_read(X.UC_X86_REG_FS_BASE if m.segment == C.X86_REG_FS else X.UC_X86_REG_GS_BASE)
        out.append((ea & (2**64 - 1), op.size or 8))
    rsp = uc.reg_read(X.UC_X86_REG_RSP)
    mnem = insn.mnemonic.split()[-1]
    if mnem in _STACK_PUSH or mnem.startswith("int"):
        out.append(((rsp - 8) & (2**64 - 1), 8))
    if mnem in _STACK_POP:
        out.append((rsp, 8 if mnem != "iretq" else 40))
    if mnem.startswith(_STRING_SRC):
        out.append((uc.reg_read(X.UC_X86_REG_RSI), 8))
    if mnem.startswith(_STRING_DST):
        out.append((uc.reg_read(X.UC_X86_REG_RDI), 8))
    return out


def fault_address(uc, code: bytes, rip: int, page: int) -> int:
    """The first byte on `page` that the instruction at `rip` touches (the page itself if unknown)."""
    page &= ~(PAGE - 1)
    for ea, size in candidates(uc, code, rip):
        if ea < page + PAGE and ea + size > page:
            return max(ea, page)
    return page
