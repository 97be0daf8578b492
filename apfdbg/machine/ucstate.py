"""Hidden x86-64 CPU state of a Unicorn 2.1 engine: CPL, CS/SS caches, exception details.

Why this exists: Unicorn never delivers events through the guest IDT, its register API cannot
change CPL (``reg_write(CS)`` sets only the selector), it hides the error code of the faults it
raises, and it never resets ``env->old_exception`` (bug #1883, so the 2nd fault arrives as #DF
and the 3rd stops emulation). All of that state lives in QEMU's ``CPUX86State``, which
``uc.context_save()`` copies verbatim. This module finds the few fields it needs in that buffer
by probing a scratch engine (never by trusting hard-coded numbers), verifies them, and patches
them with one save/patch/restore, applying QEMU's own ``cpu_x86_load_seg_cache`` rules so that
Unicorn then runs at the new privilege level. See docs/unicorn-state.md.

Requirement: the engine uses the default CPU-only context mode (``UC_CTL_CONTEXT_MODE`` without
``UC_CTL_CONTEXT_MEMORY``), otherwise a restore would also roll guest memory back.
"""

from __future__ import annotations

import ctypes
import re
import struct
import threading
import weakref
from dataclasses import dataclass

from unicorn import (
    UC_ARCH_X86,
    UC_CTL_IO_WRITE,
    UC_CTL_TLB_FLUSH,
    UC_HOOK_INTR,
    UC_MODE_64,
    Uc,
    UcError,
)
from unicorn import x86_const as x86

__all__ = [
    "UcStateError", "Layout", "layout", "cpl", "KEEP_SS", "load_code_and_stack", "pending_error_code",
    "exception_is_software", "reset_exception_state", "interrupt_shadow", "set_interrupt_shadow",
]


class UcStateError(RuntimeError):
    """The Unicorn build's CPU state does not look like the one this module knows how to patch."""


# QEMU target/i386/cpu.h: hflags bits and descriptor (e2 word) bits.
HF_CPL_MASK = 3
HF_INHIBIT_IRQ_MASK = 1 << 3
HF_CS32_MASK = 1 << 4
HF_SS32_MASK = 1 << 5
HF_ADDSEG_MASK = 1 << 6
HF_PE_MASK = 1 << 7
HF_LMA_MASK = 1 << 14
HF_CS64_MASK = 1 << 15
DESC_G_MASK = 1 << 23
DESC_B_MASK = 1 << 22
DESC_L_MASK = 1 << 21
DESC_P_MASK = 1 << 15
DESC_DPL_SHIFT = 13
DESC_S_MASK = 1 << 12
DESC_CS_MASK = 1 << 11
DESC_C_MASK = 1 << 10
DESC_W_MASK = 1 << 9
R_ES, R_CS, R_SS, R_DS = 0, 1, 2, 3

# SegmentCache {u32 selector; target_ulong base; u32 limit; u32 flags} (checked by the probe).
_SEG_SEL, _SEG_BASE, _SEG_LIMIT, _SEG_FLAGS = 0, 8, 16, 20


@dataclass(frozen=True)
class Layout:
    """Byte offsets into the ``uc.context_save()`` buffer (Unicorn's uc_context header + env)."""

    size: int                # context buffer size the offsets were found in
    env: int                 # start of CPUX86State (regs[R_EAX])
    hflags: int              # uint32 hflags
    segs: int                # segs[R_ES]; segs[n] starts at segs + n * seg_stride
    seg_stride: int          # sizeof(SegmentCache)
    error_code: int          # int error_code
    exception_is_int: int    # int exception_is_int
    exception_next_eip: int  # target_ulong exception_next_eip
    old_exception: int       # int old_exception

    def seg(self, index: int) -> int:
        return self.segs + index * self.seg_stride


# --------------------------------------------------------------------------- discovery

_GDT_BASE, _CODE, _STACK, _USER_RSP = 0x1000, 0x2000, 0x8000, 0x9000
_KCODE, _KDATA, _UDATA, _UCODE = (0x00AF9B000000FFFF, 0x00CF93000000FFFF,
                                  0x00CFF3000000FFFF, 0x00AFFB000000FFFF)


class _Probe:
    """A scratch engine with a flat GDT; every run starts from the same pristine context."""

    def __init__(self) -> None:
        uc = self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map(0, 0x10000)
        gdt = (0, _KCODE, _KDATA, _UDATA, _UCODE)
        uc.mem_write(_GDT_BASE, b"".join(struct.pack("<Q", d) for d in gdt))
        uc.reg_write(x86.UC_X86_REG_GDTR, (0, _GDT_BASE, len(gdt) * 8 - 1, 0))
        uc.reg_write(x86.UC_X86_REG_RSP, _STACK)
        self.vectors: list[int] = []
        uc.hook_add(UC_HOOK_INTR, self._intr)
        self.pristine = uc.context_save()
        self._next = _CODE

    def _intr(self, uc: Uc, intno: int, _data: object) -> None:
        self.vectors.append(intno)
        uc.emu_stop()

    def run(self, code: bytes, count: int = 0, until: int | None = None,
            fresh: bool = True) -> tuple[int, bytes]:
        """Run code at a new address (no stale translations); return (address, context bytes)."""
        uc = self.uc
        if fresh:
            uc.context_restore(self.pristine)
        addr, self._next = self._next, self._next + 0x40
        uc.mem_write(addr, code)
        self.vectors.clear()
        uc.emu_start(addr, until if until is not None else addr + len(code), count=count)
        return addr, bytes(uc.context_save())


def _u32(b: bytes, off: int) -> int:
    return struct.unpack_from("<I", b, off)[0]


def _i32(b: bytes, off: int) -> int:
    return struct.unpack_from("<i", b, off)[0]


def _one(cands: list[int], what: str) -> int:
    if len(cands) != 1:
        raise UcStateError(f"unicorn state probe: {what}: expected one candidate offset, "
                           f"found {cands[:8]}")
    return cands[0]


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise UcStateError(f"unicorn state probe: {what}")


def _discover() -> Layout:
    p = _Probe()
    uc = p.uc
    pristine = bytes(p.pristine)
    size = len(pristine)
    words = range(0, size - 3, 4)

    # env: where RAX lands; QEMU puts regs[16] then eip at the start of CPUX86State.
    uc.context_restore(p.pristine)
    uc.reg_write(x86.UC_X86_REG_RAX, 0x5A17E0F0C0DE0001)
    uc.reg_write(x86.UC_X86_REG_RCX, 0x5A17E0F0C0DE0002)
    uc.reg_write(x86.UC_X86_REG_RIP, 0x5A17E0F0C0DE0003)
    b = bytes(uc.context_save())
    env = _one([m.start() for m in re.finditer(re.escape(struct.pack("<Q", 0x5A17E0F0C0DE0001)), b)],
               "RAX")
    _check(struct.unpack_from("<QQ", b, env + 8)[0] == 0x5A17E0F0C0DE0002
           and struct.unpack_from("<Q", b, env + 128)[0] == 0x5A17E0F0C0DE0003,
           "regs[]/eip not where QEMU's CPUX86State has them")

    # CPL 0 -> 3 through a native iretq: the CPL bits of hflags and the CS/SS caches change.
    uc.context_restore(p.pristine)
    uc.mem_write(_STACK, struct.pack("<5Q", 0x3000, 0x23, 0x202, _USER_RSP, 0x1B))
    uc.mem_write(0x3000, b"\x90")
    _, user = p.run(b"\x48\xcf", until=0x3000, fresh=False)  # iretq
    _check(not p.vectors and uc.reg_read(x86.UC_X86_REG_RIP) == 0x3000
           and uc.reg_read(x86.UC_X86_REG_CS) == 0x23, f"iretq to CPL 3 failed ({p.vectors})")
    need = HF_LMA_MASK | HF_CS64_MASK | HF_PE_MASK | HF_CS32_MASK
    hflags = _one([o for o in words if o > env + 128 and _u32(pristine, o) & need == need
                   and _u32(pristine, o) & 3 == 0 and _u32(user, o) == _u32(pristine, o) | 3],
                  "hflags")

    def cache(sel: int, desc: int) -> int:
        e2 = desc >> 32
        pat = (re.escape(struct.pack("<I", sel)) + b"...." +
               re.escape(struct.pack("<QII", 0, 0xFFFFFFFF, e2)))
        return _one([m.start() for m in re.finditer(pat, user, re.S) if m.start() % 4 == 0],
                    f"segment cache {sel:#x}")

    cs, ss = cache(0x23, _UCODE), cache(0x1B, _UDATA)
    stride = ss - cs
    segs = cs - stride
    _check(stride >= 24 and segs > hflags, "CS/SS caches not in segs[] order")
    uc.reg_write(x86.UC_X86_REG_DS, 0x3B)  # 64-bit mode: writes the selector only
    uc.reg_write(x86.UC_X86_REG_ES, 0x2B)
    b = bytes(uc.context_save())
    _check(_u32(b, segs + R_DS * stride) == 0x3B and _u32(b, segs + R_ES * stride) == 0x2B,
           "DS/ES selectors not at segs[3]/segs[0]")

    # error_code: three #GPs from loading selectors beyond the GDT / LDT limit (QEMU and the SDM:
    # error code = selector with the RPL bits cleared, TI kept).
    gps = {}
    for sel in (0x43, 0x53, 0x67):
        addr, gps[sel] = p.run(b"\x66\xb8" + struct.pack("<H", sel) + b"\x8e\xd8")  # mov ds, ax
        _check(p.vectors == [13] and uc.reg_read(x86.UC_X86_REG_RIP) == addr + 4,
               f"mov ds, {sel:#x} did not fault #GP at the instruction ({p.vectors})")
    err = _one([o for o in words if all(_u32(g, o) == s & 0xFFFC for s, g in gps.items())],
               "error_code")

    # exception_is_int / exception_next_eip: `int 0x80` sets 1 and the next RIP; a #GP sets 0.
    addr, soft = p.run(b"\xcd\x80")
    _check(p.vectors == [0x80], f"int 0x80 not reported ({p.vectors})")
    # QEMU declares them right after error_code; check that instead of trusting it.
    is_int, next_eip = err + 4, err + 8
    _check(_i32(soft, is_int) == 1 and all(_i32(g, is_int) == 0 for g in gps.values()),
           "exception_is_int is not error_code + 4")
    _check(struct.unpack_from("<Q", soft, next_eip)[0] == addr + 2,
           "exception_next_eip is not error_code + 8")

    # old_exception: -1 after reset, 13 after a #GP, 0 after a #DE (both "contributory").
    _, de = p.run(b"\x31\xc9\xf7\xf1")  # xor ecx, ecx; div ecx
    _check(p.vectors == [0], f"div by zero not reported ({p.vectors})")
    old = _one([o for o in words if _i32(pristine, o) == -1 and _i32(gps[0x43], o) == 13
                and _i32(de, o) == 0 and err < o < err + 512], "old_exception")

    lay = Layout(size=size, env=env, hflags=hflags, segs=segs, seg_stride=stride,
                 error_code=err, exception_is_int=is_int, exception_next_eip=next_eip,
                 old_exception=old)
    _self_test(p, lay)
    return lay


def _self_test(p: _Probe, lay: Layout) -> None:
    """Prove the patches have the architectural effect on this build."""
    uc = p.uc
    global _PROBING
    _PROBING = lay  # the public functions below need it (same thread, re-entrant lock)
    try:
        uc.context_restore(p.pristine)
        _, b = p.run(b"\xfb\x90", count=1, fresh=False)  # sti; nop -> stop inside the STI shadow
        _check(bool(_u32(b, lay.hflags) & HF_INHIBIT_IRQ_MASK), "STI shadow bit not set")
        _, b = p.run(b"\x90", fresh=False)
        _check(not _u32(b, lay.hflags) & HF_INHIBIT_IRQ_MASK, "STI shadow bit not cleared")

        uc.context_restore(p.pristine)
        load_code_and_stack(uc, 0x23, _UCODE, 0x1B, _UDATA)
        addr, _ = p.run(b"\xfa", fresh=False)  # cli at CPL 3, IOPL 0 -> #GP(0)
        _check(p.vectors == [13] and cpl(uc) == 3 and pending_error_code(uc) == 0
               and uc.reg_read(x86.UC_X86_REG_RIP) == addr, "CPL 3 patch not honoured")
        reset_exception_state(uc)
        load_code_and_stack(uc, 0x08, _KCODE, 0x00, None)
        addr, _ = p.run(b"\xfa\x90", fresh=False)
        _check(not p.vectors and cpl(uc) == 0 and uc.reg_read(x86.UC_X86_REG_CS) == 0x08,
               "CPL 0 patch not honoured")
    except (UcError, ValueError) as e:
        raise UcStateError(f"unicorn state self-test failed: {e}") from e
    finally:
        _PROBING = None


_LAYOUT: Layout | None = None
_PROBING: Layout | None = None
_LAYOUT_ERROR: UcStateError | None = None
_LOCK = threading.RLock()


def layout() -> Layout:
    """The discovered offsets (probed once per process, then cached); UcStateError if unusable."""
    global _LAYOUT, _LAYOUT_ERROR
    if _LAYOUT is not None:
        return _LAYOUT
    with _LOCK:
        if _PROBING is not None:
            return _PROBING
        if _LAYOUT is None and _LAYOUT_ERROR is None:
            try:
                lay = _discover()
            except UcStateError as e:
                _LAYOUT_ERROR = e
            except UcError as e:
                _LAYOUT_ERROR = UcStateError(f"unicorn state probe failed: {e}")
            else:
                _LAYOUT = lay
        if _LAYOUT_ERROR is not None:
            raise _LAYOUT_ERROR
        return _LAYOUT


# --------------------------------------------------------------------------- per-engine access

# One reusable context per engine: context_update() into it costs ~0.4 us, context_save() ~2 us.
_CONTEXTS: "weakref.WeakKeyDictionary[Uc, tuple[object, memoryview]]" = weakref.WeakKeyDictionary()


def _saved(uc: Uc) -> tuple[Layout, object, memoryview]:
    """Save uc's CPU state into its cached context; return it and a writable view of its bytes."""
    lay = layout()
    entry = _CONTEXTS.get(uc)
    if entry is None:
        ctx = uc.context_save()
        if ctx.size != lay.size:
            raise UcStateError(f"engine context is {ctx.size} bytes, expected {lay.size}: "
                               "not an x86 engine of this Unicorn build")
        buf = (ctypes.c_char * ctx.size).from_address(ctx.context.value)
        entry = _CONTEXTS[uc] = (ctx, memoryview(buf).cast("B"))
    else:
        uc.context_update(entry[0])
    return lay, entry[0], entry[1]


_TABLE_SLOTS = {"tr": 7, "gdt": 8, "idt": 9}  # after segs[6] QEMU keeps ldt, tr, gdt, idt


def descriptor_tables(uc: Uc) -> dict[str, tuple[int, int]]:
    """(base, limit) of the TR, GDTR and IDTR in one context read (the binding's tuple-register
    reads cost ~2.5 us each; delivery needs all three)."""
    lay, _ctx, b = _saved(uc)
    out = {}
    for name, slot in _TABLE_SLOTS.items():
        off = lay.seg(slot)
        out[name] = (struct.unpack_from("<Q", b, off + 8)[0], _u32(b, off + 16))
    return out


def _flush_tlb(uc: Uc) -> None:
    uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)


def cpl(uc: Uc) -> int:
    """Current privilege level, as QEMU keeps it (hflags), not CS.RPL."""
    lay, _, mv = _saved(uc)
    return _u32(mv, lay.hflags) & HF_CPL_MASK


def _seg_cache(desc: int) -> tuple[int, int, int]:
    """(base, limit, flags) from a raw GDT descriptor, like QEMU's get_seg_base/get_seg_limit."""
    e1, e2 = desc & 0xFFFFFFFF, (desc >> 32) & 0xFFFFFFFF
    base = (e1 >> 16) | ((e2 & 0xFF) << 16) | (e2 & 0xFF000000)
    limit = (e1 & 0xFFFF) | (e2 & 0x000F0000)
    if e2 & DESC_G_MASK:
        limit = (limit << 12) | 0xFFF
    return base, limit, e2


#: load_code_and_stack's ss_descriptor for "SS stays as it is" (an interrupt at the same privilege)
KEEP_SS = "keep"


def load_code_and_stack(uc: Uc, cs_selector: int, cs_descriptor: int,
                        ss_selector: int, ss_descriptor: int | str | None) -> None:
    """Load CS and SS (selector + hidden cache) and the CPL the way the CPU does.

    Descriptors are the raw 8-byte GDT entries. ``ss_descriptor=None`` loads a null SS whose RPL
    becomes the new CPL (64-bit interrupt to an inner level; QEMU's do_interrupt64 gives it flags
    DPL=RPL, base 0, limit 0). ``KEEP_SS`` keeps SS and its hidden cache as they are: a CPU does not
    reload SS for an interrupt at the same privilege, so a GDT entry changed since SS was loaded
    does not matter. Otherwise CPL = SS.DPL, as QEMU derives it. ValueError for
    combinations the CPU would refuse with #GP/#SS/#NP (the caller must deliver those itself).
    """
    cs_base, cs_limit, cs_flags = _seg_cache(cs_descriptor)
    if ss_descriptor == KEEP_SS:
        lay, _, mv = _saved(uc)
        off = lay.seg(R_SS)
        ss_selector = struct.unpack_from("<I", mv, off + _SEG_SEL)[0]
        ss_base = struct.unpack_from("<Q", mv, off + _SEG_BASE)[0]
        ss_limit, ss_flags = struct.unpack_from("<II", mv, off + _SEG_LIMIT)
        new_cpl = _u32(mv, lay.hflags) & HF_CPL_MASK
    elif ss_descriptor is None:
        if ss_selector & 0xFFFC:
            raise ValueError(f"SS {ss_selector:#x} is not a null selector but has no descriptor")
        new_cpl = ss_selector & 3
        if new_cpl == 3:
            raise ValueError("a null SS is not allowed at CPL 3")
        ss_base, ss_limit, ss_flags = 0, 0, new_cpl << DESC_DPL_SHIFT
    else:
        ss_base, ss_limit, ss_flags = _seg_cache(ss_descriptor)
        new_cpl = (ss_flags >> DESC_DPL_SHIFT) & 3
        if ss_flags & (DESC_P_MASK | DESC_S_MASK | DESC_CS_MASK | DESC_W_MASK) != (
                DESC_P_MASK | DESC_S_MASK | DESC_W_MASK):
            raise ValueError(f"SS descriptor {ss_descriptor:#018x} is not a present writable data segment")
        if ss_selector & 3 != new_cpl:
            raise ValueError(f"SS selector RPL {ss_selector & 3} != SS DPL {new_cpl}")
    if cs_flags & (DESC_P_MASK | DESC_S_MASK | DESC_CS_MASK) != (
            DESC_P_MASK | DESC_S_MASK | DESC_CS_MASK):
        raise ValueError(f"CS descriptor {cs_descriptor:#018x} is not a present code segment")
    cs_dpl = (cs_flags >> DESC_DPL_SHIFT) & 3
    if cs_selector & 3 != new_cpl or (cs_dpl > new_cpl if cs_flags & DESC_C_MASK else cs_dpl != new_cpl):
        raise ValueError(f"CS {cs_selector:#x} (DPL {cs_dpl}) does not match the new CPL {new_cpl}")

    lay, ctx, mv = _saved(uc)
    hflags = old = _u32(mv, lay.hflags)
    if not hflags & HF_LMA_MASK:
        raise ValueError("engine is not in long mode (hflags.LMA clear)")
    for idx, sel, base, limit, flags in ((R_CS, cs_selector, cs_base, cs_limit, cs_flags),
                                         (R_SS, ss_selector, ss_base, ss_limit, ss_flags)):
        off = lay.seg(idx)
        struct.pack_into("<I", mv, off + _SEG_SEL, sel & 0xFFFF)
        struct.pack_into("<Q", mv, off + _SEG_BASE, base)
        struct.pack_into("<II", mv, off + _SEG_LIMIT, limit, flags)

    # cpu_x86_load_seg_cache, CS part: 64-bit code segment or compatibility mode.
    if cs_flags & DESC_L_MASK:
        hflags = (hflags | HF_CS32_MASK | HF_SS32_MASK | HF_CS64_MASK) & ~HF_ADDSEG_MASK
    else:
        hflags = (hflags & ~(HF_CS32_MASK | HF_CS64_MASK)) | (
            (cs_flags & DESC_B_MASK) >> (22 - 4))
    # SS part: CPL = SS.DPL.
    hflags = (hflags & ~HF_CPL_MASK) | new_cpl
    # Common tail: SS32 from SS.B; ADDSEG unless 64-bit (LMA implies PE=1, VM=0).
    extra = (ss_flags & DESC_B_MASK) >> (22 - 5)
    if not hflags & HF_CS64_MASK:
        bases = ss_base | struct.unpack_from("<Q", mv, lay.seg(R_DS) + _SEG_BASE)[0] | \
            struct.unpack_from("<Q", mv, lay.seg(R_ES) + _SEG_BASE)[0]
        if not hflags & HF_CS32_MASK or bases:
            extra |= HF_ADDSEG_MASK
    hflags = (hflags & ~(HF_SS32_MASK | HF_ADDSEG_MASK)) | extra
    struct.pack_into("<I", mv, lay.hflags, hflags)
    uc.context_restore(ctx)
    if (old ^ hflags) & HF_CPL_MASK:
        _flush_tlb(uc)  # the softmmu TLB is per mmu_idx (user/kernel): drop stale permissions


def pending_error_code(uc: Uc) -> int:
    """env->error_code of the exception Unicorn just raised (0 for vectors without one)."""
    lay, _, mv = _saved(uc)
    return _u32(mv, lay.error_code)


def exception_is_software(uc: Uc) -> bool:
    """True if the last event was `int n` / `int3` / `into` (RIP is then after the instruction)."""
    lay, _, mv = _saved(uc)
    return _i32(mv, lay.exception_is_int) != 0


def reset_exception_state(uc: Uc) -> None:
    """Mark the last exception delivered (what QEMU's do_interrupt would do; bug #1883).

    old_exception = -1, so the next fault is not escalated to #DF / triple fault; error_code and
    exception_is_int are cleared so stale values are never read back.
    """
    lay, ctx, mv = _saved(uc)
    struct.pack_into("<i", mv, lay.old_exception, -1)
    struct.pack_into("<ii", mv, lay.error_code, 0, 0)
    uc.context_restore(ctx)


def interrupt_shadow(uc: Uc) -> bool:
    """True while the STI / MOV SS interrupt shadow is active (HF_INHIBIT_IRQ_MASK)."""
    lay, _, mv = _saved(uc)
    return bool(_u32(mv, lay.hflags) & HF_INHIBIT_IRQ_MASK)


def set_interrupt_shadow(uc: Uc, on: bool) -> None:
    lay, ctx, mv = _saved(uc)
    hflags = _u32(mv, lay.hflags)
    new = hflags | HF_INHIBIT_IRQ_MASK if on else hflags & ~HF_INHIBIT_IRQ_MASK
    if new != hflags:
        struct.pack_into("<I", mv, lay.hflags, new)
        uc.context_restore(ctx)
