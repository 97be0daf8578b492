"""Typed events of the KVM async-PF host model.

Every action of :class:`apfdbg.kvm.apf.AsyncPfHost` emits one of these to the sink it was
given.  The names follow the kernel tracepoints (include/trace/events/kvm.h) where one
exists: ``try_async_get_page``, ``async_pf_not_present``, ``async_pf_ready``,
``async_pf_completed``, ``async_pf_doublefault``; the rest describe host actions that
have no tracepoint (MSR accesses, #GP, halt/wake, the wake-all, queue clearing).

:class:`Event` is the common base (``time``, ``vcpu``, ``kind``).  Other layers (the
machine) subclass it the same way, each class fixing ``kind`` with a ``Literal``, and
build their own discriminated union that includes :data:`KVM_EVENT_TYPES`.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, TypeAdapter

__all__ = [
    "Event",
    "TryAsyncGetPage",
    "AsyncPfNotPresent",
    "AsyncPfReady",
    "AsyncPfCompleted",
    "AsyncPfDoublefault",
    "SyncFault",
    "MsrWrite",
    "MsrRead",
    "Gp",
    "Halt",
    "Wake",
    "WakeupAll",
    "CompletionQueueCleared",
    "VcpuReset",
    "KVM_EVENT_TYPES",
    "KvmEvent",
    "kvm_event_adapter",
]


from ..eventbase import Event, MsrRead as _MsrRead, MsrWrite as _MsrWrite


# ---- the kernel tracepoints -------------------------------------------------------------
class TryAsyncGetPage(Event):
    """kvm_try_async_get_page: the fault may go async (interrupts allowed, not a prefault)."""

    kind: Literal["try_async_get_page"] = "try_async_get_page"
    gva: int
    gfn: int


class AsyncPfNotPresent(Event):
    """kvm_async_pf_not_present: a work was queued for ``gfn`` and its gfn hashed.

    ``delivery``: ``pf`` (reason 1 written, #PF with CR2 = token injected), ``halt`` (the
    "halt vcpu" path) or ``none`` (the reason could not be written: nothing injected, no
    halt; the access faults again and finds the gfn hashed).
    """

    kind: Literal["async_pf_not_present"] = "async_pf_not_present"
    token: int
    gva: int
    gfn: int
    work: int
    slot: int
    delivery: Literal["pf", "halt", "none"]


class AsyncPfReady(Event):
    """kvm_async_pf_ready: a done work was taken off the done list on guest entry.

    ``token`` is what the kernel traces: for a wake-all dummy that is 0 (the work was
    zero-allocated and the tracepoint fires before the token becomes ~0).
    ``delivered_token`` is the CR2 of the injected #PF (0xffffffff for a wake-all), or None
    when nothing was injected (APF disabled, or the reason could not be written).
    """

    kind: Literal["async_pf_ready"] = "async_pf_ready"
    token: int
    gva: int
    gfn: int | None
    work: int
    wakeup_all: bool
    delivered_token: int | None
    slot: int | None  # hash slot freed (None for a wake-all)
    moves: list[tuple[int, int]] = Field(default_factory=list)  # backward-shift (from, to)


class AsyncPfCompleted(Event):
    """kvm_async_pf_completed: the host finished paging ``gfn`` in; the work is now done.

    ``address`` is the host address the kernel traces (the hva); the model's host address of
    a guest page is its guest-physical address, ``gfn << 12``.
    """

    kind: Literal["async_pf_completed"] = "async_pf_completed"
    address: int
    gva: int
    gfn: int
    work: int
    token: int


class AsyncPfDoublefault(Event):
    """kvm_async_pf_doublefault (later kvm_async_pf_repeated_fault): gfn already hashed."""

    kind: Literal["async_pf_doublefault"] = "async_pf_doublefault"
    gva: int
    gfn: int
    slot: int


# ---- host actions without a tracepoint --------------------------------------------------
class SyncFault(Event):
    """The fault is resolved synchronously: the vCPU stalls until the page is in.

    ``reason``: ``cannot_async`` (can_do_async_pf said no: interrupts not allowed or an
    event awaiting (re)injection), ``prefault``, or ``queue_full`` (queued >= 64; the token
    id was still used up).
    """

    kind: Literal["sync_fault"] = "sync_fault"
    gva: int
    gfn: int
    reason: Literal["cannot_async", "prefault", "queue_full"]


class MsrWrite(_MsrWrite):
    """A write of one of the model's MSRs, with what the model made of it."""
    handler: str = "kvm"


class MsrRead(_MsrRead):
    handler: str = "kvm"


class Gp(Event):
    """The model asks the machine to raise #GP(0)."""

    kind: Literal["gp"] = "gp"
    index: int | None = None
    why: str


class Halt(Event):
    """apf.halted set: the vCPU does not run until a completion or an interrupt it can take."""

    kind: Literal["halt"] = "halt"
    reason: Literal["not_present", "doublefault"]
    gfn: int
    gva: int
    token: int | None = None


class Wake(Event):
    """apf.halted cleared.

    ``reason``: ``completion`` (a work reached the done list of a halted vCPU; it is
    runnable again), ``done_pending`` (halted while the done list was already non-empty:
    runnable at once, as kvm_vcpu_block returns immediately), ``page_ready`` (a done work was
    delivered), ``interrupt`` (the machine woke it for an interrupt), ``reset``.
    """

    kind: Literal["wake"] = "wake"
    reason: Literal["completion", "done_pending", "page_ready", "interrupt", "reset"]


class WakeupAll(Event):
    """kvm_async_pf_wakeup_all: a dummy work on ``done`` (only when ``done`` was empty)."""

    kind: Literal["wakeup_all"] = "wakeup_all"
    queued: bool
    work: int | None = None


class CompletionQueueCleared(Event):
    """kvm_clear_async_pf_completion_queue + kvm_async_pf_hash_reset.

    Outstanding works are cancelled, the done list is freed, queued = 0 and the gfn hash is
    emptied: none of these works will ever be delivered.
    """

    kind: Literal["completion_queue_cleared"] = "completion_queue_cleared"
    reason: Literal["msr_disable", "reset"]
    cancelled: list[int] = Field(default_factory=list)  # tokens of works still paging in
    dropped_done: list[int] = Field(default_factory=list)  # tokens of done, undelivered works
    dropped_wakeup_all: int = 0
    queued_before: int = 0


class VcpuReset(Event):
    """kvm_arch_vcpu_reset: msr_val = 0, completion queue cleared, hash reset, halted = 0."""

    kind: Literal["vcpu_reset"] = "vcpu_reset"


KVM_EVENT_TYPES: tuple[type[Event], ...] = (
    TryAsyncGetPage,
    AsyncPfNotPresent,
    AsyncPfReady,
    AsyncPfCompleted,
    AsyncPfDoublefault,
    SyncFault,
    MsrWrite,
    MsrRead,
    Gp,
    Halt,
    Wake,
    WakeupAll,
    CompletionQueueCleared,
    VcpuReset,
)

KvmEvent = Annotated[Union[KVM_EVENT_TYPES], Field(discriminator="kind")]  # type: ignore[valid-type]

#: Validates/parses any KVM event from a dict or JSON (``kvm_event_adapter.validate_json``).
kvm_event_adapter: TypeAdapter[KvmEvent] = TypeAdapter(KvmEvent)
