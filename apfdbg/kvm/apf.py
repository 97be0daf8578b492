"""The KVM async-page-fault host, modelled per vCPU.

What the host side of Linux KVM does for paravirtual async page faults, for the kernels
in :mod:`apfdbg.kvm.profiles`.  The model knows nothing of the emulator or the UI: it
talks to each vCPU through a :class:`VcpuPort`, to guest RAM through :class:`GuestMemory`,
to the host pager through a :class:`PageInRequester`, reads virtual time from a
:class:`Clock`, and reports every action as a typed event (:mod:`apfdbg.kvm.events`).

The kernel function each step follows is named in the docstrings; docs/kvm-model.md has
the whole account.

Long by design: one concern, the per-vCPU async-PF state machine of KVM, kept in one place so it
reads next to the kernel's x86.c and async_pf.c.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from . import events as ev
from .gfn_hash import ASYNC_PF_PER_VCPU, GfnHash
from .profiles import (
    AREA_GPA_MASK,
    KVM_ASYNC_PF_DELIVERY_AS_INT,
    KVM_ASYNC_PF_DELIVERY_AS_PF_VMEXIT,
    KVM_FEATURE_ASYNC_PF_INT,
    KVM_FEATURE_ASYNC_PF_VMEXIT,
    KVM_PV_REASON_PAGE_NOT_PRESENT,
    KVM_PV_REASON_PAGE_READY,
    MSR_KVM_ASYNC_PF_ACK,
    MSR_KVM_ASYNC_PF_EN,
    MSR_KVM_ASYNC_PF_INT,
    WAKE_ALL_TOKEN,
    Profile,
    ReadyDelivery,
    get_profile,
)

__all__ = [
    "VcpuPort",
    "GuestMemory",
    "Clock",
    "PageInRequester",
    "EventSink",
    "Outcome",
    "WorkState",
    "AsyncPfWork",
    "VcpuApf",
    "WorkInfo",
    "VcpuApfSnapshot",
    "AsyncPfHost",
    "MsrFault",
]

_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1
PAGE_SHIFT = 12
MAX_VCPU_ID = 1 << 12  # the low 12 bits of a token are the vcpu_id


# ---- the ports the machine implements ---------------------------------------------------
@runtime_checkable
class VcpuPort(Protocol):
    """One vCPU as the host model sees it."""

    index: int  # vcpu_id (the low 12 bits of tokens)

    def interrupt_allowed(self) -> bool:
        """RFLAGS.IF = 1, no STI/MOV-SS shadow and no event awaiting (re)injection.

        The last part includes an exception the model asked for with inject_page_fault that
        the machine has not delivered yet (2.6.38's kvm_event_needs_reinjection counts any
        pending exception), so two APF #PFs are never queued on top of each other.
        """
        ...

    def cpl(self) -> int: ...

    def inject_page_fault(self, cr2: int, error_code: int) -> None:
        """Queue a #PF; the machine delivers it through the guest IDT on the next entry."""
        ...

    def set_halted(self, halted: bool) -> None:
        """apf.halted: the vCPU does not run (it may still wake for an interrupt it can take:
        the machine decides that and then calls AsyncPfHost.on_interrupt_wake)."""
        ...

    # Used by the profiles with interrupt page-ready (today's protocol) only:
    def inject_interrupt(self, vector: int) -> None:
        """A fixed, edge interrupt into the vCPU's local APIC (kvm_apic_set_irq)."""
        ...

    def apic_enabled(self) -> bool:
        """kvm_lapic_enabled: the local APIC is on (SVR bit 8)."""
        ...


@runtime_checkable
class GuestMemory(Protocol):
    def is_ram(self, gpa: int, size: int) -> bool: ...
    def write_u32(self, gpa: int, value: int) -> None: ...
    def read_u32(self, gpa: int) -> int: ...


@runtime_checkable
class Clock(Protocol):
    def now(self) -> int: ...  # virtual time (instructions)


@runtime_checkable
class PageInRequester(Protocol):
    """The host pager.

    ``request_page_in`` starts the I/O for one work (async_pf_execute's get_user_pages) and
    must later call :meth:`AsyncPfHost.page_in_done` with the same work, or may call it
    from inside ``request_page_in``.  Optional extra methods the host uses when present:
    ``page_in_now(work)`` (the UI's "finish this page-in now": make the page present at
    once; it may call page_in_done itself) and ``cancel_page_in(work)`` (the work was
    cancelled by an MSR disable or a vCPU reset; page_in_done on it is then ignored).
    """

    def request_page_in(self, vcpu_index: int, gfn: int, work: "AsyncPfWork") -> None: ...


EventSink = Callable[[ev.Event], None]


class MsrFault(Exception):
    """rdmsr of an MSR the model does not own (the machine should not route it here)."""


# ---- results and works ------------------------------------------------------------------
class Outcome(str, Enum):
    """What on_swapped_fault decided (try_async_pf in arch/x86/kvm/mmu.c)."""

    ASYNC = "async"  # work queued, gfn hashed, reason 1 written, #PF(CR2=token, ec 0) injected
    HALT = "halt"  # work queued, gfn hashed, no injection, apf.halted set ("halt vcpu" path)
    DOUBLEFAULT_HALT = "doublefault_halt"  # gfn already hashed: apf.halted set, nothing queued
    SYNC = "sync"  # resolve synchronously: the vCPU stalls until the page is in
    #: work queued and gfn hashed, but the reason could not be written (APF left "half
    #: enabled" by a #GP'd enable with a GPA outside RAM): no #PF, no halt.  The machine
    #: re-enters; the access faults again and becomes DOUBLEFAULT_HALT.
    QUEUED_SILENT = "queued_silent"


class WorkState(str, Enum):
    PAGING_IN = "paging_in"  # on async_pf.queue, the host I/O not finished
    DONE = "done"  # on async_pf.done (and still on queue), waiting for delivery
    DELIVERED = "delivered"  # page ready handled (injected or not), work freed
    CANCELLED = "cancelled"  # dropped by kvm_clear_async_pf_completion_queue


@dataclass(eq=False)
class AsyncPfWork:
    """struct kvm_async_pf: one outstanding page-in (or a wake-all dummy)."""

    serial: int  # apfdbg's own id for the UI and events
    vcpu: int
    token: int  # arch.token (0 for a wake-all until delivered, then 0xffffffff)
    gfn: int | None  # None for a wake-all dummy
    gva: int
    wakeup_all: bool
    state: WorkState
    created: int
    completed_at: int | None = None
    delivered_at: int | None = None
    #: how its "not present" went: "pf", "halt", "none" (None for a wake-all)
    not_present: str | None = None
    #: CR2 of the "page ready" #PF, once delivered with injection
    ready_token: int | None = None

    def info(self) -> "WorkInfo":
        return WorkInfo(
            serial=self.serial,
            vcpu=self.vcpu,
            token=self.token,
            gfn=self.gfn,
            gva=self.gva,
            wakeup_all=self.wakeup_all,
            state=self.state.value,
            created=self.created,
            completed_at=self.completed_at,
            delivered_at=self.delivered_at,
            not_present=self.not_present,
            ready_token=self.ready_token,
        )

    def __repr__(self) -> str:
        what = "wake-all" if self.wakeup_all else f"gfn={self.gfn:#x}"
        return f"<work #{self.serial} vcpu{self.vcpu} token={self.token:#x} {what} {self.state.value}>"


class WorkInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    serial: int
    vcpu: int
    token: int
    gfn: int | None
    gva: int
    wakeup_all: bool
    state: str
    created: int
    completed_at: int | None
    delivered_at: int | None
    not_present: str | None
    ready_token: int | None


class VcpuApfSnapshot(BaseModel):
    """Everything the UI shows for one vCPU (a copy: safe to keep)."""

    model_config = ConfigDict(frozen=True)

    index: int
    profile: str
    msr_val: int
    msr: dict[str, Any]  # decoded MSR_KVM_ASYNC_PF_EN
    enabled: bool
    send_user_only: bool
    area_gpa: int
    id: int  # apf.id, the token counter
    next_token: int
    halted: bool
    queued: int
    queue: list[WorkInfo]  # async_pf.queue: real works not yet delivered (paging in or done)
    done: list[WorkInfo]  # async_pf.done: completed, not yet delivered, oldest first
    gfns: list[int | None]  # the 64 slots of apf.gfns (None = empty)
    gfn_home: list[int | None]  # home bucket of each slot's entry
    gfn_distance: list[int | None]  # probe distance of each slot's entry
    int_vector: int | None = None  # today's protocol: the page-ready vector (MSR_KVM_ASYNC_PF_INT)
    pageready_pending: bool = False  # today's protocol: sent, not acknowledged yet


class VcpuApf:
    """The per-vCPU async-PF state: vcpu->arch.apf plus vcpu->async_pf."""

    def __init__(self, port: VcpuPort, profile: Profile) -> None:
        self.port = port
        self.index: int = port.index
        self.profile = profile
        # vcpu->arch.apf
        self.msr_val: int = 0
        self.send_user_only: bool = False  # 2.6.38: !(data & SEND_ALWAYS) on a good enable
        self.id: int = 0  # u32 token counter; never reset
        self.halted: bool = False
        # today's protocol (interrupt page-ready)
        self.msr_int_val: int = 0  # MSR_KVM_ASYNC_PF_INT
        self.vec: int = 0
        self.pageready_pending: bool = False  # a page-ready was sent; cleared by the ACK write
        self.ready_request: bool = False  # KVM_REQ_APF_READY: check the done list at next entry
        self.gfns = GfnHash(
            profile.hash_multiplier,
            stop_at_empty=profile.gfn_slot_stops_at_empty,
            guard_missing_delete=profile.gfn_del_guarded,
        )
        # vcpu->async_pf
        self.queue: list[AsyncPfWork] = []
        self.done: list[AsyncPfWork] = []
        self.queued: int = 0

    # ---- decoded views ----
    @property
    def enabled(self) -> bool:
        return self.profile.is_enabled(self.msr_val)

    @property
    def area_gpa(self) -> int:
        return self.msr_val & AREA_GPA_MASK

    @property
    def msr(self) -> dict[str, Any]:
        return self.profile.decode_msr(self.msr_val)

    @property
    def next_token(self) -> int:
        return _token(self.id, self.index, self.profile.skip_zero_token)[0]

    @property
    def wakeall_pending(self) -> int:
        return sum(1 for w in self.done if w.wakeup_all)

    @property
    def in_flight(self) -> list[AsyncPfWork]:
        return [w for w in self.queue if w.state is WorkState.PAGING_IN]

    def snapshot(self) -> VcpuApfSnapshot:
        entries = self.gfns.entries()
        return VcpuApfSnapshot(
            index=self.index,
            profile=self.profile.name,
            msr_val=self.msr_val,
            msr=self.msr,
            enabled=self.enabled,
            send_user_only=self.send_user_only,
            area_gpa=self.area_gpa,
            id=self.id,
            next_token=self.next_token,
            halted=self.halted,
            queued=self.queued,
            queue=[w.info() for w in self.queue],
            done=[w.info() for w in self.done],
            gfns=entries,
            gfn_home=[None if e is None else self.gfns.home(e) for e in entries],
            gfn_distance=[self.gfns.distance(i) for i in range(len(entries))],
            int_vector=self.vec if self.profile.ready_delivery is ReadyDelivery.INTERRUPT else None,
            pageready_pending=self.pageready_pending,
        )

    def __repr__(self) -> str:
        return (
            f"<VcpuApf {self.index} msr={self.msr_val:#x} queued={self.queued} "
            f"done={len(self.done)} halted={self.halted} id={self.id}>"
        )


def _token(apf_id: int, vcpu_id: int, skip_zero: bool) -> tuple[int, int]:
    """kvm_arch_setup_async_pf: (token, next id). Token = (id++ << 12) | vcpu_id, in a u32."""
    if skip_zero and ((apf_id << 12) & _U32) == 0:
        apf_id = 1
    token = ((apf_id << 12) | vcpu_id) & _U32
    return token, (apf_id + 1) & _U32


class _CallablePager:
    def __init__(self, fn: Callable[[int, int, AsyncPfWork], None]) -> None:
        self.request_page_in = fn


# ---- the host ---------------------------------------------------------------------------
class AsyncPfHost:
    """The async-PF host of one machine: one :class:`VcpuApf` per vCPU.

    ``profile``: a :class:`Profile` or its name (``seed``, the default, or ``2.6.38``).
    ``sink`` receives every event.  ``pager`` (an object with ``request_page_in`` or a
    plain callable ``(vcpu_index, gfn, work)``) may also be given later with
    :meth:`set_pager`; without one, works wait for :meth:`complete` commands.
    """

    def __init__(
        self,
        memory: GuestMemory,
        clock: Clock,
        sink: EventSink | None = None,
        pager: PageInRequester | Callable[[int, int, AsyncPfWork], None] | None = None,
        profile: Profile | str | None = None,
        vcpus: Iterable[VcpuPort] = (),
    ) -> None:
        self.profile = get_profile(profile)
        self._by_interrupt = self.profile.ready_delivery is ReadyDelivery.INTERRUPT
        self.memory = memory
        self.clock = clock
        self.sink: EventSink = sink if sink is not None else (lambda _e: None)
        self.pager: Any = None
        self.set_pager(pager)
        self.vcpus: dict[int, VcpuApf] = {}
        self._serials = itertools.count(1)
        # MSR index -> (read, write)
        known = {
            MSR_KVM_ASYNC_PF_EN: (self._read_apf_en, self._write_apf_en),
            MSR_KVM_ASYNC_PF_INT: (self._read_apf_int, self._write_apf_int),
            MSR_KVM_ASYNC_PF_ACK: (self._read_apf_ack, self._write_apf_ack),
        }
        missing = [hex(m) for m in self.profile.msr_ids if m not in known]
        if missing:
            raise NotImplementedError(f"profile {self.profile.name}: MSRs {missing} not implemented")
        self._msr_handlers: dict[int, tuple[Callable[..., int], Callable[..., bool]]] = {
            m: known[m] for m in self.profile.msr_ids
        }
        for port in vcpus:
            self.add_vcpu(port)

    # ---- wiring ----
    def set_pager(self, pager: Any) -> None:
        if pager is not None and not hasattr(pager, "request_page_in"):
            if not callable(pager):
                raise TypeError("pager must have request_page_in(vcpu_index, gfn, work) or be callable")
            pager = _CallablePager(pager)
        self.pager = pager

    def add_vcpu(self, port: VcpuPort) -> VcpuApf:
        """kvm_arch_vcpu_init: a fresh state (msr 0, empty hash, id 0)."""
        index = port.index
        if not 0 <= index < MAX_VCPU_ID:
            raise ValueError(f"vcpu index {index} does not fit the 12 token bits")
        if index in self.vcpus:
            raise ValueError(f"vcpu {index} already added")
        state = VcpuApf(port, self.profile)
        self.vcpus[index] = state
        return state

    def state(self, vcpu: int | VcpuPort | VcpuApf) -> VcpuApf:
        if isinstance(vcpu, VcpuApf):
            return vcpu
        index = vcpu if isinstance(vcpu, int) else vcpu.index
        try:
            return self.vcpus[index]
        except KeyError:
            raise KeyError(f"no vcpu {index} in the async-PF host") from None

    def snapshot(self) -> list[VcpuApfSnapshot]:
        return [self.vcpus[i].snapshot() for i in sorted(self.vcpus)]

    # ---- CPUID / MSR ----
    def msr_ids(self) -> tuple[int, ...]:
        """The MSRs to route here (and to save on migration: msrs_to_save)."""
        return self.profile.msr_ids

    def cpuid_features(self) -> int:
        """CPUID 0x40000001 EAX bits this model provides (KVM_FEATURE_ASYNC_PF = bit 4)."""
        return self.profile.cpuid_features

    def rdmsr(self, vcpu: int | VcpuPort | VcpuApf, index: int) -> int:
        """kvm_get_msr_common for the APF MSRs (MSR_KVM_ASYNC_PF_EN reads back msr_val).

        Raises :class:`MsrFault` for an MSR the profile does not own (the machine routes
        only :meth:`msr_ids` here, so that is a wiring bug, not a guest #GP)."""
        st = self.state(vcpu)
        handlers = self._msr_handlers.get(index)
        if handlers is None:
            raise MsrFault(f"MSR {index:#x} is not an async-PF MSR of profile {self.profile.name}")
        value = handlers[0](st)
        self._emit(ev.MsrRead, st, index=index, value=value)
        return value

    def wrmsr(self, vcpu: int | VcpuPort | VcpuApf, index: int, value: int) -> bool:
        """kvm_set_msr_common for the APF MSRs.  False means the write #GPs (the machine
        injects #GP(0)); a ``gp`` event says why."""
        st = self.state(vcpu)
        if not 0 <= value <= _U64:
            raise ValueError(f"MSR value must be a u64, not {value!r}")
        handlers = self._msr_handlers.get(index)
        if handlers is None:
            return self._msr_fail(st, index, value, f"MSR {index:#x} not handled by the async-PF model")
        return handlers[1](st, value)

    def _read_apf_en(self, st: VcpuApf) -> int:
        return st.msr_val

    def _write_apf_en(self, st: VcpuApf, value: int) -> bool:
        """kvm_pv_enable_async_pf:

        1. reserved bits set -> fail, nothing stored;
        2. msr_val = value (kept even if step 4 fails);
        3. enable bit clear -> clear the completion queue, reset the hash, succeed;
        4. the area's GPA not in RAM -> fail (APF stays "half enabled");
        5. (SEND_ALWAYS profiles) send_user_only = not SEND_ALWAYS;
        6. queue a wake-all (only if done is empty), succeed.
        """
        index = MSR_KVM_ASYNC_PF_EN
        reserved = self.profile.reserved_bits(value)
        if reserved:
            return self._msr_fail(st, index, value, f"reserved bits {reserved:#x} set")
        # guest_pv_has: a delivery bit needs its CPUID feature (bits reserved in 2010 failed above)
        offered = self.profile.cpuid_features
        for bit, feature, name in ((KVM_ASYNC_PF_DELIVERY_AS_PF_VMEXIT, KVM_FEATURE_ASYNC_PF_VMEXIT,
                                    "DELIVERY_AS_PF_VMEXIT"),
                                   (KVM_ASYNC_PF_DELIVERY_AS_INT, KVM_FEATURE_ASYNC_PF_INT, "DELIVERY_AS_INT")):
            if value & bit and not offered & (1 << feature):
                return self._msr_fail(st, index, value, f"{name} set, its CPUID feature not offered")
        st.msr_val = value
        if not self.profile.is_enabled(value):
            self._clear_completion_queue(st, "msr_disable")
            st.gfns.reset()
            self._emit(ev.MsrWrite, st, index=index, value=value, result="ok", reason="disabled")
            return True
        gpa = value & AREA_GPA_MASK
        if not self.memory.is_ram(gpa, self.profile.area_check_len):
            return self._msr_fail(
                st, index, value, f"area GPA {gpa:#x} not in guest RAM (msr_val already stored)"
            )
        if self.profile.send_always_bit is not None:
            st.send_user_only = not (value & self.profile.send_always_bit)
        self._wakeup_all(st)
        self._emit(ev.MsrWrite, st, index=index, value=value, result="ok", reason="enabled")
        return True

    def _read_apf_int(self, st: VcpuApf) -> int:
        return st.msr_int_val

    def _write_apf_int(self, st: VcpuApf, value: int) -> bool:
        """kvm_pv_enable_async_pf_int: bits above 7 fail, nothing stored; else the vector."""
        if value >> 8:
            return self._msr_fail(st, MSR_KVM_ASYNC_PF_INT, value, "bits above 7 set (the vector is 8 bits)")
        st.msr_int_val = value
        st.vec = value & 0xFF
        self._emit(ev.MsrWrite, st, index=MSR_KVM_ASYNC_PF_INT, value=value, result="ok", reason=f"vector {st.vec:#x}")
        return True

    def _read_apf_ack(self, st: VcpuApf) -> int:
        return 0

    def _write_apf_ack(self, st: VcpuApf, value: int) -> bool:
        """The MSR_KVM_ASYNC_PF_ACK case of kvm_set_msr_common: bit 0 clears pageready_pending and
        checks the done list at once (not on a request)."""
        self._emit(ev.MsrWrite, st, index=MSR_KVM_ASYNC_PF_ACK, value=value, result="ok",
                   reason="ack" if value & 1 else "ignored (bit 0 clear)")
        if value & 1:
            st.pageready_pending = False
            self._check_completion(st)
        return True

    def _msr_fail(self, st: VcpuApf, index: int, value: int, why: str) -> bool:
        self._emit(ev.MsrWrite, st, index=index, value=value, result="gp", reason=why)
        self._emit(ev.Gp, st, index=index, why=why)
        return False

    # ---- the fault path ----
    def on_swapped_fault(
        self, vcpu: int | VcpuPort | VcpuApf, gfn: int, gva: int, *, prefault: bool = False
    ) -> Outcome:
        """The vCPU touched ``gfn`` (at ``gva``; under EPT this is the faulting GPA) while the
        host has it swapped out: try_async_pf (mmu.c) with can_do_async_pf, the doublefault
        check, kvm_arch_setup_async_pf / kvm_setup_async_pf and
        kvm_arch_async_page_not_present.
        """
        st = self.state(vcpu)
        if prefault:  # kvm_arch_async_page_ready's own fault never goes async
            self._emit(ev.SyncFault, st, gva=gva, gfn=gfn, reason="prefault")
            return Outcome.SYNC
        # can_do_async_pf: irqchip in kernel (always here), no event awaiting reinjection,
        # interrupts allowed (both are in the port's interrupt_allowed)
        if not st.port.interrupt_allowed():
            self._emit(ev.SyncFault, st, gva=gva, gfn=gfn, reason="cannot_async")
            return Outcome.SYNC
        self._emit(ev.TryAsyncGetPage, st, gva=gva, gfn=gfn)
        look = st.gfns.lookup(gfn)
        if look.found:
            self._emit(ev.AsyncPfDoublefault, st, gva=gva, gfn=gfn, slot=look.slot)
            self._halt(st, "doublefault", gfn, gva, None)
            return Outcome.DOUBLEFAULT_HALT
        # kvm_arch_setup_async_pf: the token is taken before kvm_setup_async_pf's room check
        token, st.id = _token(st.id, st.index, self.profile.skip_zero_token)
        if st.queued >= ASYNC_PF_PER_VCPU:
            self._emit(ev.SyncFault, st, gva=gva, gfn=gfn, reason="queue_full")
            return Outcome.SYNC
        work = AsyncPfWork(
            serial=next(self._serials),
            vcpu=st.index,
            token=token,
            gfn=gfn,
            gva=gva,
            wakeup_all=False,
            state=WorkState.PAGING_IN,
            created=self.clock.now(),
        )
        st.queue.append(work)
        st.queued += 1
        delivery = self._page_not_present(st, work)
        self._request_page_in(work)
        return {"pf": Outcome.ASYNC, "halt": Outcome.HALT, "none": Outcome.QUEUED_SILENT}[delivery]

    def _page_not_present(self, st: VcpuApf, work: AsyncPfWork) -> str:
        """kvm_arch_async_page_not_present."""
        assert work.gfn is not None
        slot = st.gfns.add(work.gfn)
        profile = self.profile
        if not st.enabled:
            delivery = "halt"
        elif st.port.cpl() == 0 and (profile.send_always_bit is None or st.send_user_only):
            delivery = "halt"
        elif self._put_reason(st, KVM_PV_REASON_PAGE_NOT_PRESENT):
            st.port.inject_page_fault(work.token, 0)
            delivery = "pf"
        else:
            delivery = "halt" if profile.put_user_failure_halts else "none"
        work.not_present = delivery
        self._emit(
            ev.AsyncPfNotPresent,
            st,
            token=work.token,
            gva=work.gva,
            gfn=work.gfn,
            work=work.serial,
            slot=slot,
            delivery=delivery,
        )
        if delivery == "halt":
            self._halt(st, "not_present", work.gfn, work.gva, work.token)
        return delivery

    def _put_reason(self, st: VcpuApf, reason: int) -> bool:
        """apf_put_user: write the u32 reason through the area cache; False if it fails."""
        gpa = st.area_gpa
        if not self.memory.is_ram(gpa, 4):
            return False
        self.memory.write_u32(gpa, reason)
        return True

    def _put_ready_token(self, st: VcpuApf, token: int) -> bool:
        """apf_put_user_ready: the u32 token at offset 4 of the area (flags are left alone)."""
        gpa = st.area_gpa + 4
        if not self.memory.is_ram(gpa, 4):
            return False
        self.memory.write_u32(gpa, token)
        return True

    def _request_page_in(self, work: AsyncPfWork) -> None:
        if self.pager is not None and work.gfn is not None:
            self.pager.request_page_in(work.vcpu, work.gfn, work)

    # ---- completion ----
    def page_in_done(self, work: AsyncPfWork) -> bool:
        """async_pf_execute's end: the page is in; the work joins its vCPU's done list and a
        halted vCPU becomes runnable.  False (and nothing happens) if the work is not paging
        in any more (already done, or cancelled by an MSR disable or reset)."""
        if work.state is not WorkState.PAGING_IN:
            return False
        st = self.vcpus[work.vcpu]
        assert work.gfn is not None
        work.state = WorkState.DONE
        work.completed_at = self.clock.now()
        if not st.done:  # the first on the done list asks for a check (present_queued)
            st.ready_request = True
        st.done.append(work)
        self._emit(
            ev.AsyncPfCompleted,
            st,
            address=work.gfn << PAGE_SHIFT,
            gva=work.gva,
            gfn=work.gfn,
            work=work.serial,
            token=work.token,
        )
        self._unhalt(st, "completion")
        return True

    def can_inject_page_ready(self, vcpu: int | VcpuPort | VcpuApf) -> bool:
        """kvm_arch_can_inject_async_page_present (2010): always with APF disabled, else only when
        interrupts are allowed and nothing awaits (re)injection.  Today's
        kvm_arch_can_dequeue_async_page_present: always with APF disabled, else while the local
        APIC is on and the token slot is free (apf_pageready_slot_free: the u32 at offset 4 is 0)."""
        st = self.state(vcpu)
        if not st.enabled:
            return True
        if self._by_interrupt:
            return st.port.apic_enabled() and self._slot_free(st)
        return st.port.interrupt_allowed()

    def _slot_free(self, st: VcpuApf) -> bool:
        gpa = st.area_gpa + 4
        return self.memory.is_ram(gpa, 4) and self.memory.read_u32(gpa) == 0

    def on_apic_enabled(self, vcpu: int | VcpuPort | VcpuApf) -> None:
        """The guest turned its local APIC on (apic_set_spiv): check for page-readies waiting."""
        if self.profile.completions_on_request:
            self.state(vcpu).ready_request = True

    def runnable(self, vcpu: int | VcpuPort | VcpuApf) -> bool:
        """The async-PF part of kvm_arch_vcpu_runnable: not halted, or a done work waits."""
        st = self.state(vcpu)
        return not st.halted or bool(st.done)

    def before_entry(self, vcpu: int | VcpuPort | VcpuApf) -> list[AsyncPfWork]:
        """kvm_check_async_pf_completion, called before every guest entry.

        Takes the oldest done work while one can be injected, ``completions_per_entry`` at
        most (1 for seed and 2.6.38, whose kernels handled one per call), and runs
        kvm_arch_async_page_present on it.  Returns the works handled.
        """
        st = self.state(vcpu)
        if self.profile.completions_on_request:
            if not st.ready_request:
                return []
            st.ready_request = False   # KVM_REQ_APF_READY, taken
        return self._check_completion(st)

    def _check_completion(self, st: VcpuApf) -> list[AsyncPfWork]:
        """kvm_check_async_pf_completion's loop."""
        handled: list[AsyncPfWork] = []
        limit = self.profile.completions_per_entry
        while st.done and (limit is None or len(handled) < limit) and self.can_inject_page_ready(st):
            work = st.done.pop(0)
            # kvm_arch_async_page_ready (the prefault) maps the page: the pager already did.
            self._page_present(st, work)
            if not work.wakeup_all:
                st.queue.remove(work)
            st.queued -= 1
            handled.append(work)
        return handled

    def _page_present(self, st: VcpuApf, work: AsyncPfWork) -> None:
        """kvm_arch_async_page_present."""
        traced_token = work.token
        slot: int | None = None
        moves: list[tuple[int, int]] = []
        if work.wakeup_all:
            work.token = WAKE_ALL_TOKEN
        else:
            assert work.gfn is not None
            slot = st.gfns.lookup(work.gfn).slot
            moves = st.gfns.delete(work.gfn)
        delivered: int | None = None
        wanted = (
            not self.profile.ready_needs_not_present_injected
            or work.wakeup_all
            or work.not_present == "pf"
        )
        if not (st.enabled and wanted):
            pass
        elif self._by_interrupt:
            if self._put_ready_token(st, work.token):   # apf_put_user_ready, then the interrupt
                st.pageready_pending = True
                st.port.inject_interrupt(st.vec)
                delivered = work.token
        elif self._put_reason(st, KVM_PV_REASON_PAGE_READY):
            st.port.inject_page_fault(work.token, 0)
            delivered = work.token
        work.state = WorkState.DELIVERED
        work.delivered_at = self.clock.now()
        work.ready_token = delivered
        self._emit(
            ev.AsyncPfReady,
            st,
            token=traced_token,
            gva=work.gva,
            gfn=work.gfn,
            work=work.serial,
            wakeup_all=work.wakeup_all,
            delivered_token=delivered,
            slot=slot,
            moves=moves,
        )
        self._unhalt(st, "page_ready")

    # ---- wake-all, halting ----
    def wake_all(self, vcpu: int | VcpuPort | VcpuApf) -> AsyncPfWork | None:
        """Command: kvm_async_pf_wakeup_all now (as an MSR enable does)."""
        return self._wakeup_all(self.state(vcpu))

    def _wakeup_all(self, st: VcpuApf) -> AsyncPfWork | None:
        """kvm_async_pf_wakeup_all: a dummy work on done, but only if done is empty."""
        if st.done:
            self._emit(ev.WakeupAll, st, queued=False, work=None)
            return None
        work = AsyncPfWork(
            serial=next(self._serials),
            vcpu=st.index,
            token=0,
            gfn=None,
            gva=0,
            wakeup_all=True,
            state=WorkState.DONE,
            created=self.clock.now(),
        )
        work.completed_at = work.created
        st.done.append(work)
        st.queued += 1
        st.ready_request = True
        self._emit(ev.WakeupAll, st, queued=True, work=work.serial)
        self._unhalt(st, "completion")
        return work

    def on_interrupt_wake(self, vcpu: int | VcpuPort | VcpuApf) -> None:
        """The machine woke a halted vCPU for an interrupt it can take (kvm_vcpu_block
        returned: __vcpu_run clears apf.halted)."""
        self._unhalt(self.state(vcpu), "interrupt")

    def _halt(self, st: VcpuApf, reason: str, gfn: int, gva: int, token: int | None) -> None:
        """KVM_REQ_APF_HALT -> apf.halted = true.  If a done work already waits, the vCPU is
        runnable at once (kvm_vcpu_block sees kvm_arch_vcpu_runnable and returns)."""
        st.halted = True
        st.port.set_halted(True)
        self._emit(ev.Halt, st, reason=reason, gfn=gfn, gva=gva, token=token)
        if st.done:
            self._unhalt(st, "done_pending")

    def _unhalt(self, st: VcpuApf, reason: str) -> None:
        if not st.halted:
            return
        st.halted = False
        st.port.set_halted(False)
        self._emit(ev.Wake, st, reason=reason)

    # ---- commands: finish page-ins now ----
    def complete(self, work: AsyncPfWork) -> bool:
        """Finish this work's page-in now.  Asks the pager to make the page present
        (``page_in_now``) if it can, then completes the work.  False if it was not paging in."""
        if work.state is not WorkState.PAGING_IN:
            return False
        hook = getattr(self.pager, "page_in_now", None)
        if hook is not None:
            hook(work)
        if work.state is WorkState.PAGING_IN:
            self.page_in_done(work)
        return work.state is not WorkState.PAGING_IN

    def complete_oldest(self, vcpu: int | VcpuPort | VcpuApf) -> AsyncPfWork | None:
        st = self.state(vcpu)
        for work in st.queue:
            if work.state is WorkState.PAGING_IN:
                self.complete(work)
                return work
        return None

    def complete_all(self, vcpu: int | VcpuPort | VcpuApf | None = None) -> list[AsyncPfWork]:
        states = [self.state(vcpu)] if vcpu is not None else [self.vcpus[i] for i in sorted(self.vcpus)]
        finished = []
        for st in states:
            for work in list(st.in_flight):
                if self.complete(work):
                    finished.append(work)
        return finished

    # ---- reset ----
    def reset_vcpu(self, vcpu: int | VcpuPort | VcpuApf) -> None:
        """kvm_arch_vcpu_reset: msr_val = 0, clear the completion queue, reset the hash,
        clear halted.  apf.id (and send_user_only) are left alone, as in the kernel."""
        st = self.state(vcpu)
        st.msr_val = 0
        st.msr_int_val = 0
        self._clear_completion_queue(st, "reset")
        st.gfns.reset()
        self._unhalt(st, "reset")
        self._emit(ev.VcpuReset, st)

    def _clear_completion_queue(self, st: VcpuApf, reason: str) -> None:
        """kvm_clear_async_pf_completion_queue: cancel outstanding works, free the done list,
        queued = 0.  Nothing of it will be delivered."""
        cancelled = [w for w in st.queue if w.state is WorkState.PAGING_IN]
        dropped = list(st.done)
        queued_before = st.queued
        for w in cancelled + dropped:
            w.state = WorkState.CANCELLED
        st.queue.clear()
        st.done.clear()
        st.queued = 0
        cancel = getattr(self.pager, "cancel_page_in", None)
        if cancel is not None:
            for w in cancelled:
                cancel(w)
        self._emit(
            ev.CompletionQueueCleared,
            st,
            reason=reason,
            cancelled=[w.token for w in cancelled],
            dropped_done=[w.token for w in dropped if not w.wakeup_all],
            dropped_wakeup_all=sum(1 for w in dropped if w.wakeup_all),
            queued_before=queued_before,
        )

    # ---- lookup helpers for the UI ----
    def works(self, vcpu: int | VcpuPort | VcpuApf | None = None) -> list[AsyncPfWork]:
        """Outstanding works (queue, then wake-all dummies on done)."""
        states = [self.state(vcpu)] if vcpu is not None else [self.vcpus[i] for i in sorted(self.vcpus)]
        out: list[AsyncPfWork] = []
        for st in states:
            out.extend(st.queue)
            out.extend(w for w in st.done if w.wakeup_all)
        return out

    def find_work(self, token: int, vcpu: int | VcpuPort | VcpuApf | None = None) -> AsyncPfWork | None:
        for work in self.works(vcpu):
            if work.token == token:
                return work
        return None

    # ---- events ----
    def _emit(self, cls: type[ev.Event], st: VcpuApf | None, **fields: Any) -> None:
        self.sink(cls(time=self.clock.now(), vcpu=None if st is None else st.index, **fields))
