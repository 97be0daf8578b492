"""apfdbg.machine.ucstate against a real Unicorn 2.1.4 x86-64 engine (no mocks)."""

import struct

import pytest
from unicorn import UC_ARCH_ARM64, UC_ARCH_X86, UC_HOOK_INSN, UC_HOOK_INTR, UC_MODE_64, UC_MODE_ARM, Uc
from unicorn import x86_const as x86

from apfdbg.machine import ucstate
from apfdbg.machine.ucstate import UcStateError

GDT_BASE, CODE, USER, KSTACK, USTACK = 0x1000, 0x10000, 0x20000, 0x8000, 0x30000
KCODE = 0x00AF9B000000FFFF   # 0x08: 64-bit code, DPL 0
KDATA = 0x00CF93000000FFFF   # 0x10: data, DPL 0
UDATA = 0x00CFF3000000FFFF   # 0x18: data, DPL 3
UCODE = 0x00AFFB000000FFFF   # 0x20: 64-bit code, DPL 3
GDT = (0, KCODE, KDATA, UDATA, UCODE)
MSR_EFER, MSR_STAR, MSR_LSTAR = 0xC0000080, 0xC0000081, 0xC0000082


class Machine:
    """A CPL 0 engine with a flat GDT; records every vector seen in UC_HOOK_INTR and stops."""

    def __init__(self, intr=None):
        uc = self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map(0, 0x40000)
        uc.mem_write(GDT_BASE, b"".join(struct.pack("<Q", d) for d in GDT))
        uc.reg_write(x86.UC_X86_REG_GDTR, (0, GDT_BASE, len(GDT) * 8 - 1, 0))
        uc.reg_write(x86.UC_X86_REG_RSP, KSTACK)
        self.vectors = []
        uc.hook_add(UC_HOOK_INTR, intr or self._intr)
        self.next = CODE

    def _intr(self, uc, intno, _):
        self.vectors.append(intno)
        uc.emu_stop()

    def place(self, code, at=None):
        addr = at if at is not None else self.next
        if at is None:
            self.next += 0x100
        self.uc.mem_write(addr, code)
        return addr

    def run(self, code, until=None, count=0, at=None):
        """Place code and run it from its start; return its address."""
        addr = self.place(code, at)
        self.vectors.clear()
        self.uc.emu_start(addr, addr + len(code) if until is None else until, count=count)
        return addr

    def rip(self):
        return self.uc.reg_read(x86.UC_X86_REG_RIP)

    def to_user(self):
        ucstate.load_code_and_stack(self.uc, 0x23, UCODE, 0x1B, UDATA)
        self.uc.reg_write(x86.UC_X86_REG_RSP, USTACK)

    def to_kernel_null_ss(self):
        ucstate.load_code_and_stack(self.uc, 0x08, KCODE, 0x00, None)
        self.uc.reg_write(x86.UC_X86_REG_RSP, KSTACK)


@pytest.fixture
def m():
    return Machine()


def mov_ds(sel):
    return b"\x66\xb8" + struct.pack("<H", sel) + b"\x8e\xd8"  # mov ax, sel; mov ds, ax


def test_layout_is_cached_and_matches_the_live_engine(m):
    lay = ucstate.layout()
    assert ucstate.layout() is lay
    assert lay.seg_stride == 24
    assert len({lay.hflags, lay.segs, lay.error_code, lay.exception_is_int, lay.old_exception}) == 5
    # The CS selector slot really is what reg_write(CS) writes, RAX is at env + 0.
    m.uc.reg_write(x86.UC_X86_REG_CS, 0x33)
    m.uc.reg_write(x86.UC_X86_REG_RAX, 0x1122334455667788)
    blob = bytes(m.uc.context_save())
    assert struct.unpack_from("<I", blob, lay.seg(1))[0] == 0x33
    assert struct.unpack_from("<Q", blob, lay.env)[0] == 0x1122334455667788
    assert struct.unpack_from("<i", blob, lay.old_exception)[0] == -1


def test_cpl_comes_from_hflags_not_cs_rpl(m):
    m.uc.reg_write(x86.UC_X86_REG_CS, 0x23)  # selector only: still CPL 0
    assert ucstate.cpl(m.uc) == 0
    m.run(b"\xfa")  # cli works at CPL 0
    assert m.vectors == []


@pytest.mark.parametrize("insn", [b"\xfa", b"\x0f\x30", b"\xf4", b"\x0f\x22\xd8", b"\x0f\x01\xf8"],
                         ids=["cli", "wrmsr", "hlt", "mov_cr3", "swapgs"])
def test_cpl3_privileged_instructions_raise_gp0(m, insn):
    m.to_user()
    assert ucstate.cpl(m.uc) == 3
    assert m.uc.reg_read(x86.UC_X86_REG_CS) == 0x23
    assert m.uc.reg_read(x86.UC_X86_REG_SS) == 0x1B
    addr = m.run(b"\x90" + insn)
    assert m.vectors == [13]
    assert m.rip() == addr + 1  # at the faulting instruction
    assert ucstate.pending_error_code(m.uc) == 0
    assert not ucstate.exception_is_software(m.uc)


def test_cpl3_to_cpl0_null_ss_then_native_iretq_and_sysretq(m):
    uc = m.uc
    m.to_user()
    m.run(b"\xfa")
    assert m.vectors == [13]
    ucstate.reset_exception_state(uc)

    # Interrupt-style entry: CPL 3 -> 0 with a null SS whose RPL is the new CPL.
    m.to_kernel_null_ss()
    assert ucstate.cpl(uc) == 0
    assert uc.reg_read(x86.UC_X86_REG_SS) == 0 and uc.reg_read(x86.UC_X86_REG_CS) == 0x08
    m.run(b"\xfa\x0f\x20\xd8")  # cli; mov rax, cr3
    assert m.vectors == []

    # Native iretq with a hand-built frame goes back to CPL 3.
    user_rip = m.place(b"\x90\xf4")  # nop; hlt (hlt must #GP at CPL 3)
    uc.mem_write(KSTACK - 40, struct.pack("<5Q", user_rip, 0x23, 0x202, USTACK, 0x1B))
    uc.reg_write(x86.UC_X86_REG_RSP, KSTACK - 40)
    m.run(b"\x48\xcf", until=user_rip)
    assert m.vectors == [] and m.rip() == user_rip
    assert ucstate.cpl(uc) == 3
    assert uc.reg_read(x86.UC_X86_REG_RSP) == USTACK and uc.reg_read(x86.UC_X86_REG_SS) == 0x1B
    uc.emu_start(user_rip, user_rip + 2)
    assert m.vectors == [13] and m.rip() == user_rip + 1
    ucstate.reset_exception_state(uc)

    # SYSCALL-style entry (CS 0x08 / SS 0x10), then a native sysretq.
    uc.msr_write(MSR_EFER, uc.msr_read(MSR_EFER) | 1)  # SCE
    uc.msr_write(MSR_STAR, (0x10 << 48) | (0x08 << 32))
    ucstate.load_code_and_stack(uc, 0x08, KCODE, 0x10, KDATA)
    assert ucstate.cpl(uc) == 0
    back = m.place(b"\x90\xfa")  # nop; cli (must #GP again)
    uc.reg_write(x86.UC_X86_REG_RCX, back)
    uc.reg_write(x86.UC_X86_REG_R11, 0x202)
    m.run(b"\x48\x0f\x07", until=back)  # sysretq
    assert m.vectors == [] and m.rip() == back
    assert ucstate.cpl(uc) == 3
    assert uc.reg_read(x86.UC_X86_REG_CS) == 0x23 and uc.reg_read(x86.UC_X86_REG_SS) == 0x1B
    uc.emu_start(back, back + 2)
    assert m.vectors == [13]


@pytest.mark.parametrize("ring", [1, 2])
def test_null_ss_rpl_becomes_cpl_for_inner_rings(m, ring):
    code = KCODE | (ring << 45)  # same 64-bit code segment with DPL = ring
    ucstate.load_code_and_stack(m.uc, 0x08 | ring, code, ring, None)
    assert ucstate.cpl(m.uc) == ring
    lay = ucstate.layout()
    blob = bytes(m.uc.context_save())
    assert struct.unpack_from("<IxxxxQII", blob, lay.seg(2)) == (ring, 0, 0, ring << 13)  # QEMU's null SS
    addr = m.run(b"\x0f\x22\xd8")  # mov cr3, rax: CPL 0 only
    assert m.vectors == [13] and m.rip() == addr


def test_syscall_is_a_no_op_in_unicorn_and_the_machine_emulates_it(m):
    """What apfdbg's machine does: stop on SYSCALL, enter CPL 0 itself, let sysretq return."""
    uc = m.uc
    uc.msr_write(MSR_EFER, uc.msr_read(MSR_EFER) | 1)
    uc.msr_write(MSR_STAR, (0x10 << 48) | (0x08 << 32))
    entry = m.place(b"\x0f\x20\xd8\x48\x0f\x07")  # mov rax, cr3 (privileged); sysretq
    uc.msr_write(MSR_LSTAR, entry)
    seen = []
    uc.hook_add(UC_HOOK_INSN, lambda u, _: (seen.append(u.reg_read(x86.UC_X86_REG_RIP)), u.emu_stop()),
                None, 1, 0, x86.UC_X86_INS_SYSCALL)
    m.to_user()
    user = m.run(b"\x0f\x05\x90")
    after = user + 2
    assert seen == [user]
    assert m.rip() == after and ucstate.cpl(uc) == 3  # Unicorn: RIP += 2, no transition

    uc.reg_write(x86.UC_X86_REG_RCX, after)
    uc.reg_write(x86.UC_X86_REG_R11, uc.reg_read(x86.UC_X86_REG_RFLAGS))
    ucstate.load_code_and_stack(uc, 0x08, KCODE, 0x10, KDATA)
    uc.emu_start(entry, after)
    assert m.vectors == [] and m.rip() == after and ucstate.cpl(uc) == 3


def test_delivery_from_inside_the_intr_hook():
    """The machine may enter the handler from UC_HOOK_INTR without stopping emulation."""
    seen = []

    def deliver(u, intno, _):
        seen.append((intno, ucstate.cpl(u), ucstate.pending_error_code(u)))
        ucstate.load_code_and_stack(u, 0x08, KCODE, 0x00, None)
        ucstate.reset_exception_state(u)
        u.reg_write(x86.UC_X86_REG_RIP, handler)

    m = Machine(intr=deliver)
    handler = m.place(b"\x0f\x20\xd8\xf4")  # mov rax, cr3; hlt  (CPL 0 only)
    m.to_user()
    user = m.place(mov_ds(0x13) + b"\x90", at=USER)  # DPL 0 data from CPL 3 -> #GP(0x10)
    m.uc.emu_start(user, user + 7)
    assert seen == [(13, 3, 0x10)]
    assert m.rip() == handler + 4  # stopped after hlt, in the handler
    assert ucstate.cpl(m.uc) == 0


def mov_ss(sel):
    return b"\x66\xb8" + struct.pack("<H", sel) + b"\x8e\xd0"  # mov ax, sel; mov ss, ax


@pytest.mark.parametrize("cpl3", [False, True])
def test_gp_error_codes_from_selector_loads(m, cpl3):
    if cpl3:
        m.to_user()
    cases = [(mov_ds(0x43), 0x40), (mov_ds(0x53), 0x50),  # beyond the GDT limit
             (mov_ds(0x47), 0x44)]                       # TI=1: beyond the (empty) LDT
    if cpl3:
        cases.append((mov_ds(0x13), 0x10))  # DPL 0 data from CPL 3
    else:
        cases.append((mov_ss(0x1B), 0x18))  # SS RPL 3 != CPL 0
    for code, err in cases:
        addr = m.run(code)
        assert m.vectors == [13], code.hex()
        assert m.rip() == addr + 4
        assert ucstate.pending_error_code(m.uc) == err, code.hex()
        assert not ucstate.exception_is_software(m.uc)
        ucstate.reset_exception_state(m.uc)
    # The next fault without an error code reports 0, not the stale value.
    m.uc.reg_write(x86.UC_X86_REG_RDX, 0)
    m.run(b"\x0f\x01\xf8" if cpl3 else b"\x31\xc9\xf7\xf1")  # swapgs -> #GP(0) / div 0 -> #DE
    assert m.vectors == ([13] if cpl3 else [0])
    assert ucstate.pending_error_code(m.uc) == 0


def test_exception_is_software(m):
    addr = m.run(b"\xcd\x80")
    assert m.vectors == [0x80] and m.rip() == addr + 2
    assert ucstate.exception_is_software(m.uc)
    ucstate.reset_exception_state(m.uc)
    addr = m.run(b"\xcc")
    assert m.vectors == [3] and ucstate.exception_is_software(m.uc)
    ucstate.reset_exception_state(m.uc)
    assert not ucstate.exception_is_software(m.uc)
    m.run(b"\x31\xc9\xf7\xf1")  # xor ecx, ecx; div ecx
    assert m.vectors == [0] and not ucstate.exception_is_software(m.uc)


FAULTS = [(mov_ds(0x43), 4, 13), (b"\x31\xc9\xf7\xf1", 2, 0), (mov_ds(0x53), 4, 13),
          (b"\x31\xc9\xf7\xf1", 2, 0)]  # (code, offset of faulting instruction, vector)


def _run_faults(m, reset):
    """Run the faults back to back as a handler would: skip the instruction, restart."""
    uc = m.uc
    code = b"".join(c for c, _, _ in FAULTS) + b"\x90"
    start = m.place(code)
    end = start + len(code)
    seen, pc = [], start
    for c, off, _ in FAULTS:
        m.vectors.clear()
        uc.emu_start(pc, end)
        seen += m.vectors
        if not m.vectors:
            break
        if reset:
            ucstate.reset_exception_state(uc)
        pc += len(c)
        assert m.rip() == pc - len(c) + off
    return seen


def test_bug_1883_is_real_without_reset(m):
    seen = _run_faults(m, reset=False)
    assert seen[0] == 13 and 8 in seen


def test_bug_1883_reset_makes_every_fault_arrive_as_itself(m):
    assert _run_faults(m, reset=True) == [v for _, _, v in FAULTS]


def test_interrupt_shadow_after_sti_and_mov_ss(m):
    uc = m.uc
    addr = m.run(b"\xfb\x90\x90", count=1)  # sti; nop; nop -- stop after sti
    assert m.rip() == addr + 1
    assert ucstate.interrupt_shadow(uc)
    uc.emu_start(addr + 1, addr + 2)  # the nop in the shadow ends it
    assert not ucstate.interrupt_shadow(uc)
    addr = m.run(b"\x66\xb8\x10\x00\x8e\xd0\x90", count=2)  # mov ax, 0x10; mov ss, ax; nop
    assert m.rip() == addr + 6 and ucstate.interrupt_shadow(uc)
    m.run(b"\x90")
    assert not ucstate.interrupt_shadow(uc)


def test_set_interrupt_shadow_round_trip_keeps_other_state(m):
    uc = m.uc
    m.to_user()
    uc.reg_write(x86.UC_X86_REG_RIP, 0x1234)
    ucstate.set_interrupt_shadow(uc, True)
    assert ucstate.interrupt_shadow(uc)
    assert ucstate.cpl(uc) == 3 and m.rip() == 0x1234
    ucstate.set_interrupt_shadow(uc, False)
    assert not ucstate.interrupt_shadow(uc) and ucstate.cpl(uc) == 3


def descriptor(base, limit, access_and_flags):
    """Raw GDT descriptor; access_and_flags holds the e2 bits 8..15 and 20..23."""
    e1 = ((base & 0xFFFF) << 16) | (limit & 0xFFFF)
    e2 = ((base >> 16) & 0xFF) | (base & 0xFF000000) | (limit & 0xF0000) | access_and_flags
    return (e2 << 32) | e1


def test_compatibility_mode_uses_the_loaded_caches(m):
    """CS.L=0/D=1 with bases: 0x48 is `dec eax` (HF_CS64 clear), code is fetched at CS.base + EIP,
    the push uses ESP (SS.B -> HF_SS32) at SS.base + ESP (HF_ADDSEG from the SS base)."""
    uc = m.uc
    cs = descriptor(0x20000, 0xFFFFF, 0x00C0FB00)  # 32-bit code, DPL 3, base 0x20000
    ss = descriptor(0x10000, 0xFFFFF, 0x00C0F300)  # 32-bit data, DPL 3, base 0x10000
    ucstate.load_code_and_stack(uc, 0x2B, cs, 0x1B, ss)
    assert ucstate.cpl(uc) == 3
    uc.mem_write(0x20100, b"\x48\x50\x90")  # dec eax; push eax
    uc.reg_write(x86.UC_X86_REG_RAX, 5)
    uc.reg_write(x86.UC_X86_REG_RSP, 0x12000)
    uc.emu_start(0x100, 0, count=2)
    assert m.vectors == [] and m.rip() == 0x102
    assert uc.reg_read(x86.UC_X86_REG_RAX) == 4
    assert uc.reg_read(x86.UC_X86_REG_RSP) == 0x11FFC  # not SP-only (0x1FFC)
    assert struct.unpack("<I", uc.mem_read(0x21FFC, 4))[0] == 4
    # The hidden caches hold what the CPU loads: selector, base, byte-granular limit, e2 flags.
    lay = ucstate.layout()
    blob = bytes(uc.context_save())
    for idx, (sel, desc, base) in {1: (0x2B, cs, 0x20000), 2: (0x1B, ss, 0x10000)}.items():
        off = lay.seg(idx)
        assert struct.unpack_from("<I", blob, off)[0] == sel
        assert struct.unpack_from("<QII", blob, off + 8) == (base, 0xFFFFFFFF, desc >> 32)
    # Back to a 64-bit code segment: 0x48 is a REX prefix again.
    m.to_user()
    uc.reg_write(x86.UC_X86_REG_RAX, 5)
    m.run(b"\x48\x90", at=USER)  # rex.w nop
    assert m.vectors == [] and uc.reg_read(x86.UC_X86_REG_RAX) == 5


def test_cpl_selects_the_user_mmu_view(m):
    """With guest paging on, a supervisor-only page faults at CPL 3 with a user #PF error code."""
    uc = m.uc
    pml4, pdpt, pd, pt = 0x4000, 0x5000, 0x6000, 0x7000
    secret = 0x3F000
    uc.mem_write(pml4, struct.pack("<Q", pdpt | 7))
    uc.mem_write(pdpt, struct.pack("<Q", pd | 7))
    uc.mem_write(pd, struct.pack("<Q", pt | 7))
    uc.mem_write(pt, b"".join(struct.pack("<Q", a | (3 if a == secret else 7))
                              for a in range(0, 0x40000, 0x1000)))
    uc.reg_write(x86.UC_X86_REG_CR3, pml4)
    uc.reg_write(x86.UC_X86_REG_CR4, uc.reg_read(x86.UC_X86_REG_CR4) | 0x20)  # PAE
    uc.reg_write(x86.UC_X86_REG_CR0, uc.reg_read(x86.UC_X86_REG_CR0) | 0x80000001)  # PG
    uc.reg_write(x86.UC_X86_REG_RBX, secret)
    load = b"\x48\x8b\x03"   # mov rax, [rbx]
    store = b"\x48\x89\x03"  # mov [rbx], rax
    m.run(load)  # CPL 0 fills the kernel TLB entry
    assert m.vectors == []
    m.to_user()
    for code, err in ((load, 0x5), (store, 0x7)):  # P | U (| W)
        addr = m.run(code, at=USER + len(code) * 0x10)
        assert m.vectors == [14] and m.rip() == addr
        assert ucstate.pending_error_code(uc) == err
        assert uc.reg_read(x86.UC_X86_REG_CR2) == secret
        ucstate.reset_exception_state(uc)
    m.to_kernel_null_ss()
    m.run(load)
    assert m.vectors == []


@pytest.mark.parametrize("args", [
    (0x23, UCODE, 0x03, None),      # null SS at CPL 3
    (0x10, KDATA, 0x10, KDATA),     # data segment as CS
    (0x08, KCODE, 0x18, UDATA),     # SS RPL 0 but DPL 3
    (0x08, KCODE, 0x1B, UDATA),     # CS RPL 0 but new CPL 3
    (0x08, KCODE, 0x08, KCODE),     # code segment as SS
    (0x08, KCODE & ~(1 << 47), 0x10, KDATA),  # CS not present
])
def test_refuses_what_the_cpu_would_fault(m, args):
    with pytest.raises(ValueError):
        ucstate.load_code_and_stack(m.uc, *args)
    assert ucstate.cpl(m.uc) == 0


def test_wrong_engine_is_refused():
    arm = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    with pytest.raises(UcStateError):
        ucstate.cpl(arm)
