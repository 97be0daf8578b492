"""ctypes front end of the C fast paths in ``_accel.c`` (see docs/accel.md).

One :class:`VcpuAccel` per Unicorn engine (vCPU) owns a C ``struct apf_vcpu`` and two C hooks:

* ``UC_HOOK_BLOCK``: virtual time. At each block entry, if ``retired >= budget_end`` the engine is
  stopped *before* the block (stop reason 1, block not run, not counted); otherwise the block's
  instruction count is taken from a C cache keyed by (address, size, address space) -- on a miss
  the Python ``miss(addr, size)`` callback gives it, or returns 0 to stop before the block (stop
  reason 2, nothing cached) -- and added to ``retired``.
* ``UC_HOOK_TLB_FILL`` (engine in ``UC_TLB_VIRTUAL`` mode): the guest's x86-64 page walk plus the
  host's swap state (``frame_state``, one byte per 4 KiB frame, shared by every engine). A denied
  fill stops the engine (stop reason 3) and ``emu_start`` raises ``UcError(UC_ERR_EXCEPTION)`` with
  RIP at the faulting instruction; :attr:`VcpuAccel.fault` says why.

:class:`Accel` groups the engines of one machine for host page-out / page-in.
"""
from __future__ import annotations

import ctypes
import importlib.util
import weakref
from ctypes import (CFUNCTYPE, POINTER, Structure, byref, c_int, c_int32, c_int64, c_size_t,
                    c_uint8, c_uint32, c_uint64, c_void_p)
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple

from unicorn import unicorn_const as uc_const
from unicorn.unicorn_py3.unicorn import uc_hook_h, uclib

from .faults import AccessFault, BadPhysical, GuestPageFault, HostSwapped, NonCanonical

PAGE = 4096
ABI_VERSION = 5

# stop reasons (apf_vcpu.stop_reason)
STOP_NONE = 0
STOP_BUDGET = 1  # retired >= budget_end at a block entry: the block did not run
STOP_NEW_BLOCK = 2  # the miss callback returned 0: stopped before that block
STOP_MEMFAULT = 3  # a TLB fill was denied: see VcpuAccel.fault
STOP_IRQ_WINDOW = 4  # an interrupt was waiting and IF became 1: the block did not run
STOP_WATCH = 5  # the instruction hook stopped after a watched access (before the next instruction)

# fault kinds (apf_fault.kind) and their names in Fault.kind
FAULT_NONE = 0
FAULT_HOST = 1  # a frame (page-table frame or the page itself) is swapped out by the host
FAULT_GUEST_PF = 2  # guest paging violation: #PF with error_code
FAULT_BEYOND_RAM = 3  # guest physical address outside RAM
FAULT_NONCANONICAL = 4  # non-canonical linear address
FAULT_NAMES = {FAULT_HOST: "host", FAULT_GUEST_PF: "guest", FAULT_BEYOND_RAM: "beyond_ram",
               FAULT_NONCANONICAL: "noncanonical"}

# access kinds: apf_translate takes 0/1/2, the C fault record holds Unicorn's uc_mem_type
READ, WRITE, FETCH = 0, 1, 2
MEM_READ, MEM_WRITE, MEM_FETCH = uc_const.UC_MEM_READ, uc_const.UC_MEM_WRITE, uc_const.UC_MEM_FETCH
ACCESS_NAMES = {MEM_READ: "read", MEM_WRITE: "write", MEM_FETCH: "fetch"}
_ACCESS = {"read": READ, "write": WRITE, "fetch": FETCH, "r": READ, "w": WRITE, "x": FETCH,
           READ: READ, WRITE: WRITE, FETCH: FETCH}

# apf_translate flags
TR_SET_AD = 1
TR_NO_HOST = 2

# x86 #PF error code bits
PFEC_P, PFEC_W, PFEC_U, PFEC_RSVD, PFEC_ID = 1, 2, 4, 8, 16


# ---- ctypes mirror of the C structures ------------------------------------------------------------
class ApfFault(Structure):
    _fields_ = [
        ("kind", c_uint32),
        ("access", c_uint32),
        ("vaddr", c_uint64),
        ("paddr", c_uint64),
        ("gfn", c_uint64),
        ("error_code", c_uint32),
        ("level", c_int32),
        ("user", c_uint32),
        ("count", c_uint32),
    ]


class ApfRegs(Structure):
    _fields_ = [
        ("cr0", c_uint64),
        ("cr3", c_uint64),
        ("cr4", c_uint64),
        ("efer", c_uint64),
        ("rflags", c_uint64),
        ("cpl", c_uint32),
        ("have_efer", c_uint32),
    ]


class ApfVcpu(Structure):
    _fields_ = [
        ("retired", c_uint64),
        ("budget_end", c_uint64),
        ("stop_reason", c_uint32),
        ("abi", c_uint32),
        ("cur_block_addr", c_uint64),
        ("cur_block_size", c_uint32),
        ("cur_block_icount", c_uint32),
        ("cur_block_asid", c_uint64),
        ("asid", c_uint64),
        ("fault", ApfFault),
        ("n_lookups", c_uint64),
        ("n_misses", c_uint64),
        ("n_fills", c_uint64),
        ("n_denies", c_uint64),
        ("ram", c_void_p),
        ("ram_size", c_uint64),
        ("frame_state", c_void_p),
        ("uc", c_void_p),
        ("reg_read", c_void_p),
        ("emu_stop", c_void_p),
        ("ctl", c_void_p),
        ("miss", c_void_p),
        ("tab", c_void_p),
        ("tab_mask", c_uint64),
        ("tab_used", c_uint64),
        ("irq_window_end", c_uint64),
        ("irq_window_skip", c_uint32),
        ("clear_rf", c_uint32),
        ("reg_write", c_void_p),
        ("frame_access", c_void_p),
        ("watch_hit", c_uint32),
        ("pad0", c_uint32),
    ]


MISS_CFUNC = CFUNCTYPE(c_int64, c_uint64, c_uint32)
MissCallback = Callable[[int, int], int]


# ---- loading the library -----------------------------------------------------------------------------
def _load() -> ctypes.CDLL:
    spec = importlib.util.find_spec("apfdbg.machine._accel")
    if spec is None or not spec.origin:
        raise ImportError("apfdbg.machine._accel is not built: run `pip install -e .`")
    lib = ctypes.CDLL(spec.origin)
    P = POINTER(ApfVcpu)
    protos = {
        "apf_abi_version": (c_uint32, []),
        "apf_layout": (c_size_t, [POINTER(c_uint64), c_size_t]),
        "apf_vcpu_new": (P, []),
        "apf_vcpu_free": (None, [P]),
        "apf_cache_flush": (None, [P]),
        "apf_cache_size": (c_uint64, [P]),
        "apf_cache_put": (None, [P, c_uint64, c_uint32, c_uint64, c_uint32]),
        "apf_cache_get": (c_uint32, [P, c_uint64, c_uint32, c_uint64]),
        "apf_read_regs": (None, [P, POINTER(ApfRegs)]),
        "apf_translate": (c_int, [P, c_uint64, c_int, c_int, c_int, POINTER(ApfRegs),
                                  POINTER(c_uint64), POINTER(c_uint32), POINTER(ApfFault)]),
        "apf_flush_tlb": (c_int, [P]),
        "apf_page_out": (c_int, [POINTER(P), c_size_t, c_uint64]),
        "apf_page_in": (c_int, [POINTER(P), c_size_t, c_uint64]),
    }
    for name, (res, args) in protos.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args
    if lib.apf_abi_version() != ABI_VERSION:
        raise ImportError("apfdbg.machine._accel is stale: rebuild it (`pip install -e .`)")
    _check_layout(lib)
    return lib


def _check_layout(lib: ctypes.CDLL) -> None:
    out = (c_uint64 * 32)()
    n = lib.apf_layout(out, 32)
    mine = [
        ctypes.sizeof(ApfVcpu), ApfVcpu.retired.offset, ApfVcpu.budget_end.offset,
        ApfVcpu.stop_reason.offset, ApfVcpu.cur_block_addr.offset, ApfVcpu.cur_block_asid.offset,
        ApfVcpu.asid.offset, ApfVcpu.fault.offset, ctypes.sizeof(ApfFault),
        ApfVcpu.n_lookups.offset, ApfVcpu.ram.offset, ApfVcpu.uc.offset, ApfVcpu.miss.offset,
        ApfVcpu.tab.offset, ApfVcpu.tab_used.offset, ctypes.sizeof(ApfRegs),
        ApfVcpu.irq_window_end.offset, ApfVcpu.reg_write.offset, ApfVcpu.frame_access.offset,
        ApfVcpu.watch_hit.offset,
    ]
    if list(out[:n]) != mine:
        raise ImportError(f"struct apf_vcpu layout mismatch: C {list(out[:n])} != ctypes {mine}")


lib = _load()

_BLOCK_HOOK = ctypes.cast(lib.apf_block_hook, c_void_p)
_FILL_HOOK = ctypes.cast(lib.apf_fill_hook, c_void_p)
_INSN_HOOK = ctypes.cast(lib.apf_insn_hook, c_void_p)
_UC_REG_READ = ctypes.cast(uclib.uc_reg_read, c_void_p).value
_UC_REG_WRITE = ctypes.cast(uclib.uc_reg_write, c_void_p).value
_UC_EMU_STOP = ctypes.cast(uclib.uc_emu_stop, c_void_p).value
_UC_CTL = ctypes.cast(uclib.uc_ctl, c_void_p).value


# ---- Python-side views -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fault:
    """A denied translation (the C ``struct apf_fault``).

    ``kind``: "host" (frame ``gfn`` swapped out; ``level`` 4..1 = a paging-structure frame, 0 =
    the page itself), "guest" (#PF with ``error_code``), "beyond_ram" (``gpa`` is not RAM) or
    "noncanonical". ``access``: "read", "write" or "fetch" (``mem_type``: Unicorn's uc_mem_type).
    ``va`` is page aligned when the fault comes from the TLB-fill hook (Unicorn masks it).
    """
    kind: str
    access: str
    va: int
    gpa: int = 0
    gfn: int = 0
    error_code: int = 0
    level: int = 0
    user: bool = False
    mem_type: int = 0

    @property
    def is_fetch(self) -> bool:
        return self.access == "fetch"

    @property
    def is_write(self) -> bool:
        return self.access == "write"

    @classmethod
    def from_c(cls, f: ApfFault) -> "Fault":
        return cls(kind=FAULT_NAMES.get(f.kind, str(f.kind)),
                   access=ACCESS_NAMES.get(f.access, str(f.access)), va=f.vaddr, gpa=f.paddr,
                   gfn=f.gfn, error_code=f.error_code, level=f.level, user=bool(f.user),
                   mem_type=f.access)

    def to_exception(self) -> AccessFault:
        """The machine's exception for this fault (apfdbg.machine.faults)."""
        if self.kind == "host":
            return HostSwapped(self.gfn, self.va, self.access)
        if self.kind == "guest":
            return GuestPageFault(self.va, self.error_code)
        if self.kind == "noncanonical":
            return NonCanonical(self.va)
        return BadPhysical(self.gpa, self.va)


class Block(NamedTuple):
    """The last block the block hook counted."""
    addr: int
    size: int
    icount: int


def _addr(obj: object) -> int:
    """Address of a buffer given as an int, a ctypes object, or something with `.ptr`."""
    if isinstance(obj, int):
        return obj
    if isinstance(obj, ctypes._SimpleCData) and isinstance(obj.value, int):  # c_void_p
        return obj.value
    if hasattr(obj, "_b_base_") or isinstance(obj, (ctypes.Array, Structure)):
        return ctypes.addressof(obj)  # type: ignore[arg-type]
    ptr = getattr(obj, "ptr", None)
    if isinstance(ptr, int):
        return ptr
    raise TypeError(f"cannot take the address of {obj!r}")


class _Keep:
    """What must live as long as the engine may call the hooks: freed with the engine."""

    def __init__(self) -> None:
        self.ptr: ctypes._Pointer | None = None  # POINTER(ApfVcpu)
        self.miss: object = None
        self.frame_state: object = None


def _release(keep: _Keep) -> None:
    if keep.ptr:
        lib.apf_vcpu_free(keep.ptr)
    keep.ptr = None
    keep.miss = None


class VcpuAccel:
    """The C state and hooks of one engine. Create with :meth:`attach`."""

    STOP_NONE = STOP_NONE
    STOP_BUDGET = STOP_BUDGET
    STOP_NEW_BLOCK = STOP_NEW_BLOCK
    STOP_MEMFAULT = STOP_MEMFAULT
    STOP_IRQ_WINDOW = STOP_IRQ_WINDOW
    STOP_WATCH = STOP_WATCH

    def __init__(self) -> None:  # use attach()
        self._keep = _Keep()
        self._ptr: ctypes._Pointer | None = None
        self.state: ApfVcpu | None = None
        self._uc_ref: weakref.ReferenceType | None = None
        self._uch = 0
        self._hooks: list[int] = []
        self._insn_hook: int | None = None
        self._finalizer: weakref.finalize | None = None
        self.miss_error: BaseException | None = None

    @classmethod
    def attach(cls, uc, ram_ptr, ram_size: int, frame_state,
               miss_cb: MissCallback | None = None, *, set_tlb_mode: bool = True) -> "VcpuAccel":
        """Install the block and TLB-fill hooks on ``uc``.

        ``ram_ptr``: host address of guest RAM (mapped at guest physical 0 with ``mem_map_ptr``).
        ``frame_state``: host address (or ctypes array) of one byte per 4 KiB frame.
        ``miss_cb(addr, size) -> int``: instruction count of a new block, 0 = stop before it.
        ``None`` asks Unicorn itself (``UC_CTL_TB_REQUEST_CACHE``) and never stops.
        The engine is switched to ``UC_TLB_VIRTUAL`` and its translation cache is flushed, so
        blocks translated before the block hook existed are retranslated with it.
        """
        self = cls()
        if ram_size % PAGE:
            raise ValueError("ram_size must be a multiple of 4 KiB")
        ptr = lib.apf_vcpu_new()
        if not ptr:
            raise MemoryError("apf_vcpu_new")
        keep = self._keep
        keep.ptr = ptr
        keep.frame_state = frame_state  # keep a ctypes array alive
        self._ptr = ptr
        st = ptr.contents
        self.state = st
        self._uch = uc._uch.value
        st.ram = _addr(ram_ptr)
        st.ram_size = ram_size
        st.frame_state = _addr(frame_state)
        st.uc = self._uch
        st.reg_read = _UC_REG_READ
        st.reg_write = _UC_REG_WRITE
        st.emu_stop = _UC_EMU_STOP
        st.ctl = _UC_CTL
        if miss_cb is not None:
            keep.miss = MISS_CFUNC(self._wrap_miss(miss_cb))
            st.miss = ctypes.cast(keep.miss, c_void_p).value
        # The C memory and callbacks die with the engine (the hooks hold raw pointers to them).
        self._finalizer = weakref.finalize(uc, _release, keep)
        self._uc_ref = weakref.ref(uc)
        if set_tlb_mode:
            uc.ctl_set_tlb_mode(uc_const.UC_TLB_VIRTUAL)
        for htype, fn in ((uc_const.UC_HOOK_TLB_FILL, _FILL_HOOK), (uc_const.UC_HOOK_BLOCK, _BLOCK_HOOK)):
            h = uc_hook_h()
            err = uclib.uc_hook_add(uc._uch, byref(h), htype, fn, ctypes.cast(ptr, c_void_p),
                                    c_uint64(1), c_uint64(0))
            if err != uc_const.UC_ERR_OK:
                self.detach()
                from unicorn import UcError
                raise UcError(err)
            self._hooks.append(h.value)
        uc.ctl_flush_tb()
        lib.apf_flush_tlb(ptr)
        return self

    def set_insn_hook(self, on: bool) -> None:
        """Install (or remove) the per-instruction C hook that makes watchpoint stops exact. It
        costs a helper call per instruction, so it exists only while a watchpoint does."""
        uc = self._uc_ref() if self._uc_ref else None
        if uc is None or on == (self._insn_hook is not None):
            return
        if on:
            h = uc_hook_h()
            err = uclib.uc_hook_add(uc._uch, byref(h), uc_const.UC_HOOK_CODE, _INSN_HOOK,
                                    ctypes.cast(self._ptr, c_void_p), c_uint64(1), c_uint64(0))
            if err != uc_const.UC_ERR_OK:
                from unicorn import UcError
                raise UcError(err)
            self._insn_hook = h.value
        else:
            uclib.uc_hook_del(uc._uch, uc_hook_h(self._insn_hook))
            self._insn_hook = None
            self.state.watch_hit = 0
        uc.ctl_flush_tb()  # translated code picks the hook up (or drops it)

    def _wrap_miss(self, cb: MissCallback) -> Callable[[int, int], int]:
        def miss(addr: int, size: int) -> int:
            try:
                n = int(cb(addr, size))
            except BaseException as e:  # noqa: BLE001 -- re-raised by take_miss_error()
                if self.miss_error is None:
                    self.miss_error = e
                return 0
            return n if n > 0 else 0
        return miss

    def take_miss_error(self) -> None:
        """Re-raise an exception the miss callback raised during the last run (it stopped it)."""
        e, self.miss_error = self.miss_error, None
        if e is not None:
            raise e

    def detach(self) -> None:
        """Remove the hooks and free the C state (the engine keeps running without them)."""
        uc = self._uc_ref() if self._uc_ref else None
        if uc is not None:
            if self._insn_hook is not None:
                uclib.uc_hook_del(uc._uch, uc_hook_h(self._insn_hook))
                self._insn_hook = None
            for h in self._hooks:
                uclib.uc_hook_del(uc._uch, uc_hook_h(h))
            uc.ctl_flush_tb()
        self._hooks.clear()
        if self._finalizer is not None:
            self._finalizer()  # frees now, once
        self._ptr = None
        self.state = None

    # ---- counters ----------------------------------------------------------------------------
    @property
    def ptr(self) -> ctypes._Pointer:
        return self._ptr

    @property
    def address(self) -> int:
        return ctypes.cast(self._ptr, c_void_p).value

    @property
    def retired(self) -> int:
        return self.state.retired

    @retired.setter
    def retired(self, value: int) -> None:
        self.state.retired = value

    @property
    def budget_end(self) -> int:
        return self.state.budget_end

    @budget_end.setter
    def budget_end(self, value: int) -> None:
        self.state.budget_end = value

    @property
    def stop_reason(self) -> int:
        return self.state.stop_reason

    @stop_reason.setter
    def stop_reason(self, value: int) -> None:
        self.state.stop_reason = value

    def clear_stop(self) -> None:
        self.state.stop_reason = STOP_NONE
        self.state.fault.kind = FAULT_NONE

    @property
    def cur_block(self) -> Block:
        """(addr, size, icount) of the last block counted; its instructions are already in
        ``retired``: after a stop inside it, subtract those at and after the stop RIP."""
        s = self.state
        return Block(s.cur_block_addr, s.cur_block_size, s.cur_block_icount)

    @property
    def cur_block_start(self) -> int:
        """``retired`` just before the last block was counted."""
        return self.state.retired - self.state.cur_block_icount

    @property
    def fault(self) -> Fault | None:
        f = self.state.fault
        return Fault.from_c(f) if f.kind else None

    @property
    def asid(self) -> int:
        return self.state.asid

    @property
    def stats(self) -> dict[str, int]:
        s = self.state
        return {"lookups": s.n_lookups, "misses": s.n_misses, "fills": s.n_fills,
                "denies": s.n_denies, "cached": s.tab_used}

    # ---- block cache -------------------------------------------------------------------------
    def flush_cache(self) -> None:
        lib.apf_cache_flush(self._ptr)

    @property
    def cache_size(self) -> int:
        return lib.apf_cache_size(self._ptr)

    # ---- translation -------------------------------------------------------------------------
    def read_regs(self) -> ApfRegs:
        r = ApfRegs()
        lib.apf_read_regs(self._ptr, byref(r))
        return r

    def try_translate(self, va: int, access: int | str = "read", user: bool | None = None,
                      set_ad: bool = True, host: bool = True,
                      regs: ApfRegs | None = None) -> tuple[int | None, Fault | None]:
        """The fill hook's page walk: ``(gpa, None)`` or ``(None, fault)``.

        ``access``: "read", "write" or "fetch". ``user``: a CPL 3 access; None = the engine's
        current CPL (CS.RPL). ``set_ad`` False for debugger reads (no Accessed/Dirty updates);
        ``host`` False ignores the host's swap state. ``regs`` (see :meth:`read_regs`) replaces
        the engine's CR0/CR3/CR4/EFER/RFLAGS/CPL.
        """
        pa = c_uint64()
        f = ApfFault()
        flags = (TR_SET_AD if set_ad else 0) | (0 if host else TR_NO_HOST)
        u = -1 if user is None else int(bool(user))
        k = lib.apf_translate(self._ptr, va & 0xFFFFFFFFFFFFFFFF, _ACCESS[access], u, flags,
                              byref(regs) if regs is not None else None, byref(pa), None, byref(f))
        if k:
            return None, Fault.from_c(f)
        return pa.value, None

    def translate(self, va: int, access: int | str = "read", user: bool | None = None,
                  set_ad: bool = True, host: bool = True, regs: ApfRegs | None = None) -> int:
        """As :meth:`try_translate`, raising the fault's :class:`AccessFault` subclass."""
        pa, f = self.try_translate(va, access, user, set_ad, host, regs)
        if f is not None:
            raise f.to_exception()
        return pa

    def flush_tlb(self) -> None:
        lib.apf_flush_tlb(self._ptr)


class Accel:
    """The engines of one machine sharing guest RAM and the host's frame state."""

    def __init__(self, ram_ptr, ram_size: int, frame_state=None) -> None:
        if ram_size % PAGE:
            raise ValueError("ram_size must be a multiple of 4 KiB")
        self.ram_ptr = _addr(ram_ptr)
        self.ram_size = ram_size
        self.frames = ram_size // PAGE
        if frame_state is None:
            frame_state = (c_uint8 * self.frames)()
        self._frame_state_obj = frame_state
        self.frame_state_ptr = _addr(frame_state)
        self._fs = (c_uint8 * self.frames).from_address(self.frame_state_ptr)
        self.vcpus: list[VcpuAccel] = []
        self._arr = None

    def attach(self, uc, miss_cb: MissCallback | None = None, **kw) -> VcpuAccel:
        v = VcpuAccel.attach(uc, self.ram_ptr, self.ram_size, self._frame_state_obj, miss_cb, **kw)
        self.vcpus.append(v)
        self._rebuild()
        return v

    def detach(self, v: VcpuAccel) -> None:
        self.vcpus.remove(v)
        v.detach()
        self._rebuild()

    def _rebuild(self) -> None:
        P = POINTER(ApfVcpu)
        self._arr = (P * max(1, len(self.vcpus)))(*[v.ptr for v in self.vcpus])

    def is_out(self, gfn: int) -> bool:
        return bool(self._fs[gfn])

    def page_out(self, gfn: int) -> None:
        """Host swaps frame ``gfn`` out: mark it and flush every engine's TLB."""
        if not 0 <= gfn < self.frames:
            raise ValueError(f"gfn {gfn:#x} outside RAM")
        if self.vcpus:
            err = lib.apf_page_out(self._arr, len(self.vcpus), gfn)
            if err:
                raise RuntimeError(f"TLB flush failed: {err}")
        else:
            self._fs[gfn] = 1

    def page_out_many(self, gfns: Iterable[int]) -> None:
        """Several frames, one TLB flush per engine."""
        for g in gfns:
            if not 0 <= g < self.frames:
                raise ValueError(f"gfn {g:#x} outside RAM")
            self._fs[g] = 1
        self.flush_tlbs()

    def page_in(self, gfn: int) -> None:
        """The frame is resident again (denials are never cached: no flush needed)."""
        if not 0 <= gfn < self.frames:
            raise ValueError(f"gfn {gfn:#x} outside RAM")
        self._fs[gfn] = 0

    def flush_tlbs(self) -> None:
        for v in self.vcpus:
            lib.apf_flush_tlb(v.ptr)
