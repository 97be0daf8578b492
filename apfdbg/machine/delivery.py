"""Event delivery through the guest's 64-bit IDT, as the CPU does it (Intel SDM vol. 3, 6.14).

Unicorn delivers nothing itself, so every exception, interrupt and `int n` comes through here.
Delivery is all-or-nothing: every memory the frame needs is checked before anything is written,
so a delivery that exits to the host (a swapped-out stack page) is simply tried again later.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

from .faults import (CONTRIBUTORY, ERROR_CODE_VECTORS, EXC_DF, EXC_GP, EXC_NP, EXC_PF, EXC_SS,
                     EXC_TS, AccessFault, GuestPageFault, NonCanonical, PendingEvent)
from .ucstate import KEEP_SS

RF_TF, RF_IF, RF_NT, RF_RF, RF_VM = 1 << 8, 1 << 9, 1 << 14, 1 << 16, 1 << 17
FAULT_CLASS = frozenset({0, 5, 6, 7, 10, 11, 12, 13, 14, 16, 17, 19, 20})


class CpuView(Protocol):
    """What delivery needs from a vCPU (implemented by VCpu)."""
    def regs_for_delivery(self) -> tuple[int, int, int, int, int, int]: ...  # rip, rsp, rflags, cs, ss, cpl
    def tables(self) -> dict[str, tuple[int, int]]: ...                       # (base, limit) of "idt"/"gdt"/"tr"
    def read_linear(self, va: int, size: int) -> bytes: ...                   # supervisor read, may raise AccessFault
    def check_writable(self, va: int, size: int) -> list[int]: ...            # gpas of a supervisor write, may raise
    def write_physical(self, gpa: int, data: bytes) -> None: ...
    def finish_delivery(self, rip: int, rsp: int, rflags: int, cs: int, cs_desc: int,
                        ss: int, ss_desc: int | None, cpl_changes: bool, cr2: int | None) -> None: ...


@dataclass
class Delivered:
    vector: int
    handler: int
    return_rip: int


@dataclass
class Nested:
    """Delivery raised another exception; the caller combines it (double/triple fault rules)."""
    vector: int
    error_code: int | None
    cr2: int | None = None


class _Fault(Exception):
    def __init__(self, vector: int, error_code: int | None = None, cr2: int | None = None):
        self.nested = Nested(vector, error_code, cr2)


def combine(first: int, second: int) -> int | None:
    """The exception to deliver when `second` arises while delivering `first`; None = shutdown."""
    if first == EXC_DF:
        return None
    if first in CONTRIBUTORY and second in CONTRIBUTORY:
        return EXC_DF
    if first == EXC_PF and (second in CONTRIBUTORY or second == EXC_PF):
        return EXC_DF
    return second


def deliver(cpu: CpuView, ev: PendingEvent) -> Delivered | Nested:
    """Deliver `ev`; host-side faults (HostSwapped, BadPhysical) propagate to the caller."""
    try:
        return _deliver(cpu, ev)
    except _Fault as f:
        return f.nested


def _linear_fault(e: AccessFault, stack: bool, ext: int) -> _Fault:
    if isinstance(e, GuestPageFault):
        return _Fault(EXC_PF, e.error_code, e.va)
    if isinstance(e, NonCanonical):
        return _Fault(EXC_SS if stack else EXC_GP, ext)
    raise e  # host-side: the caller handles it


def _read(cpu: CpuView, va: int, size: int, ext: int) -> bytes:
    try:
        return cpu.read_linear(va, size)
    except (GuestPageFault, NonCanonical) as e:
        raise _linear_fault(e, False, ext) from None


def _descriptor(cpu: CpuView, gdt: tuple[int, int], sel: int, ext: int) -> int:
    base, limit = gdt
    if sel & 4 or (sel & ~7) + 7 > limit:  # LDTs are not modelled
        raise _Fault(EXC_GP, (sel & ~3) | ext)
    return struct.unpack("<Q", _read(cpu, base + (sel & ~7), 8, ext))[0]


def _deliver(cpu: CpuView, ev: PendingEvent) -> Delivered:
    vector = ev.vector
    software = ev.source == "software"
    ext = 0 if software else 1
    rip, rsp, rflags, cs, ss, cpl = cpu.regs_for_delivery()
    old_rsp = rsp
    tables = cpu.tables()
    idt_base, idt_limit = tables["idt"]
    idt_err = vector * 8 + 2 + ext
    if vector * 16 + 15 > idt_limit:
        raise _Fault(EXC_GP, idt_err)
    lo, hi = struct.unpack("<QQ", _read(cpu, idt_base + vector * 16, 16, ext))
    gate_type, gate_dpl, present = (lo >> 40) & 0xF, (lo >> 45) & 3, (lo >> 47) & 1
    if gate_type not in (0xE, 0xF):
        raise _Fault(EXC_GP, idt_err)
    if software and gate_dpl < cpl:
        raise _Fault(EXC_GP, vector * 8 + 2)
    if not present:
        raise _Fault(EXC_NP, idt_err)
    handler = (lo & 0xFFFF) | (((lo >> 48) & 0xFFFF) << 16) | ((hi & 0xFFFFFFFF) << 32)
    sel, ist = (lo >> 16) & 0xFFFF, (lo >> 32) & 7
    if sel & ~3 == 0:
        raise _Fault(EXC_GP, ext)
    desc = _descriptor(cpu, tables["gdt"], sel, ext)
    dtype, s_bit, ddpl = (desc >> 40) & 0xF, (desc >> 44) & 1, (desc >> 45) & 3
    long_bit, default_big = (desc >> 53) & 1, (desc >> 54) & 1
    if not s_bit or not dtype & 8 or not long_bit or default_big or ddpl > cpl:
        raise _Fault(EXC_GP, (sel & ~3) | ext)
    if not (desc >> 47) & 1:
        raise _Fault(EXC_NP, (sel & ~3) | ext)
    new_cpl = cpl if dtype & 4 else ddpl
    new_ss, ss_desc, cpl_changes = ss, None, new_cpl != cpl
    if cpl_changes or ist:
        tss_base, tss_limit = tables["tr"]
        off = 36 + 8 * (ist - 1) if ist else 4 + 8 * new_cpl
        if off + 7 > tss_limit:
            raise _Fault(EXC_TS, 0 | ext)  # selector of the TSS; 0 is what is visible to most handlers
        rsp = struct.unpack("<Q", _read(cpu, tss_base + off, 8, ext))[0]
        if not _canonical(rsp):
            raise _Fault(EXC_SS, ext)  # SDM: a non-canonical stack from the TSS is #SS(0) at once
    if cpl_changes:
        new_ss = new_cpl  # the null selector with RPL = new CPL
    else:
        ss_desc = KEEP_SS  # same privilege: the CPU leaves SS (and its cache) alone
    rsp &= ~0xF
    # A CPU (and KVM when it injects one) sets RF in the frame of a fault-class exception.
    pushed_flags = rflags & ~RF_RF
    if ev.source in ("exception", "host") and vector in FAULT_CLASS:
        pushed_flags |= RF_RF
    frame = [ss, old_rsp, pushed_flags, cs, rip]
    if ev.error_code is not None and vector in ERROR_CODE_VECTORS:
        frame.append(ev.error_code & 0xFFFFFFFFFFFFFFFF)
    size = 8 * len(frame)
    top = rsp - size
    try:
        gpas = cpu.check_writable(top, size)
    except (GuestPageFault, NonCanonical) as e:
        raise _linear_fault(e, True, ext) from None
    data = struct.pack(f"<{len(frame)}Q", *reversed(frame))
    pos = 0
    for gpa, chunk in _split(top, gpas, size):
        cpu.write_physical(gpa, data[pos:pos + chunk])
        pos += chunk
    new_flags = rflags & ~(RF_TF | RF_NT | RF_RF | RF_VM)
    if gate_type == 0xE:
        new_flags &= ~RF_IF
    cr2 = ev.cr2 if vector == EXC_PF else None
    cpu.finish_delivery(handler, top, new_flags, (sel & ~3) | new_cpl, desc, new_ss, ss_desc,
                        cpl_changes, cr2)
    return Delivered(vector, handler, rip)


def _canonical(v: int) -> bool:
    return (v >> 47) in (0, 0x1FFFF)


def _split(va: int, gpas: list[int], size: int):
    """Pair each page's gpa with the number of bytes of the frame it receives."""
    out = []
    for gpa in gpas:
        chunk = min(size, 0x1000 - (va & 0xFFF))
        out.append((gpa, chunk))
        va += chunk
        size -= chunk
    return out
