"""apfdbg.machine.accel (C block and TLB-fill hooks) against real Unicorn 2.1.4 engines, no mocks.

Machine code is given as bytes with its assembly in a comment (GNU as, Intel syntax).
"""
from __future__ import annotations

import ctypes
import mmap
import struct
import time

import capstone
import pytest
from unicorn import (UC_ARCH_X86, UC_ERR_EXCEPTION, UC_HOOK_INTR, UC_MODE_64, UC_PROT_ALL,
                     UC_TLB_VIRTUAL, Uc, UcError)
from unicorn import x86_const as X

from apfdbg.machine import accel as A
from apfdbg.machine.accel import Accel
from apfdbg.machine.faults import GuestPageFault, HostSwapped, NonCanonical, BadPhysical

# mov ecx, 1000; l: inc rax; dec rcx; jnz l; hlt      (blocks: 0x1000 13 bytes 4 insns, 0x1005 8/3, 0x100d 1/1)
LOOP = bytes.fromhex("b9e803000048ffc048ffc975f8f4")
LOOP_N = 1000
LOOP_TOTAL = 1 + 3 * LOOP_N + 1
# mov ecx, 300; mov rsi, 0x200000; l: call f; mov [rsi], rax; add rsi, 8; dec ecx; jnz l; hlt;
# f: add rax, rcx; xor rdx, rax; ret
MIXED = bytes.fromhex("b92c01000048c7c600002000e80c0000004889064883c608ffc975f0f44801c84831c2c3")
MIXED_TOTAL = 2 + 300 * (5 + 3) + 1
LOAD = bytes.fromhex("488b03f4")  # mov rax, [rbx]; hlt
STORE = bytes.fromhex("488903f4")  # mov qword ptr [rbx], rax; hlt
PUSH = bytes.fromhex("50f4")  # push rax; hlt
JMP_RBX = bytes.fromhex("ffe3")  # jmp rbx
REP_MOVSB = bytes.fromhex("f3a4f4")  # rep movsb; hlt
INC_HLT = bytes.fromhex("48ffc0f4")  # inc rax; hlt
IRETQ = bytes.fromhex("48cf")  # iretq
SWITCH_AND_JUMP = bytes.fromhex("0f22dbb900004000ffe1")  # mov cr3, rbx; mov ecx, 0x400000; jmp rcx
# mov eax, 1; mov ebx, 2; mov ecx, 3; mov edx, 4; mov esi, 5; hlt   (5+5+5+5+5+1 bytes)
FIVE_MOVS = bytes.fromhex("b801000000bb02000000b903000000ba04000000be05000000f4")

CODE = 0x1000
PAGE = 4096
MSR_EFER = 0xC0000080
CR0_PG, CR0_WP, CR4_PAE, EFER_NXE = 1 << 31, 1 << 16, 1 << 5, 1 << 11
P, RW, US, ACC, DIRTY, PS, XD = 1, 2, 4, 0x20, 0x40, 0x80, 1 << 63

_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


class Rig:
    """Guest RAM in an mmap, an Accel, and `n` engines mapping it at physical 0."""

    def __init__(self, ram_size: int = 8 << 20, n: int = 1, miss: bool = True) -> None:
        self.size = ram_size
        self.mm = mmap.mmap(-1, ram_size)
        self._buf = (ctypes.c_char * ram_size).from_buffer(self.mm)
        self.ptr = ctypes.addressof(self._buf)
        self.acc = Accel(self.ptr, ram_size)
        self.misses: list[tuple[int, int]] = []
        self.refuse: set[int] = set()  # block addresses the miss callback refuses once
        self.ucs, self.vs = [], []
        for _ in range(n):
            uc = Uc(UC_ARCH_X86, UC_MODE_64)
            uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
            uc.mem_map_ptr(0, ram_size, UC_PROT_ALL, self.ptr)
            uc.reg_write(X.UC_X86_REG_RSP, 0x80000)
            self.ucs.append(uc)
            self.vs.append(self.acc.attach(uc, self.miss if miss else None))
        self.uc, self.v = self.ucs[0], self.vs[0]
        self.pt_next = 0x100000

    def miss(self, addr: int, size: int) -> int:
        self.misses.append((addr, size))
        if addr in self.refuse:
            self.refuse.discard(addr)
            return 0
        pa = self.v.translate(addr, "fetch", set_ad=False, host=False)
        return sum(1 for _ in _md.disasm_lite(bytes(self.mm[pa:pa + size]), addr))

    def write(self, pa: int, data: bytes) -> None:
        self.mm[pa:pa + len(data)] = data

    def read(self, pa: int, n: int) -> bytes:
        return bytes(self.mm[pa:pa + n])

    def q(self, pa: int) -> int:
        return struct.unpack_from("<Q", self.mm, pa)[0]

    def rip(self, uc=None) -> int:
        return (uc or self.uc).reg_read(X.UC_X86_REG_RIP)

    def run(self, begin: int | None = None, until: int = 0, uc=None) -> int | None:
        """emu_start; returns the UcError errno or None."""
        uc = uc or self.uc
        try:
            uc.emu_start(self.rip(uc) if begin is None else begin, until)
        except UcError as e:
            return e.errno
        return None

    # ---- guest page tables ----
    def alloc(self) -> int:
        a = self.pt_next
        self.pt_next += PAGE
        self.write(a, bytes(PAGE))
        return a

    def paging(self) -> int:
        """A new, empty PML4; the tables below are built by map()."""
        self.cr3 = self.alloc()
        return self.cr3

    def enable_paging(self, uc=None, nxe: bool = False, wp: bool = True) -> None:
        uc = uc or self.uc
        uc.reg_write(X.UC_X86_REG_CR3, self.cr3)
        uc.reg_write(X.UC_X86_REG_CR4, uc.reg_read(X.UC_X86_REG_CR4) | CR4_PAE)
        cr0 = uc.reg_read(X.UC_X86_REG_CR0) | CR0_PG
        uc.reg_write(X.UC_X86_REG_CR0, cr0 | CR0_WP if wp else cr0 & ~CR0_WP)
        efer = uc.msr_read(MSR_EFER)
        uc.msr_write(MSR_EFER, efer | EFER_NXE if nxe else efer & ~EFER_NXE)
        assert uc.reg_read(X.UC_X86_REG_CR0) & CR0_PG

    def entry(self, va: int, level: int, table_flags: int = P | RW | US) -> int:
        """Physical address of the level-`level` entry for va, creating tables on the way."""
        t = self.cr3
        for lv in (4, 3, 2, 1):
            ea = t + ((va >> (12 + 9 * (lv - 1))) & 511) * 8
            if lv == level:
                return ea
            e = self.q(ea)
            if not e & P:
                e = self.alloc() | table_flags
                self.write(ea, struct.pack("<Q", e))
            t = e & 0x000FFFFFFFFFF000
        raise AssertionError

    def map(self, va: int, pa: int, flags: int = P | RW | US, size: int = PAGE) -> int:
        level = {PAGE: 1, 2 << 20: 2, 1 << 30: 3}[size]
        ea = self.entry(va, level)
        self.write(ea, struct.pack("<Q", pa | flags | (PS if level > 1 else 0)))
        return ea


def block_starts(code: bytes, base: int) -> set[int]:
    """Addresses where a block starts in a straight run + its branch targets (test programs)."""
    starts = {base}
    for addr, size, mnem, op in _md.disasm_lite(code, base):
        if mnem.startswith("j") or mnem == "call":
            if mnem != "jmp":
                starts.add(addr + size)
            if op.startswith("0x"):
                starts.add(int(op, 16))
    return starts


# ---------------------------------------------------------------------------------------------
# build / layout
def test_library_is_the_built_extension_and_layout_matches():
    import importlib.util
    spec = importlib.util.find_spec("apfdbg.machine._accel")
    assert spec is not None and spec.origin.endswith(".so")
    assert A.lib.apf_abi_version() == A.ABI_VERSION
    A._check_layout(A.lib)  # raises on a ctypes/C mismatch


# ---------------------------------------------------------------------------------------------
# virtual time
def test_exact_count_one_run():
    r = Rig()
    r.write(CODE, LOOP)
    assert r.run(CODE) is None
    assert r.rip() == CODE + len(LOOP)  # after hlt
    assert r.v.retired == LOOP_TOTAL
    assert r.uc.reg_read(X.UC_X86_REG_RAX) == LOOP_N
    assert r.v.stop_reason == A.STOP_NONE


@pytest.mark.parametrize("code,total", [(LOOP, LOOP_TOTAL), (MIXED, MIXED_TOTAL)], ids=["loop", "mixed"])
@pytest.mark.parametrize("budget", [1, 2, 3, 5, 17, 1000])
def test_sliced_counting_is_exact_and_stops_at_block_boundaries(code, total, budget):
    ref = Rig()
    ref.write(CODE, code)
    assert ref.run(CODE) is None
    assert ref.v.retired == total
    ref_regs = [ref.uc.reg_read(reg) for reg in (X.UC_X86_REG_RAX, X.UC_X86_REG_RDX,
                                                  X.UC_X86_REG_RSI, X.UC_X86_REG_RIP)]
    ref_mem = ref.read(0x200000, 300 * 8)

    r = Rig()
    r.write(CODE, code)
    starts = block_starts(code, CODE)
    max_block = 5
    rip, slices = CODE, 0
    while True:
        r.v.budget_end = r.v.retired + budget
        r.v.clear_stop()
        assert r.run(rip) is None
        slices += 1
        rip = r.rip()
        if r.v.stop_reason == A.STOP_NONE:
            break  # hlt
        assert r.v.stop_reason == A.STOP_BUDGET
        assert rip in starts, hex(rip)  # never inside a block
        assert r.v.budget_end <= r.v.retired < r.v.budget_end + max_block
        assert slices < 10 * total
    assert r.v.retired == total
    assert [r.uc.reg_read(reg) for reg in (X.UC_X86_REG_RAX, X.UC_X86_REG_RDX,
                                           X.UC_X86_REG_RSI, X.UC_X86_REG_RIP)] == ref_regs
    assert r.read(0x200000, 300 * 8) == ref_mem
    if budget == 1:
        assert slices > total // 5  # really sliced


def test_budget_stop_does_not_execute_the_block():
    r = Rig()
    r.write(CODE, LOOP)
    r.v.budget_end = 0  # exhausted before the first block
    assert r.run(CODE) is None
    assert r.v.stop_reason == A.STOP_BUDGET
    assert r.rip() == CODE and r.v.retired == 0
    assert r.uc.reg_read(X.UC_X86_REG_RCX) == 0  # `mov ecx, 1000` did not run

    # Mid-loop: the stop lands before the loop block, whose 3 instructions did not run.
    r.v.budget_end = 10
    r.v.clear_stop()
    assert r.run(CODE) is None
    assert r.v.stop_reason == A.STOP_BUDGET
    assert r.rip() == CODE + 5  # loop head
    assert r.v.retired == 10  # 4 + 3 + 3
    assert r.uc.reg_read(X.UC_X86_REG_RAX) == 3  # exactly the iterations counted
    assert r.uc.reg_read(X.UC_X86_REG_RCX) == LOOP_N - 3
    assert r.v.cur_block == (CODE + 5, 8, 3)


def test_miss_callback_once_per_distinct_block_and_zero_stops_before_it():
    r = Rig()
    r.write(CODE, LOOP)
    assert r.run(CODE) is None
    assert sorted(r.misses) == [(CODE, 13), (CODE + 5, 8), (CODE + 13, 1)]
    assert r.v.cache_size == 3

    r.misses.clear()
    r.uc.reg_write(X.UC_X86_REG_RAX, 0)
    assert r.run(CODE) is None  # same blocks: all cached
    assert r.misses == [] and r.v.retired == 2 * LOOP_TOTAL

    # Refusing a block stops before it: not run, not counted, not cached.
    r.v.flush_cache()
    r.misses.clear()
    r.refuse.add(CODE + 5)
    r.v.retired = 0
    r.uc.reg_write(X.UC_X86_REG_RAX, 0)
    assert r.run(CODE) is None
    assert r.v.stop_reason == A.STOP_NEW_BLOCK
    assert r.rip() == CODE + 5
    assert r.v.retired == 4  # the first block only
    assert r.uc.reg_read(X.UC_X86_REG_RAX) == 1  # the refused block did not run
    assert r.misses == [(CODE, 13), (CODE + 5, 8)]
    r.uc.ctl_remove_cache(CODE + 5, CODE + 6)  # what the machine does after adding its hooks
    r.v.clear_stop()
    assert r.run() is None  # restart at the block: asked again (never cached), then counted
    assert r.misses == [(CODE, 13), (CODE + 5, 8), (CODE + 5, 8), (CODE + 13, 1)]
    assert r.v.retired == LOOP_TOTAL


def test_miss_callback_exception_stops_and_is_reraised():
    r = Rig()
    r.write(CODE, LOOP)

    def bad(addr, size):
        raise RuntimeError("decoder broke")

    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map_ptr(0, r.size, UC_PROT_ALL, r.ptr)
    v = r.acc.attach(uc, bad)
    uc.emu_start(CODE, 0)
    assert v.stop_reason == A.STOP_NEW_BLOCK and uc.reg_read(X.UC_X86_REG_RIP) == CODE
    with pytest.raises(RuntimeError, match="decoder broke"):
        v.take_miss_error()


def test_without_miss_callback_unicorn_tb_icount_is_used():
    r = Rig(miss=False)
    r.write(CODE, MIXED)
    assert r.run(CODE) is None
    assert r.v.retired == MIXED_TOTAL
    assert r.v.stats["misses"] == len(block_starts(MIXED, CODE))


def test_rep_counts_each_iteration_plus_the_final_check():
    """Documented model: QEMU re-enters a `rep` block per iteration (docs/accel.md)."""
    r = Rig()
    r.write(CODE, REP_MOVSB)
    r.uc.reg_write(X.UC_X86_REG_RSI, 0x200000)
    r.uc.reg_write(X.UC_X86_REG_RDI, 0x210000)
    r.uc.reg_write(X.UC_X86_REG_RCX, 16)
    assert r.run(CODE) is None
    assert r.v.retired == (16 + 1) + 1  # rep movsb, then hlt


def test_hooks_outlive_the_python_object_and_detach_removes_them():
    import gc
    r = Rig()
    r.write(CODE, LOOP)
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map_ptr(0, r.size, UC_PROT_ALL, r.ptr)
    v = A.VcpuAccel.attach(uc, r.ptr, r.size, r.acc.frame_state_ptr, r.miss)
    state = A.ApfVcpu.from_address(v.address)
    del v
    gc.collect()
    uc.emu_start(CODE, 0)  # the C state lives as long as the engine
    assert state.retired == LOOP_TOTAL
    v = A.VcpuAccel.attach(uc, r.ptr, r.size, r.acc.frame_state_ptr, r.miss)
    uc.emu_start(CODE, 0)
    assert v.retired == LOOP_TOTAL
    v.detach()  # removes the second attachment's hooks only; its C state is freed
    uc.emu_start(CODE, 0)
    assert uc.reg_read(X.UC_X86_REG_RIP) == CODE + len(LOOP)
    assert state.retired == 3 * LOOP_TOTAL  # the first attachment counted every run
    del uc, state
    gc.collect()


def test_block_cache_is_per_address_space():
    """Same linear address and block size under two CR3s, different instruction counts."""
    r = Rig()
    r.paging()
    cr3_a = r.cr3
    r.map(CODE, 0x10000)
    r.write(0x10000, INC_HLT)  # inc rax; hlt: 4 bytes, 2 instructions
    r.cr3 = cr3_b = r.alloc()
    r.map(CODE, 0x11000)
    r.write(0x11000, bytes.fromhex("909090f4"))  # nop; nop; nop; hlt: 4 bytes, 4 instructions
    r.cr3 = cr3_a
    r.enable_paging()
    assert r.run(CODE) is None and r.v.retired == 2
    r.uc.reg_write(X.UC_X86_REG_CR3, cr3_b)
    r.v.flush_tlb()
    assert r.run(CODE) is None and r.v.retired == 2 + 4
    r.uc.reg_write(X.UC_X86_REG_CR3, cr3_a)
    r.v.flush_tlb()
    assert r.run(CODE) is None and r.v.retired == 2 + 4 + 2
    assert sorted(r.misses) == [(CODE, 4), (CODE, 4)]  # once per address space


def test_native_cr3_switch_counts_with_the_new_address_space():
    """`mov cr3` in the guest (no Python involved): Unicorn flushes the TLB, the next fill sees
    the new CR3 and the block cache is keyed by it."""
    r = Rig()
    spaces = []
    for phys, code in ((0x10000, INC_HLT), (0x11000, bytes.fromhex("909090f4"))):
        r.cr3 = r.alloc()
        r.map(CODE, CODE)  # shared trampoline
        r.map(0x400000, phys)
        r.write(phys, code)
        spaces.append(r.cr3)
    r.write(CODE, SWITCH_AND_JUMP)
    r.cr3 = spaces[0]
    r.enable_paging()
    r.uc.reg_write(X.UC_X86_REG_RBX, spaces[0])
    assert r.run(CODE) is None and r.v.retired == 3 + 2
    r.uc.reg_write(X.UC_X86_REG_RBX, spaces[1])
    assert r.run(CODE) is None and r.v.retired == 5 + 3 + 4
    assert r.uc.reg_read(X.UC_X86_REG_RAX) == 1  # `inc rax` ran once, in space 0 only
    r.uc.reg_write(X.UC_X86_REG_RBX, spaces[0])
    assert r.run(CODE) is None and r.v.retired == 12 + 3 + 2


# ---------------------------------------------------------------------------------------------
# host paging (frames swapped out by the host)
DATA = 0x300000  # frame 0x300
PATTERN = bytes(range(256)) * 16


def _host_case(r: Rig, case: str):
    """Place the code of one case; returns (code address, faulting instruction, gfn, access)."""
    uc = r.uc
    r.write(DATA - PAGE, PATTERN)
    r.write(DATA, PATTERN[::-1])
    if case == "load":
        r.write(CODE, LOAD)
        uc.reg_write(X.UC_X86_REG_RBX, DATA + 0x10)
        return CODE, CODE, DATA >> 12, "read"
    if case == "store":
        r.write(CODE, STORE)
        uc.reg_write(X.UC_X86_REG_RBX, DATA + 0x10)
        uc.reg_write(X.UC_X86_REG_RAX, 0x1122334455667788)
        return CODE, CODE, DATA >> 12, "write"
    if case == "push":
        r.write(CODE, PUSH)
        uc.reg_write(X.UC_X86_REG_RSP, DATA + 0x18)
        uc.reg_write(X.UC_X86_REG_RAX, 0x1122334455667788)
        return CODE, CODE, DATA >> 12, "write"
    if case == "fetch":
        r.write(CODE, JMP_RBX)
        r.write(DATA + 0x20, INC_HLT)
        uc.reg_write(X.UC_X86_REG_RBX, DATA + 0x20)
        return CODE, DATA + 0x20, DATA >> 12, "fetch"
    if case == "straddle_load":
        r.write(CODE, LOAD)
        uc.reg_write(X.UC_X86_REG_RBX, DATA - 4)
        return CODE, CODE, DATA >> 12, "read"
    if case == "straddle_store":
        r.write(CODE, STORE)
        uc.reg_write(X.UC_X86_REG_RBX, DATA - 4)
        uc.reg_write(X.UC_X86_REG_RAX, 0x1122334455667788)
        return CODE, CODE, DATA >> 12, "write"
    if case == "rep_movsb":
        r.write(CODE, REP_MOVSB)
        uc.reg_write(X.UC_X86_REG_RSI, 0x200000)
        uc.reg_write(X.UC_X86_REG_RDI, DATA - 0x100)
        uc.reg_write(X.UC_X86_REG_RCX, 0x200)
        r.write(0x200000, bytes((i * 7) & 0xFF for i in range(0x200)))
        return CODE, CODE, DATA >> 12, "write"
    raise AssertionError(case)


def _expected_after(r: Rig, case: str, before: bytes) -> bytes:
    """RAM window [DATA - PAGE, DATA + PAGE) after the case ran to the end on a real CPU."""
    m = bytearray(before)
    o = PAGE  # offset of DATA in the window
    val = struct.pack("<Q", 0x1122334455667788)
    if case == "store":
        m[o + 0x10:o + 0x18] = val
    elif case == "push":
        m[o + 0x10:o + 0x18] = val
    elif case == "straddle_store":
        m[o - 4:o + 4] = val
    elif case == "rep_movsb":
        m[o - 0x100:o + 0x100] = bytes((i * 7) & 0xFF for i in range(0x200))
    return bytes(m)


HOST_CASES = ["load", "store", "push", "fetch", "straddle_load", "straddle_store", "rep_movsb"]


@pytest.mark.parametrize("case", HOST_CASES)
def test_host_page_out_denies_at_the_instruction_and_restart_completes(case):
    r = Rig()
    intr = []
    r.uc.hook_add(UC_HOOK_INTR, lambda uc, no, ud: (intr.append(no), uc.emu_stop()))
    start, fault_rip, gfn, access = _host_case(r, case)
    window = lambda: r.read(DATA - PAGE, 2 * PAGE)  # noqa: E731
    before = window()
    r.acc.page_out(gfn)
    assert r.acc.is_out(gfn)

    err = r.run(start)
    assert err == UC_ERR_EXCEPTION  # a denied fill surfaces as UC_ERR_EXCEPTION ...
    assert intr == []  # ... and never as vector 14 in UC_HOOK_INTR
    assert r.v.stop_reason == A.STOP_MEMFAULT
    f = r.v.fault
    assert (f.kind, f.gfn, f.access, f.level) == ("host", gfn, access, 0)
    assert f.va == gfn << 12  # page aligned (Unicorn masks it)
    assert r.rip() == fault_rip
    if case == "rep_movsb":  # partial progress, exactly up to the frame boundary
        assert r.uc.reg_read(X.UC_X86_REG_RCX) == 0x100
        assert r.uc.reg_read(X.UC_X86_REG_RDI) == DATA
        assert window()[PAGE - 0x100:PAGE] == bytes((i * 7) & 0xFF for i in range(0x100))
        assert window()[PAGE:] == before[PAGE:]
    else:
        assert window() == before  # nothing written, not even half of a straddling store

    r.acc.page_in(gfn)
    r.v.clear_stop()
    assert r.run() is None  # restart at RIP
    assert r.v.stop_reason == A.STOP_NONE and r.v.fault is None
    assert window() == _expected_after(r, case, before)
    if case in ("load", "straddle_load"):
        o = PAGE + (0x10 if case == "load" else -4)
        assert r.uc.reg_read(X.UC_X86_REG_RAX) == struct.unpack("<Q", before[o:o + 8])[0]
    if case == "fetch":
        assert r.uc.reg_read(X.UC_X86_REG_RAX) == 1 and r.rip() == DATA + 0x24


def test_first_frame_of_straddling_store_swapped():
    r = Rig()
    _host_case(r, "straddle_store")
    before = r.read(DATA - PAGE, 2 * PAGE)
    r.acc.page_out((DATA >> 12) - 1)
    assert r.run(CODE) == UC_ERR_EXCEPTION
    assert r.v.fault.gfn == (DATA >> 12) - 1 and r.rip() == CODE
    assert r.read(DATA - PAGE, 2 * PAGE) == before


def test_block_crossing_into_a_swapped_frame_faults_at_block_start():
    """A block whose bytes cross into a swapped frame is refused as a whole (RIP = block start,
    none of it ran); rerunning with `until` = the crossing instruction gives the exact RIP."""
    r = Rig()
    start = 0x5FF0  # FIVE_MOVS: the 4th mov (0x5fff) crosses into frame 6
    r.write(start, FIVE_MOVS)
    r.acc.page_out(6)
    assert r.run(start) == UC_ERR_EXCEPTION
    assert r.v.fault.access == "fetch" and r.v.fault.gfn == 6
    assert r.rip() == start and r.uc.reg_read(X.UC_X86_REG_RAX) == 0 and r.v.retired == 0

    r.uc.ctl_remove_cache(start, start + 1)
    r.v.clear_stop()
    assert r.run(start, until=0x5FFF) is None
    assert r.rip() == 0x5FFF and r.uc.reg_read(X.UC_X86_REG_RCX) == 3 and r.v.retired == 3
    assert r.run(0x5FFF) == UC_ERR_EXCEPTION
    assert r.rip() == 0x5FFF and r.v.fault.gfn == 6
    r.acc.page_in(6)
    r.v.clear_stop()
    assert r.run() is None
    assert r.uc.reg_read(X.UC_X86_REG_RSI) == 5 and r.v.retired == 6


def test_page_out_flushes_every_engine():
    r = Rig(n=2)
    for uc in r.ucs:
        r.write(CODE, LOAD)
        uc.reg_write(X.UC_X86_REG_RBX, DATA)
        assert r.run(CODE, uc=uc) is None  # both TLBs now hold the data page
    r.acc.page_out(DATA >> 12)
    for uc, v in zip(r.ucs, r.vs):
        assert r.run(CODE, uc=uc) == UC_ERR_EXCEPTION
        assert v.fault.gfn == DATA >> 12
    r.acc.page_in(DATA >> 12)
    for uc, v in zip(r.ucs, r.vs):
        v.clear_stop()
        assert r.run(CODE, uc=uc) is None


def test_many_distinct_page_outs_do_not_slow_round_trips():
    r = Rig(ram_size=32 << 20)
    r.write(CODE, LOAD)
    n = 4000
    times = []
    for i in range(n):
        gfn = 0x800 + i
        t = time.perf_counter()
        r.acc.page_out(gfn)
        r.uc.reg_write(X.UC_X86_REG_RBX, gfn << 12)
        r.v.clear_stop()
        assert r.run(CODE) == UC_ERR_EXCEPTION and r.v.fault.gfn == gfn
        r.acc.page_in(gfn)
        r.v.clear_stop()
        assert r.run() is None
        times.append(time.perf_counter() - t)
    first = sorted(times[:400])[200]
    last = sorted(times[-400:])[200]
    assert last < 10 * first, (first, last)


# ---------------------------------------------------------------------------------------------
# guest paging
def _paged_rig(nxe=False, wp=True) -> Rig:
    r = Rig()
    r.paging()
    r.map(CODE, CODE)  # identity code page, user
    r.map(0x7F000, 0x7F000, P | RW)  # kernel stack page (RSP = 0x80000)
    r.enable_paging(nxe=nxe, wp=wp)
    return r


def test_translation_4k_2m_1g_and_a_load_through_it():
    r = _paged_rig()
    r.map(0x400000, 0x200000)
    r.map(0x40000000, 0x600000, size=2 << 20)
    r.map(0x8000000000, 0, size=1 << 30)
    v = r.v
    assert v.translate(0x400123) == 0x200123
    assert v.translate(0x40000000 + 0x1ABCDE) == 0x600000 + 0x1ABCDE
    assert v.translate(0x8000000000 + 0x345678) == 0x345678
    f = v.try_translate(0x500000)[1]
    assert f.kind == "guest" and f.error_code == 0
    with pytest.raises(GuestPageFault) as ei:
        v.translate(0x500000, "write")
    assert ei.value.error_code == A.PFEC_W and ei.value.va == 0x500000

    r.write(0x6ABCD8, struct.pack("<Q", 0xFEEDFACECAFEBEEF))
    r.write(CODE, LOAD)
    r.uc.reg_write(X.UC_X86_REG_RBX, 0x40000000 + 0xABCD8)
    assert r.run(CODE) is None
    assert r.uc.reg_read(X.UC_X86_REG_RAX) == 0xFEEDFACECAFEBEEF


def test_guest_not_present_page_denies_with_pf_error_code():
    r = _paged_rig()
    r.write(CODE, STORE)
    r.uc.reg_write(X.UC_X86_REG_RBX, 0x500008)
    assert r.run(CODE) == UC_ERR_EXCEPTION
    f = r.v.fault
    assert (f.kind, f.access, f.va, f.error_code) == ("guest", "write", 0x500000, A.PFEC_W)
    assert r.rip() == CODE
    r.map(0x500000, 0x210000)  # the guest's #PF handler would do this
    r.v.clear_stop()
    r.uc.reg_write(X.UC_X86_REG_RAX, 77)
    assert r.run() is None and r.q(0x210008) == 77


def test_user_supervisor_and_write_protection():
    r = _paged_rig()
    r.map(0x400000, 0x200000, P | RW)  # supervisor
    r.map(0x401000, 0x201000, P | US)  # user, read-only
    v = r.v
    assert v.translate(0x400000, "read", user=False) == 0x200000
    assert v.try_translate(0x400000, "read", user=True)[1].error_code == A.PFEC_P | A.PFEC_U
    assert v.try_translate(0x401000, "write", user=True)[1].error_code == (
        A.PFEC_P | A.PFEC_W | A.PFEC_U)
    assert v.try_translate(0x401000, "write", user=False)[1].error_code == A.PFEC_P | A.PFEC_W
    r.uc.reg_write(X.UC_X86_REG_CR0, r.uc.reg_read(X.UC_X86_REG_CR0) & ~CR0_WP)
    assert v.translate(0x401000, "write", user=False) == 0x201000  # CR0.WP = 0
    # a read-only page may be read; a supervisor page fetched by the kernel
    assert v.translate(0x401000, "read", user=True) == 0x201000
    assert v.translate(0x400000, "fetch", user=False) == 0x200000


# GDT for the CPL 3 test: null, kernel code 0x08, kernel data 0x10, user data 0x18, user code 0x20
_GDT = (0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0x00CFF3000000FFFF, 0x00AFFB000000FFFF)


def test_user_mode_access_to_supervisor_page_at_cpl3():
    r = _paged_rig()
    uc = r.uc
    r.write(0x3000, b"".join(struct.pack("<Q", d) for d in _GDT))
    r.map(0x3000, 0x3000, P | RW)  # GDT: supervisor
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x3000, len(_GDT) * 8 - 1, 0))
    r.map(0x400000, 0x200000, P | RW)  # supervisor data
    r.map(0x401000, 0x201000, P | RW | US)  # user data
    r.map(0x402000, 0x202000, P | RW | US)  # user code
    r.map(0x410000, 0x210000, P | RW | US)  # user stack
    r.write(0x202000, LOAD)
    r.write(CODE, IRETQ)
    r.write(0x7FF00, struct.pack("<5Q", 0x402000, 0x23, 0x2, 0x411000, 0x1B))
    uc.reg_write(X.UC_X86_REG_RSP, 0x7FF00)
    uc.reg_write(X.UC_X86_REG_RBX, 0x400010)
    assert r.run(CODE) == UC_ERR_EXCEPTION
    assert uc.reg_read(X.UC_X86_REG_CS) == 0x23  # running at CPL 3
    f = r.v.fault
    assert (f.kind, f.access, f.user) == ("guest", "read", True)
    assert f.error_code == A.PFEC_P | A.PFEC_U and f.va == 0x400000
    assert r.rip() == 0x402000

    # the same instruction on a user page works at CPL 3 (then `hlt` raises #GP: CPL 3)
    uc.reg_write(X.UC_X86_REG_RBX, 0x401010)
    r.write(0x201010, struct.pack("<Q", 4242))
    r.v.clear_stop()
    vectors = []
    uc.hook_add(UC_HOOK_INTR, lambda uc, no, ud: (vectors.append(no), uc.emu_stop()))
    assert r.run() is None and uc.reg_read(X.UC_X86_REG_RAX) == 4242
    assert vectors == [13] and r.rip() == 0x402003 and r.v.fault is None
    assert r.v.try_translate(0x400000)[1].error_code == A.PFEC_P | A.PFEC_U  # user=None: CS.RPL


def test_nx():
    r = _paged_rig(nxe=True)
    r.map(0x400000, 0x200000, P | RW | XD)
    r.write(0x200000, INC_HLT)
    r.write(CODE, JMP_RBX)
    r.uc.reg_write(X.UC_X86_REG_RBX, 0x400000)
    assert r.v.translate(0x400000, "read") == 0x200000
    assert r.run(CODE) == UC_ERR_EXCEPTION
    f = r.v.fault
    assert (f.kind, f.access, f.error_code) == ("guest", "fetch", A.PFEC_P | A.PFEC_ID)
    assert r.rip() == 0x400000 and r.uc.reg_read(X.UC_X86_REG_RAX) == 0
    # without EFER.NXE the XD bit is reserved
    r.uc.msr_write(MSR_EFER, r.uc.msr_read(MSR_EFER) & ~EFER_NXE)
    assert r.v.try_translate(0x400000, "read")[1].error_code == A.PFEC_P | A.PFEC_RSVD
    # and without XD the page runs
    r.map(0x400000, 0x200000, P | RW)
    r.v.flush_tlb()
    r.v.clear_stop()
    assert r.run() is None and r.uc.reg_read(X.UC_X86_REG_RAX) == 1


def test_accessed_and_dirty_bits():
    r = _paged_rig()
    pte = r.map(0x400000, 0x200000)
    pml4e, pdpte, pde = (r.entry(0x400000, lv) for lv in (4, 3, 2))
    levels = (pml4e, pdpte, pde, pte)
    assert not any(r.q(e) & (ACC | DIRTY) for e in levels)
    # a debugger read sets nothing
    r.v.translate(0x400000, "read", set_ad=False)
    assert not any(r.q(e) & ACC for e in levels)
    # a guest load sets A everywhere, D nowhere
    r.write(CODE, LOAD)
    r.uc.reg_write(X.UC_X86_REG_RBX, 0x400008)
    assert r.run(CODE) is None
    assert all(r.q(e) & ACC for e in levels)
    assert not any(r.q(e) & DIRTY for e in levels)
    # a later store to the same (TLB-cached, read-only-granted) page refills and sets D
    r.write(CODE, STORE)
    r.uc.ctl_remove_cache(CODE, CODE + 1)
    assert r.run(CODE) is None
    assert r.q(pte) & DIRTY and not r.q(pde) & DIRTY
    # 2 MiB page: D goes in the PDE (the leaf)
    pde2 = r.map(0x40000000, 0x600000, size=2 << 20)
    r.v.translate(0x40000000 + 0x1234, "write")
    assert r.q(pde2) & (ACC | DIRTY) == ACC | DIRTY


def test_swapped_page_table_frame_is_a_host_fault_on_that_frame():
    r = _paged_rig()
    va = 0x8000400000  # PML4 slot 1: its PDPT, PD and PT are used by nothing else
    r.map(va, 0x200000)
    r.write(CODE, LOAD)
    r.uc.reg_write(X.UC_X86_REG_RBX, va)
    assert r.run(CODE) is None
    for level in (0, 1, 2, 3):  # 0: the page itself, else the table holding that entry
        frame = 0x200 if level == 0 else r.entry(va, level) >> 12
        r.acc.page_out(frame)
        r.v.clear_stop()
        assert r.run(CODE) == UC_ERR_EXCEPTION
        f = r.v.fault
        assert (f.kind, f.gfn, f.level, f.va, f.access) == ("host", frame, level, va, "read")
        assert r.rip() == CODE
        with pytest.raises(HostSwapped) as ei:
            r.v.translate(va)
        assert ei.value.gfn == frame
        assert r.v.translate(va, host=False) == 0x200000  # debugger view
        r.acc.page_in(frame)
        r.v.clear_stop()
        assert r.run() is None
    # the PML4 (CR3) frame: even the code fetch needs it
    r.acc.page_out(r.cr3 >> 12)
    r.v.clear_stop()
    assert r.run(CODE) == UC_ERR_EXCEPTION
    f = r.v.fault
    assert (f.kind, f.gfn, f.level, f.va, f.access) == ("host", r.cr3 >> 12, 4, CODE, "fetch")


def test_noncanonical_and_beyond_ram():
    r = _paged_rig()
    r.map(0x400000, r.size + 0x5000)  # a PTE pointing outside RAM
    with pytest.raises(BadPhysical) as ei:
        r.v.translate(0x400000)
    assert ei.value.gpa == r.size + 0x5000
    r.write(CODE, LOAD)
    r.uc.reg_write(X.UC_X86_REG_RBX, 0x0000800000000000)
    assert r.run(CODE) == UC_ERR_EXCEPTION
    assert r.v.fault.kind == "noncanonical" and r.rip() == CODE
    with pytest.raises(NonCanonical):
        r.v.translate(0xFFFF7FFFFFFFF000)
