"""Which Linux the host model behaves like.

A :class:`Profile` is plain data: every place where the kernels apfdbg models differ is one
field, named after what it changes, and the host (``apf.py``) reads only these fields.
Adding ``5.8`` later means one more ``Profile(...)`` plus the interrupt delivery path that
``ready_delivery = ReadyDelivery.INTERRUPT`` selects; nothing here has to be rewritten.
docs/kvm-model.md says where each value comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from .gfn_hash import GOLDEN_RATIO_32, GOLDEN_RATIO_PRIME_32

__all__ = [
    "MSR_KVM_ASYNC_PF_EN",
    "MSR_KVM_ASYNC_PF_INT",
    "MSR_KVM_ASYNC_PF_ACK",
    "KVM_ASYNC_PF_ENABLED",
    "KVM_ASYNC_PF_SEND_ALWAYS",
    "KVM_ASYNC_PF_DELIVERY_AS_PF_VMEXIT",
    "KVM_ASYNC_PF_DELIVERY_AS_INT",
    "KVM_FEATURE_ASYNC_PF",
    "KVM_FEATURE_ASYNC_PF_VMEXIT",
    "KVM_FEATURE_ASYNC_PF_INT",
    "KVM_CAP_ASYNC_PF",
    "KVM_PV_REASON_PAGE_NOT_PRESENT",
    "KVM_PV_REASON_PAGE_READY",
    "WAKE_ALL_TOKEN",
    "ReadyDelivery",
    "Profile",
    "SEED",
    "LINUX_2_6_38",
    "LINUX_6_18",
    "PROFILES",
    "DEFAULT_PROFILE",
    "get_profile",
]

# MSRs (arch/x86/include/asm/kvm_para.h)
MSR_KVM_ASYNC_PF_EN = 0x4B564D02
MSR_KVM_ASYNC_PF_INT = 0x4B564D06  # 5.8
MSR_KVM_ASYNC_PF_ACK = 0x4B564D07  # 5.8

# MSR_KVM_ASYNC_PF_EN bits
KVM_ASYNC_PF_ENABLED = 1 << 0
KVM_ASYNC_PF_SEND_ALWAYS = 1 << 1  # 2.6.38 on
KVM_ASYNC_PF_DELIVERY_AS_PF_VMEXIT = 1 << 2  # 4.x on
KVM_ASYNC_PF_DELIVERY_AS_INT = 1 << 3  # 5.8 on
AREA_GPA_MASK = ~0x3F & ((1 << 64) - 1)

# CPUID 0x40000001 EAX bits and the capability number
KVM_FEATURE_ASYNC_PF = 4
KVM_FEATURE_ASYNC_PF_VMEXIT = 10
KVM_FEATURE_ASYNC_PF_INT = 14
KVM_CAP_ASYNC_PF = 59

# "reason" values the host writes into the shared area (2010 layout)
KVM_PV_REASON_PAGE_NOT_PRESENT = 1
KVM_PV_REASON_PAGE_READY = 2

#: The broadcast token of a wake-all ("wake every waiter on this vCPU").
WAKE_ALL_TOKEN = 0xFFFFFFFF


class ReadyDelivery(str, Enum):
    """How "page ready" reaches the guest."""

    PF = "pf"  # #PF, reason 2, CR2 = token (2010 .. 5.7)
    INTERRUPT = "interrupt"  # vector from MSR_KVM_ASYNC_PF_INT, token in the area, ACK MSR (5.8)


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str

    # -- MSR_KVM_ASYNC_PF_EN write (kvm_pv_enable_async_pf) --
    #: bits whose being set makes the write fail with #GP, nothing stored
    reserved_mask: int
    #: bits that must all be set for APF to count as enabled
    enabled_mask: int = KVM_ASYNC_PF_ENABLED
    #: the SEND_ALWAYS bit, or None where it does not exist (CPL 0 then always halts)
    send_always_bit: int | None = None
    #: bytes of the area checked to be guest RAM when enabling (the gfn_to_hva cache init)
    area_check_len: int = 4
    #: MSRs this profile owns (rdmsr/wrmsr of them go to the model)
    msr_ids: tuple[int, ...] = (MSR_KVM_ASYNC_PF_EN,)
    #: CPUID 0x40000001 EAX bits exposed
    cpuid_features: int = 1 << KVM_FEATURE_ASYNC_PF

    # -- gfn hash (x86.c kvm_async_pf_hash_fn / kvm_async_pf_gfn_slot / del) --
    hash_multiplier: int = GOLDEN_RATIO_PRIME_32
    #: lookup stops on an empty slot (False: the posted Oct 2010 loop, which only stopped on a hit)
    gfn_slot_stops_at_empty: bool = True
    #: deleting an absent gfn is refused (WARN_ON_ONCE, 2020) instead of clearing the slot found
    gfn_del_guarded: bool = False

    # -- tokens (kvm_arch_setup_async_pf) --
    #: never hand out token 0 (modern alloc_apf_token)
    skip_zero_token: bool = False

    # -- page not present (kvm_arch_async_page_not_present) --
    #: a failed write of the reason halts the vCPU (modern) instead of doing nothing (2010)
    put_user_failure_halts: bool = False

    # -- page ready (kvm_check_async_pf_completion / kvm_arch_async_page_present) --
    ready_delivery: ReadyDelivery = ReadyDelivery.PF
    #: completions handled per guest entry; None = loop while possible (2.6.39 on)
    completions_per_entry: int | None = 1
    #: completions are checked only when asked (KVM_REQ_APF_READY: a work done on an empty done
    #: list, a wake-all, the APIC enabled; and the ACK write), not before every entry
    completions_on_request: bool = False
    #: "page ready" only for works whose "not present" was injected (2013 on)
    ready_needs_not_present_injected: bool = False

    #: free-form notes shown by the UI
    notes: tuple[str, ...] = field(default=())

    # ---- decoding helpers ----
    def is_enabled(self, msr_val: int) -> bool:
        return (msr_val & self.enabled_mask) == self.enabled_mask

    def reserved_bits(self, data: int) -> int:
        return data & self.reserved_mask

    def send_always(self, msr_val: int) -> bool:
        return self.send_always_bit is not None and bool(msr_val & self.send_always_bit)

    def decode_msr(self, msr_val: int) -> dict[str, object]:
        """The fields of MSR_KVM_ASYNC_PF_EN as this profile reads them."""
        out: dict[str, object] = {
            "raw": msr_val,
            "gpa": msr_val & AREA_GPA_MASK,
            "enabled": self.is_enabled(msr_val),
            "enable_bit": bool(msr_val & KVM_ASYNC_PF_ENABLED),
        }
        if self.send_always_bit is not None:
            out["send_always"] = bool(msr_val & self.send_always_bit)
        if self.ready_delivery is ReadyDelivery.INTERRUPT:
            out["delivery_as_pf_vmexit"] = bool(msr_val & KVM_ASYNC_PF_DELIVERY_AS_PF_VMEXIT)
            out["delivery_as_int"] = bool(msr_val & KVM_ASYNC_PF_DELIVERY_AS_INT)
        out["reserved"] = msr_val & self.reserved_mask
        return out


SEED = Profile(
    name="seed",
    description=(
        "KVM async PF as in Gleb Natapov's series of Oct 2010 at PATCH 05/11 'Add PV MSR to "
        "enable asynchronous page faults delivery' with the host patches around it (01, 02, "
        "05, 08 of 11; before 10/11 and 11/11): bits 5:1 reserved, CPL 0 always halts"
    ),
    reserved_mask=0x3E,
    send_always_bit=None,
    gfn_slot_stops_at_empty=False,
)

LINUX_2_6_38 = Profile(
    name="2.6.38",
    description=(
        "the series as merged in Linux 2.6.38 (with 10/11 and 11/11): bit 1 SEND_ALWAYS, "
        "bits 5:2 reserved, CPL 0 halts unless SEND_ALWAYS"
    ),
    reserved_mask=0x3C,
    send_always_bit=KVM_ASYNC_PF_SEND_ALWAYS,
    gfn_slot_stops_at_empty=False,
)

LINUX_6_18 = Profile(
    name="6.18",
    description=(
        "today's protocol (interrupt-based page-ready, 5.8 on) as read in x86.c and async_pf.c and "
        "checked on Linux 6.18's KVM: EN bits 5:4 reserved, enabled = ENABLED and DELIVERY_AS_INT, "
        "flags/token area, page-ready as an interrupt on the INT vector while the token slot is "
        "free, ACK; token 0 never used, hash lookup stops at an empty slot, guarded delete"
    ),
    reserved_mask=0x30,
    enabled_mask=KVM_ASYNC_PF_ENABLED | KVM_ASYNC_PF_DELIVERY_AS_INT,
    send_always_bit=KVM_ASYNC_PF_SEND_ALWAYS,
    area_check_len=8,
    msr_ids=(MSR_KVM_ASYNC_PF_EN, MSR_KVM_ASYNC_PF_INT, MSR_KVM_ASYNC_PF_ACK),
    cpuid_features=(1 << KVM_FEATURE_ASYNC_PF) | (1 << KVM_FEATURE_ASYNC_PF_VMEXIT)
    | (1 << KVM_FEATURE_ASYNC_PF_INT),
    hash_multiplier=GOLDEN_RATIO_32,
    gfn_slot_stops_at_empty=True,
    gfn_del_guarded=True,
    skip_zero_token=True,
    put_user_failure_halts=True,
    ready_delivery=ReadyDelivery.INTERRUPT,
    completions_per_entry=None,
    completions_on_request=True,
    ready_needs_not_present_injected=True,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (SEED, LINUX_2_6_38, LINUX_6_18)}
DEFAULT_PROFILE = SEED


def get_profile(name: str | Profile | None = None) -> Profile:
    """A profile by name (``seed``, ``2.6.38``, ``6.18``); None gives the default (``seed``)."""
    if name is None:
        return DEFAULT_PROFILE
    if isinstance(name, Profile):
        return name
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown KVM profile {name!r} (known: {known})") from None
