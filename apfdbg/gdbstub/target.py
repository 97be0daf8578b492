"""The x86-64 target description gdb reads (``qXfer:features:read:target.xml``) and the register
file behind ``g``/``G``/``p``/``P``.

The features follow gdb's own ``features/i386/64bit-*.xml`` so gdb's amd64 code recognises them:

* ``org.gnu.gdb.i386.core``: the 16 GPRs, rip, eflags, the six selectors, the x87 stack and its
  control registers (gdb requires all of them, in this order);
* ``org.gnu.gdb.i386.sse``: xmm0-15 and mxcsr;
* ``org.gnu.gdb.i386.segments``: fs_base, gs_base;
* ``org.apfdbg.x86.sys`` (ours; gdb shows unknown features' registers by name): cr0, cr2, cr3,
  cr4, efer, k_gs_base, as QEMU exposes them (``$cr2``, ``p/x $cr3``, ``info registers cr0``).

The remote register number of each register is its position in the document (no ``regnum``
attributes), and ``g`` sends every register in that order, little-endian.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from unicorn import x86_const as X

from .protocol import ProtocolError

if TYPE_CHECKING:
    from ..machine.vcpu import VCpu

MSR_EFER, MSR_KERNEL_GS_BASE = 0xC0000080, 0xC0000102
_M64 = (1 << 64) - 1


@dataclass(frozen=True)
class Reg:
    name: str
    bits: int
    type: str
    feature: str
    read: Callable[["VCpu"], int]
    write: Callable[["VCpu", int], None] | None = None   # None: read-only (a write is refused)
    group: str | None = None

    @property
    def size(self) -> int:
        return self.bits // 8


def _plain(rid: int, writable: bool = True):
    def read(v):
        return v.reg(rid)

    def write(v, value):
        v.set_reg(rid, value)
    return read, (write if writable else None)


def _uc(rid: int, mask: int, writable: bool = True):
    """Registers wider or narrower than the vCPU's 64-bit fast path: through the Unicorn binding."""
    def read(v):
        val = v.uc.reg_read(rid)
        return (val if isinstance(val, int) else 0) & mask

    def write(v, value):
        v.uc.reg_write(rid, value & mask)
    return read, (write if writable else None)


def _fp(i: int):
    rid = X.UC_X86_REG_FP0 + i

    def read(v):
        mantissa, exponent = v.uc.reg_read(rid)
        return (mantissa & _M64) | ((exponent & 0xFFFF) << 64)

    def write(v, value):
        v.uc.reg_write(rid, (value & _M64, (value >> 64) & 0xFFFF))
    return read, write


def _msr(index: int, writable: bool = True):
    def read(v):
        return v.uc.msr_read(index)

    def write(v, value):
        v.uc.msr_write(index, value & _M64)
    return read, (write if writable else None)


CORE, SSE, SEGMENTS, SYS = ("org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse",
                            "org.gnu.gdb.i386.segments", "org.apfdbg.x86.sys")


def _build() -> list[Reg]:
    regs: list[Reg] = []

    def add(name, bits, type_, feature, rw, group=None):
        regs.append(Reg(name, bits, type_, feature, rw[0], rw[1], group))

    for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                 "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"):
        type_ = "data_ptr" if name in ("rbp", "rsp") else "int64"
        add(name, 64, type_, CORE, _plain(getattr(X, f"UC_X86_REG_{name.upper()}")))
    add("rip", 64, "code_ptr", CORE, _plain(X.UC_X86_REG_RIP))
    add("eflags", 32, "i386_eflags", CORE, _plain(X.UC_X86_REG_RFLAGS))
    # Selectors are read-only: Unicorn's reg_write changes the selector but not the hidden part
    # (base, limit, DPL), so a write would leave the vCPU in a state no CPU can be in.
    for name in ("cs", "ss", "ds", "es", "fs", "gs"):
        add(name, 32, "int32", CORE, _plain(getattr(X, f"UC_X86_REG_{name.upper()}"), writable=False))
    for i in range(8):
        add(f"st{i}", 80, "i387_ext", CORE, _fp(i))
    add("fctrl", 32, "int", CORE, _uc(X.UC_X86_REG_FPCW, 0xFFFF), "float")
    add("fstat", 32, "int", CORE, _uc(X.UC_X86_REG_FPSW, 0xFFFF), "float")
    add("ftag", 32, "int", CORE, _uc(X.UC_X86_REG_FPTAG, 0xFFFF), "float")
    add("fiseg", 32, "int", CORE, ((lambda v: 0), None), "float")
    add("fioff", 32, "int", CORE, _uc(X.UC_X86_REG_FIP, 0xFFFFFFFF, writable=False), "float")
    add("foseg", 32, "int", CORE, ((lambda v: 0), None), "float")
    add("fooff", 32, "int", CORE, _uc(X.UC_X86_REG_FDP, 0xFFFFFFFF, writable=False), "float")
    add("fop", 32, "int", CORE, _uc(X.UC_X86_REG_FOP, 0x7FF, writable=False), "float")
    for i in range(16):
        add(f"xmm{i}", 128, "vec128", SSE, _uc(X.UC_X86_REG_XMM0 + i, (1 << 128) - 1))
    add("mxcsr", 32, "i386_mxcsr", SSE, _uc(X.UC_X86_REG_MXCSR, 0xFFFFFFFF), "vector")
    add("fs_base", 64, "int", SEGMENTS, _plain(X.UC_X86_REG_FS_BASE))
    add("gs_base", 64, "int", SEGMENTS, _plain(X.UC_X86_REG_GS_BASE))
    # CR0/CR3/CR4/EFER change paging and the mode: the machine's own page walk and TLB would not
    # follow a debugger's write, so they are read-only here. CR2 is just a value.
    add("cr0", 64, "x86_cr0", SYS, _plain(X.UC_X86_REG_CR0, writable=False), "system")
    add("cr2", 64, "int64", SYS, _plain(X.UC_X86_REG_CR2), "system")
    add("cr3", 64, "int64", SYS, _plain(X.UC_X86_REG_CR3, writable=False), "system")
    add("cr4", 64, "x86_cr4", SYS, _plain(X.UC_X86_REG_CR4, writable=False), "system")
    add("efer", 64, "x86_efer", SYS, _msr(MSR_EFER, writable=False), "system")
    add("k_gs_base", 64, "int64", SYS, _msr(MSR_KERNEL_GS_BASE), "system")
    return regs


REGISTERS: list[Reg] = _build()
BY_NAME = {r.name: i for i, r in enumerate(REGISTERS)}
G_SIZE = sum(r.size for r in REGISTERS)

_FLAGS = {
    "i386_eflags": (4, [("CF", 0), ("", 1), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7), ("TF", 8),
                        ("IF", 9), ("DF", 10), ("OF", 11), ("NT", 14), ("RF", 16), ("VM", 17),
                        ("AC", 18), ("VIF", 19), ("VIP", 20), ("ID", 21)]),
    "i386_mxcsr": (4, [("IE", 0), ("DE", 1), ("ZE", 2), ("OE", 3), ("UE", 4), ("PE", 5), ("DAZ", 6),
                       ("IM", 7), ("DM", 8), ("ZM", 9), ("OM", 10), ("UM", 11), ("PM", 12), ("FZ", 15)]),
    "x86_cr0": (8, [("PE", 0), ("MP", 1), ("EM", 2), ("TS", 3), ("ET", 4), ("NE", 5), ("WP", 16),
                    ("AM", 18), ("NW", 29), ("CD", 30), ("PG", 31)]),
    "x86_cr4": (8, [("VME", 0), ("PVI", 1), ("TSD", 2), ("DE", 3), ("PSE", 4), ("PAE", 5), ("MCE", 6),
                    ("PGE", 7), ("PCE", 8), ("OSFXSR", 9), ("OSXMMEXCPT", 10), ("UMIP", 11),
                    ("LA57", 12), ("FSGSBASE", 16), ("PCIDE", 17), ("OSXSAVE", 18), ("SMEP", 20),
                    ("SMAP", 21), ("PKE", 22)]),
    "x86_efer": (8, [("SCE", 0), ("LME", 8), ("LMA", 10), ("NXE", 11), ("SVME", 12), ("FFXSR", 14)]),
}

_VEC128 = """    <vector id="v4f" type="ieee_single" count="4"/>
    <vector id="v2d" type="ieee_double" count="2"/>
    <vector id="v16i8" type="int8" count="16"/>
    <vector id="v8i16" type="int16" count="8"/>
    <vector id="v4i32" type="int32" count="4"/>
    <vector id="v2i64" type="int64" count="2"/>
    <union id="vec128">
      <field name="v4_float" type="v4f"/>
      <field name="v2_double" type="v2d"/>
      <field name="v16_int8" type="v16i8"/>
      <field name="v8_int16" type="v8i16"/>
      <field name="v4_int32" type="v4i32"/>
      <field name="v2_int64" type="v2i64"/>
      <field name="uint128" type="uint128"/>
    </union>
"""


def _flags_xml(type_id: str) -> str:
    size, fields = _FLAGS[type_id]
    body = "".join(f'      <field name="{n}" start="{b}" end="{b}"/>\n' for n, b in fields)
    return f'    <flags id="{type_id}" size="{size}">\n{body}    </flags>\n'


def target_xml() -> str:
    out = ['<?xml version="1.0"?>\n<!DOCTYPE target SYSTEM "gdb-target.dtd">\n<target version="1.0">\n',
           "  <architecture>i386:x86-64</architecture>\n"]
    feature = None
    for r in REGISTERS:
        if r.feature != feature:
            if feature is not None:
                out.append("  </feature>\n")
            feature = r.feature
            out.append(f'  <feature name="{feature}">\n')
            if feature == CORE:
                out.append(_flags_xml("i386_eflags"))
            elif feature == SSE:
                out.append(_VEC128 + _flags_xml("i386_mxcsr"))
            elif feature == SYS:
                out.extend(_flags_xml(t) for t in ("x86_cr0", "x86_cr4", "x86_efer"))
        group = f' group="{r.group}"' if r.group else ""
        out.append(f'    <reg name="{r.name}" bitsize="{r.bits}" type="{r.type}"{group}/>\n')
    out.append("  </feature>\n</target>\n")
    return "".join(out)


TARGET_XML = target_xml().encode()


class ReadOnlyRegister(ValueError):
    pass


def read_register(v: "VCpu", n: int) -> bytes:
    r = REGISTERS[n]
    return (r.read(v) & ((1 << r.bits) - 1)).to_bytes(r.size, "little")


def write_register(v: "VCpu", n: int, raw: bytes) -> None:
    """Write register `n` from its little-endian bytes; a read-only one may only be "written" with
    the value it has (so a ``G`` that changes other registers goes through)."""
    r = REGISTERS[n]
    if len(raw) != r.size:
        raise ProtocolError(f"{r.name}: {len(raw)} bytes, expected {r.size}")
    value = int.from_bytes(raw, "little")
    if r.write is None:
        if value != r.read(v) & ((1 << r.bits) - 1):
            raise ReadOnlyRegister(f"{r.name} is read-only under the debugger")
        return
    r.write(v, value)


def read_all(v: "VCpu") -> bytes:
    return b"".join(read_register(v, i) for i in range(len(REGISTERS)))


def write_all(v: "VCpu", raw: bytes) -> None:
    """``G``: every register, in order. Checked whole before anything is written. A block shorter
    than the full file (an older gdb sends only the registers it knows) writes a prefix."""
    if len(raw) > G_SIZE:
        raise ProtocolError(f"register block of {len(raw)} bytes, expected at most {G_SIZE}")
    parts, off = [], 0
    for i, r in enumerate(REGISTERS):
        if off + r.size > len(raw):
            if off != len(raw):
                raise ProtocolError("register block ends inside a register")
            break
        parts.append((i, raw[off:off + r.size]))
        off += r.size
    for i, chunk in parts:
        r = REGISTERS[i]
        if r.write is None and int.from_bytes(chunk, "little") != r.read(v) & ((1 << r.bits) - 1):
            raise ReadOnlyRegister(f"{r.name} is read-only under the debugger")
    for i, chunk in parts:
        if REGISTERS[i].write is not None and chunk != read_register(v, i):
            write_register(v, i, chunk)
