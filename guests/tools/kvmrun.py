#!/usr/bin/env python3
"""Run an apfdbg test guest under /dev/kvm: the reference the guests are checked against.

apfdbg's machine is a model; this runner gives a guest the same start state (docs/guest-abi.md)
under KVM, so that a guest that passes here and fails under apfdbg points at a machine bug, not a
guest bug. It is a developer tool and an optional test (tests/machine/test_guests.py skips it
where /dev/kvm cannot be opened).

What differs from apfdbg, and how the guests cope:
- Long mode needs paging on a real CPU: the runner identity-maps guest RAM with 2 MiB pages
  (present, writable, user) at 0x3000-0x5fff, a range the ABI leaves unused. A guest that loads
  its own CR3 (paging) sees no difference.
- What this host's KVM does differently from the architecture is found at run time: the probe
  guest (guests/machine/kvmprobe.S) runs first and names each rule the host breaks; the runner
  passes those QUIRK_* bits (guests/common/testlib.inc) in the guest's `tl_quirks` word and the
  guests skip just those checks. Nothing is keyed by kernel version or KVM flavour. Under apfdbg
  the word is 0 (docs/test-guests.md lists the quirks and where each was seen).
- There is no instruction limit and no deadlock detector: a wall-clock timeout ends the run; if by
  then every vCPU is halted with IF = 0 the status is 2 (deadlock), otherwise 6.
- A software interrupt that KVM cannot re-inject comes back as an emulation failure exit;
  `_soft_interrupt` finishes those INT n at CPL 0.

    python3 guests/tools/kvmrun.py guests/machine/hello.elf --vcpus 2   # prints the quirks too
    KVMRUN_TRACE=1 ...   # report each INT n the runner had to finish
"""
from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import signal
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

MIB = 1 << 20
libc = ctypes.CDLL(None, use_errno=True)
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
libc.ioctl.restype = ctypes.c_int

# ioctl numbers (linux/kvm.h)
KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_GET_SUPPORTED_CPUID = 0xC008AE05
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46
KVM_SET_TSS_ADDR = 0xAE47
KVM_SET_IDENTITY_MAP_ADDR = 0x4008AE48
KVM_CREATE_IRQCHIP = 0xAE60
KVM_RUN = 0xAE80
KVM_GET_REGS = 0x8090AE81
KVM_SET_REGS = 0x4090AE82
KVM_GET_SREGS = 0x8138AE83
KVM_SET_SREGS = 0x4138AE84
KVM_SET_MSRS = 0x4008AE89
KVM_SET_CPUID2 = 0x4008AE90
KVM_GET_MP_STATE = 0x8004AE98
KVM_SET_MP_STATE = 0x4004AE99
KVM_TRANSLATE = 0xC018AE85
KVM_ENABLE_CAP = 0x4068AEA3
KVM_CAP_EXIT_ON_EMULATION_FAILURE = 204
KVM_GET_VCPU_EVENTS = 0x8040AE9F
KVM_SET_VCPU_EVENTS = 0x4040AEA0

EXIT_IO, EXIT_HLT, EXIT_MMIO, EXIT_SHUTDOWN, EXIT_FAIL_ENTRY, EXIT_INTR = 2, 5, 6, 8, 9, 10
EXIT_INTERNAL_ERROR, EXIT_SYSTEM_EVENT = 17, 24
MP_RUNNABLE, MP_HALTED = 0, 3

GDT_BASE, TSS_BASE, TSS_STRIDE, TSS_SIZE = 0x1000, 0x2000, 0x80, 104
STACK_BASE, STACK_SIZE = 0x10000, 0x1000
PML4, PDPT, PD = 0x3000, 0x4000, 0x5000
DESC_KERNEL_CODE = 0x00AF9A000000FFFF
DESC_KERNEL_DATA = 0x00CF92000000FFFF
DESC_USER_DATA = 0x00CFF2000000FFFF
DESC_USER_CODE = 0x00AFFA000000FFFF


class KvmError(OSError):
    pass


#: The QUIRK_* bits of guests/common/testlib.inc, by the names the probe prints.
QUIRK_BITS = {"host_tsc": 1, "kvm_eoi": 2, "apic_isr": 4, "irq_window": 8, "noncanon_msr": 16,
              "user_segs": 32, "syscall": 64, "user_int": 128}
PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "machine", "kvmprobe.elf")


@dataclass(frozen=True)
class Quirks:
    """What this host's KVM does not do the way the architecture (and apfdbg) does, as found by
    running the probe guest (guests/machine/kvmprobe.S) under it: nothing is assumed from the
    kernel version or the KVM flavour."""
    mask: int
    seen: tuple[str, ...]      # the probe's `quirk NAME: ...` lines

    @property
    def names(self) -> list[str]:
        return [n for n, bit in QUIRK_BITS.items() if self.mask & bit]

    def describe(self) -> str:
        if not self.mask:
            return "none"
        return ", ".join(self.names)


_probed: Quirks | None = None


def probe_quirks() -> Quirks:
    """Run the probe under KVM once per process; raise KvmError if it does not end with PASS."""
    global _probed
    if _probed is None:
        g = KvmGuest(PROBE, 1, quirk_mask=0)
        try:
            res = g.run(20.0)
        finally:
            g.close()
        text = res.consoles[0].decode("utf-8", "replace")
        lines = text.splitlines()
        mask = next((int(line.split()[1], 16) for line in lines if line.startswith("quirks ")), None)
        if res.status != 1 or mask is None:
            raise KvmError(0, f"the KVM probe guest failed (status {res.status}: {res.reason}): {text!r}")
        _probed = Quirks(mask, tuple(line for line in lines if line.startswith("quirk ")))
    return _probed


def ioctl(fd: int, req: int, arg=None) -> int:
    if arg is None:
        ret = libc.ioctl(fd, req, None)
    elif isinstance(arg, int):
        ret = libc.ioctl(fd, req, ctypes.c_void_p(arg))
    else:
        ret = libc.ioctl(fd, req, ctypes.cast(ctypes.pointer(arg), ctypes.c_void_p))
    if ret < 0:
        err = ctypes.get_errno()
        raise KvmError(err, f"ioctl {req:#x}: {os.strerror(err)}")
    return ret


class Segment(ctypes.Structure):
    _fields_ = [("base", ctypes.c_uint64), ("limit", ctypes.c_uint32), ("selector", ctypes.c_uint16),
                ("type", ctypes.c_uint8), ("present", ctypes.c_uint8), ("dpl", ctypes.c_uint8),
                ("db", ctypes.c_uint8), ("s", ctypes.c_uint8), ("l", ctypes.c_uint8),
                ("g", ctypes.c_uint8), ("avl", ctypes.c_uint8), ("unusable", ctypes.c_uint8),
                ("padding", ctypes.c_uint8)]


class DTable(ctypes.Structure):
    _fields_ = [("base", ctypes.c_uint64), ("limit", ctypes.c_uint16), ("padding", ctypes.c_uint16 * 3)]


class Sregs(ctypes.Structure):
    _fields_ = [("cs", Segment), ("ds", Segment), ("es", Segment), ("fs", Segment), ("gs", Segment),
                ("ss", Segment), ("tr", Segment), ("ldt", Segment), ("gdt", DTable), ("idt", DTable),
                ("cr0", ctypes.c_uint64), ("cr2", ctypes.c_uint64), ("cr3", ctypes.c_uint64),
                ("cr4", ctypes.c_uint64), ("cr8", ctypes.c_uint64), ("efer", ctypes.c_uint64),
                ("apic_base", ctypes.c_uint64), ("interrupt_bitmap", ctypes.c_uint64 * 4)]


class Regs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in
                ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11",
                 "r12", "r13", "r14", "r15", "rip", "rflags")]


class CpuidEntry(ctypes.Structure):
    _fields_ = [("function", ctypes.c_uint32), ("index", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("eax", ctypes.c_uint32), ("ebx", ctypes.c_uint32), ("ecx", ctypes.c_uint32),
                ("edx", ctypes.c_uint32), ("padding", ctypes.c_uint32 * 3)]


def cpuid2(n: int):
    class Cpuid2(ctypes.Structure):
        _fields_ = [("nent", ctypes.c_uint32), ("padding", ctypes.c_uint32), ("entries", CpuidEntry * n)]
    return Cpuid2


class MsrEntry(ctypes.Structure):
    _fields_ = [("index", ctypes.c_uint32), ("reserved", ctypes.c_uint32), ("data", ctypes.c_uint64)]


def msrs(entries: list[tuple[int, int]]):
    class Msrs(ctypes.Structure):
        _fields_ = [("nmsrs", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("entries", MsrEntry * len(entries))]
    m = Msrs()
    m.nmsrs = len(entries)
    for i, (idx, val) in enumerate(entries):
        m.entries[i].index = idx
        m.entries[i].data = val
    return m


class Translation(ctypes.Structure):
    _fields_ = [("linear_address", ctypes.c_uint64), ("physical_address", ctypes.c_uint64),
                ("valid", ctypes.c_uint8), ("writeable", ctypes.c_uint8), ("usermode", ctypes.c_uint8),
                ("pad", ctypes.c_uint8 * 5)]


class VcpuEvents(ctypes.Structure):
    _fields_ = [("exc_injected", ctypes.c_uint8), ("exc_nr", ctypes.c_uint8),
                ("exc_has_error_code", ctypes.c_uint8), ("exc_pending", ctypes.c_uint8),
                ("exc_error_code", ctypes.c_uint32),
                ("int_injected", ctypes.c_uint8), ("int_nr", ctypes.c_uint8), ("int_soft", ctypes.c_uint8),
                ("int_shadow", ctypes.c_uint8),
                ("nmi", ctypes.c_uint8 * 4), ("sipi_vector", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("smi", ctypes.c_uint8 * 4), ("triple_fault", ctypes.c_uint8), ("reserved", ctypes.c_uint8 * 26),
                ("exception_has_payload", ctypes.c_uint8), ("exception_payload", ctypes.c_uint64)]


class MemRegion(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("guest_phys_addr", ctypes.c_uint64),
                ("memory_size", ctypes.c_uint64), ("userspace_addr", ctypes.c_uint64)]


@dataclass
class Result:
    status: int
    reason: str
    consoles: list[bytearray] = field(default_factory=list)


def _seg(sel: int, code: bool, dpl: int = 0) -> Segment:
    s = Segment()
    s.base, s.limit, s.selector, s.present, s.dpl, s.s, s.g = 0, 0xFFFFFFFF, sel, 1, dpl, 1, 1
    if code:
        s.type, s.l, s.db = 0xB, 1, 0     # execute/read, accessed
    else:
        s.type, s.l, s.db = 0x3, 0, 1     # read/write, accessed
    return s


class KvmGuest:
    def __init__(self, path: str, vcpus: int = 1, ram_mib: int = 16, quirk_mask: int | None = None,
                 pv: bool = False) -> None:
        """quirk_mask: the guest's tl_quirks word (default: what the probe finds on this host).
        pv: offer the host's paravirtual features in CPUID 0x40000001 (async PF, its interrupt
        delivery ...), as a VMM does for a Linux guest; without it none, like apfdbg's NullHost."""
        self.path, self.nvcpus, self.ram_size, self.pv = path, vcpus, ram_mib * MIB, pv
        self.quirk_mask = probe_quirks().mask if quirk_mask is None else quirk_mask
        self.kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        if ioctl(self.kvm, KVM_GET_API_VERSION) != 12:
            raise KvmError(0, "unexpected KVM API version")
        self.vm = ioctl(self.kvm, KVM_CREATE_VM, 0)
        ioctl(self.vm, KVM_SET_TSS_ADDR, 0xFFFBD000)
        ident = ctypes.c_uint64(0xFFFBC000)
        ioctl(self.vm, KVM_SET_IDENTITY_MAP_ADDR, ident)
        ioctl(self.vm, KVM_CREATE_IRQCHIP)
        cap = (ctypes.c_uint8 * 104)()
        struct.pack_into("<I", cap, 0, KVM_CAP_EXIT_ON_EMULATION_FAILURE)
        struct.pack_into("<Q", cap, 8, 1)
        try:  # emulation failures come to us (see _soft_interrupt) instead of becoming #UD
            ioctl(self.vm, KVM_ENABLE_CAP, cap)
        except KvmError:
            pass
        self.mem = mmap.mmap(-1, self.ram_size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(self.mem))
        region = MemRegion(0, 0, 0, self.ram_size, addr)
        ioctl(self.vm, KVM_SET_USER_MEMORY_REGION, region)
        self.entry = self._load()
        self._boot_area()
        self.run_size = ioctl(self.kvm, KVM_GET_VCPU_MMAP_SIZE)
        self.supported = self._supported_cpuid()
        self.vcpus = [self._vcpu(i) for i in range(vcpus)]
        self.consoles = [bytearray() for _ in range(vcpus)]
        self.status: int | None = None
        self.reason = ""
        self.lock = threading.Lock()

    # --- memory -------------------------------------------------------------------------------
    def _load(self) -> int:
        with open(self.path, "rb") as f:
            elf = ELFFile(f)
            for seg in elf.iter_segments():
                if seg["p_type"] != "PT_LOAD":
                    continue
                pa = seg["p_paddr"] or seg["p_vaddr"]
                data = seg.data()
                self.mem[pa:pa + len(data)] = data
                self.mem[pa + len(data):pa + seg["p_memsz"]] = bytes(seg["p_memsz"] - len(data))
            symtab = elf.get_section_by_name(".symtab")
            if symtab is not None:
                for sym in symtab.get_symbol_by_name("tl_quirks") or []:
                    self.mem[sym["st_value"]:sym["st_value"] + 8] = struct.pack("<Q", self.quirk_mask)
            return elf["e_entry"]

    def _boot_area(self) -> None:
        n = self.nvcpus
        gdt = [0, DESC_KERNEL_CODE, DESC_KERNEL_DATA, DESC_USER_DATA, DESC_USER_CODE]
        for i in range(n):
            base, limit = TSS_BASE + TSS_STRIDE * i, TSS_SIZE - 1
            gdt.append((limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (0x89 << 40)
                       | (((base >> 24) & 0xFF) << 56))
            gdt.append(base >> 32)
            tss = bytearray(TSS_SIZE)
            struct.pack_into("<Q", tss, 4, STACK_BASE + STACK_SIZE * (i + 1))
            struct.pack_into("<H", tss, 102, TSS_SIZE)
            self.mem[base:base + TSS_SIZE] = bytes(tss)
        self.mem[GDT_BASE:GDT_BASE + 8 * len(gdt)] = struct.pack(f"<{len(gdt)}Q", *gdt)
        # Identity map of RAM: PML4[0] -> PDPT[0] -> PD with 2 MiB pages, P | RW | US.
        self.mem[PML4:PML4 + 8] = struct.pack("<Q", PDPT | 7)
        self.mem[PDPT:PDPT + 8] = struct.pack("<Q", PD | 7)
        for i in range(self.ram_size // (2 * MIB)):
            self.mem[PD + 8 * i:PD + 8 * i + 8] = struct.pack("<Q", (i * 2 * MIB) | 0x87)

    # --- vCPUs --------------------------------------------------------------------------------
    def _supported_cpuid(self):
        n = 256
        c = cpuid2(n)()
        c.nent = n
        ioctl(self.kvm, KVM_GET_SUPPORTED_CPUID, c)
        return [c.entries[i] for i in range(c.nent)]

    def _cpuid_for(self, i: int):
        entries = []
        for e in self.supported:
            e2 = CpuidEntry()
            ctypes.pointer(e2)[0] = e
            if e.function == 1:
                e2.ebx = (e.ebx & 0x00FFFFFF) | (i << 24)
                e2.ecx |= (1 << 31) | (1 << 21)   # hypervisor, x2APIC
            elif e.function in (0xB, 0x1F):
                e2.edx = i
            elif e.function == 0x40000001 and not self.pv:
                e2.eax = 0                           # no paravirtual features (apfdbg's NullHost)
            entries.append(e2)
        c = cpuid2(len(entries))()
        c.nent = len(entries)
        for k, e in enumerate(entries):
            c.entries[k] = e
        return c

    def _vcpu(self, i: int) -> dict:
        fd = ioctl(self.vm, KVM_CREATE_VCPU, i)
        run = mmap.mmap(fd, self.run_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        ioctl(fd, KVM_SET_CPUID2, self._cpuid_for(i))
        s = Sregs()
        ioctl(fd, KVM_GET_SREGS, s)
        s.cs = _seg(0x08, True)
        for name in ("ds", "es", "fs", "gs", "ss"):
            setattr(s, name, _seg(0x10, False))
        tr = Segment()
        tr.base, tr.limit, tr.selector = TSS_BASE + TSS_STRIDE * i, TSS_SIZE - 1, 0x28 + 16 * i
        tr.type, tr.present = 0xB, 1                  # busy 64-bit TSS (VMX requires it)
        s.tr = tr
        ldt = Segment()
        ldt.unusable, ldt.type = 1, 2
        s.ldt = ldt
        s.gdt.base, s.gdt.limit = GDT_BASE, 0x28 + 16 * self.nvcpus - 1
        s.idt.base, s.idt.limit = 0, 0
        s.cr0 = 0x80000011                            # PG | ET | PE
        s.cr3 = PML4
        s.cr4 = 0x20                                  # PAE
        s.efer = 0x500                                # LME | LMA
        ioctl(fd, KVM_SET_SREGS, s)
        r = Regs()
        r.rip, r.rsp, r.rdi, r.rsi, r.rflags = (self.entry, STACK_BASE + STACK_SIZE * (i + 1), i,
                                               self.nvcpus, 2)
        ioctl(fd, KVM_SET_REGS, r)
        apic_base = 0xFEE00000 | 0x800 | 0x400 | (0x100 if i == 0 else 0)
        if ioctl(fd, KVM_SET_MSRS, msrs([(0x1B, apic_base)])) != 1:
            raise KvmError(0, "cannot put the APIC in x2APIC mode")
        ioctl(fd, KVM_SET_MP_STATE, ctypes.c_uint32(MP_RUNNABLE))
        return {"fd": fd, "run": run, "thread": None, "halted_if0": False, "done": False}

    # --- running ------------------------------------------------------------------------------
    def _finish(self, status: int, reason: str) -> None:
        with self.lock:
            if self.status is None:
                self.status, self.reason = status, reason

    def _loop(self, i: int) -> None:
        v = self.vcpus[i]
        fd, run = v["fd"], v["run"]
        while self.status is None:
            try:
                ioctl(fd, KVM_RUN)
            except KvmError as e:
                if e.errno == 4:  # EINTR: kicked
                    continue
                self._finish(8, f"vCPU {i}: KVM_RUN failed: {e}")
                break
            reason = struct.unpack_from("<I", run, 8)[0]
            if reason == EXIT_IO:
                direction, size, port, count, off = struct.unpack_from("<BBHIQ", run, 32)
                for k in range(count):
                    at = off + k * size
                    if direction == 1:  # out
                        value = int.from_bytes(run[at:at + size], "little")
                        if port == 0xE9:
                            self.consoles[i].append(value & 0xFF)
                        elif port == 0xF4:
                            self._finish((value << 1) | 1, f"guest wrote {value:#x} to port 0xf4")
                    else:
                        run[at:at + size] = b"\xff" * size
            elif reason == EXIT_SHUTDOWN:
                self._finish(4, f"vCPU {i} triple fault (shutdown)")
            elif reason == EXIT_INTR:
                continue
            elif reason == EXIT_MMIO:
                pa = struct.unpack_from("<Q", run, 32)[0]
                self._finish(4, f"vCPU {i} accessed {pa:#x}, which is not guest RAM")
            elif reason == EXIT_INTERNAL_ERROR and self._soft_interrupt(fd):
                continue
            else:
                r = Regs()
                ioctl(fd, KVM_GET_REGS, r)
                extra = ""
                if reason == EXIT_INTERNAL_ERROR:
                    sub, n = struct.unpack_from("<II", run, 32)
                    data = struct.unpack_from(f"<{min(n, 16)}Q", run, 40)
                    extra = f" (internal error {sub}, data {[hex(d) for d in data]})"
                self._finish(8, f"vCPU {i}: unexpected KVM exit {reason}{extra} at rip {r.rip:#x}")
        v["done"] = True

    def _linear(self, fd: int, va: int, size: int) -> bytes | None:
        t = Translation()
        t.linear_address = va
        ioctl(fd, KVM_TRANSLATE, t)
        if not t.valid or t.physical_address + size > self.ram_size:
            return None
        return bytes(self.mem[t.physical_address:t.physical_address + size])

    def _soft_interrupt(self, fd: int) -> bool:
        """INT n / INT3 that KVM could not emulate (nested SVM without NRIPS cannot re-inject a
        software interrupt). The checks that only software interrupts make (IDT limit, gate DPL
        >= CPL, present) are made here as the SDM's INT pseudo-code makes them; the delivery
        itself (stack switch, IST, frame, flags) is left to the CPU by injecting the vector as
        an event with RIP already past the instruction."""
        r, s = Regs(), Sregs()
        ioctl(fd, KVM_GET_REGS, r)
        ioctl(fd, KVM_GET_SREGS, s)
        insn = self._linear(fd, r.rip, 2)
        if insn is None:
            return False
        if insn[0] == 0xCC:
            vector, length = 3, 1
        elif insn[0] == 0xCD:
            vector, length = insn[1], 2
        else:
            return False
        cpl = s.cs.selector & 3
        if os.environ.get("KVMRUN_TRACE"):
            print(f"kvmrun: soft interrupt {vector:#x} at {r.rip:#x}, CPL {cpl}", file=sys.stderr)
        ev = VcpuEvents()
        ioctl(fd, KVM_GET_VCPU_EVENTS, ev)
        ev.flags = 0
        err = vector * 8 + 2
        gate = self._linear(fd, s.idt.base + 16 * vector, 16) if vector * 16 + 15 <= s.idt.limit else None
        if gate is None:
            fault = (13, err)
        else:
            attr = gate[5]
            if (attr >> 5) & 3 < cpl or (attr & 0xF) not in (0xE, 0xF):
                fault = (13, err)
            elif not attr & 0x80:
                fault = (11, err)
            else:
                fault = None
        if fault is not None:
            ev.exc_injected, ev.exc_nr, ev.exc_has_error_code, ev.exc_error_code = 1, fault[0], 1, fault[1]
        else:
            r.rip += length
            ioctl(fd, KVM_SET_REGS, r)
            if vector < 32:
                ev.exc_injected, ev.exc_nr, ev.exc_has_error_code = 1, vector, 0
            else:
                ev.int_injected, ev.int_nr, ev.int_soft = 1, vector, 0
        ioctl(fd, KVM_SET_VCPU_EVENTS, ev)
        return True

    def _kick_all(self) -> None:
        for v in self.vcpus:
            v["run"][1] = 1  # immediate_exit
            t = v["thread"]
            if t is not None and t.is_alive():
                signal.pthread_kill(t.ident, signal.SIGUSR1)

    def run(self, timeout: float = 20.0) -> Result:
        old = signal.signal(signal.SIGUSR1, lambda *_: None)
        try:
            for i, v in enumerate(self.vcpus):
                v["thread"] = threading.Thread(target=self._loop, args=(i,), daemon=True)
                v["thread"].start()
            deadline = time.monotonic() + timeout
            while self.status is None and time.monotonic() < deadline:
                time.sleep(0.01)
            if self.status is None:
                self._deadlock_or_timeout()
            while any(v["thread"].is_alive() for v in self.vcpus):
                self._kick_all()
                time.sleep(0.01)
        finally:
            signal.signal(signal.SIGUSR1, old)
        return Result(self.status if self.status is not None else 6, self.reason, self.consoles)

    def _deadlock_or_timeout(self) -> None:
        # Stop every vCPU and look at it: halted with IF = 0 everywhere is apfdbg's status 2.
        verdicts: list[bool] = []
        status_before = self.status
        self.status = -1  # makes the loops leave after their current KVM_RUN
        while any(v["thread"].is_alive() for v in self.vcpus):
            self._kick_all()
            time.sleep(0.01)
        for v in self.vcpus:
            mp = ctypes.c_uint32()
            ioctl(v["fd"], KVM_GET_MP_STATE, mp)
            r = Regs()
            ioctl(v["fd"], KVM_GET_REGS, r)
            verdicts.append(mp.value == MP_HALTED and not r.rflags & 0x200)
        self.status = status_before
        if all(verdicts):
            self._finish(2, "every vCPU is halted with IF = 0 (wall-clock timeout)")
        else:
            self._finish(6, "wall-clock timeout")

    def close(self) -> None:
        for v in self.vcpus:
            v["run"].close()
            os.close(v["fd"])
        os.close(self.vm)
        os.close(self.kvm)


def kvm_usable() -> str | None:
    """None if guests can run on KVM here, else why not."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"/dev/kvm: {e.strerror}"
    try:
        vm = ioctl(fd, KVM_CREATE_VM, 0)
        os.close(vm)
    except KvmError as e:
        return f"KVM_CREATE_VM: {e.strerror}"
    finally:
        os.close(fd)
    return None


def supported_pv_features() -> int:
    """CPUID 0x40000001 EAX as this host's KVM supports it (0 when it offers no such leaf)."""
    fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    try:
        n = 256
        c = cpuid2(n)()
        c.nent = n
        ioctl(fd, KVM_GET_SUPPORTED_CPUID, c)
        return next((c.entries[i].eax for i in range(c.nent) if c.entries[i].function == 0x40000001), 0)
    finally:
        os.close(fd)


def run_guest(path: str, vcpus: int = 1, timeout: float = 20.0, pv: bool = False) -> Result:
    """Run a test guest with the quirks the probe found on this host in its tl_quirks."""
    g = KvmGuest(path, vcpus, pv=pv)
    try:
        return g.run(timeout)
    finally:
        g.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image")
    ap.add_argument("--vcpus", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=20.0, help="wall-clock seconds")
    ap.add_argument("--pv", action="store_true", help="offer the host's paravirtual features (CPUID "
                    "0x40000001), async PF and its interrupt delivery included")
    args = ap.parse_args(argv)
    why = kvm_usable()
    if why:
        print(f"kvmrun: no KVM here ({why})", file=sys.stderr)
        return 8
    try:
        q = probe_quirks()
        print(f"KVM quirks here: {q.describe()}")
        for line in q.seen:
            print(f"  {line}")
        if args.pv:
            print(f"paravirtual features offered: {supported_pv_features():#x}")
        res = run_guest(args.image, args.vcpus, args.timeout, pv=args.pv)
    except (OSError, ELFError) as e:
        print(f"kvmrun: {e}", file=sys.stderr)
        return 8
    for i, c in enumerate(res.consoles):
        for line in c.decode("utf-8", "replace").splitlines():
            print(f"[vCPU {i}] {line}")
    print(f"status {res.status}: {res.reason}")
    return res.status


if __name__ == "__main__":
    sys.exit(main())
