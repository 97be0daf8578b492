"""Today's protocol in the host model (profile `6.18`): interrupt page-ready, the flags/token area,
MSR_KVM_ASYNC_PF_INT and _ACK, with fake ports. Each test names the kernel function its rule comes
from (arch/x86/kvm/x86.c unless said; docs/kvm-model.md). The same rules that need no page-out run
on real KVM and on apfdbg through guests/apf/modern_msrs.S (tests/apf/test_modern_protocol_on_kvm.py)."""
from __future__ import annotations

import pytest

from apfdbg.kvm import MSR_KVM_ASYNC_PF_EN
from apfdbg.kvm.apf import Outcome
from apfdbg.kvm.profiles import MSR_KVM_ASYNC_PF_ACK, MSR_KVM_ASYNC_PF_INT, get_profile

from kvm_fakes import AREA, Rig

EN, SEND_ALWAYS, VMEXIT, INT = 1, 2, 4, 8
VEC = 0xEC
FLAGS, TOKEN = AREA, AREA + 4


def modern(**kw) -> Rig:
    r = Rig("6.18", **kw)
    assert r.host.wrmsr(0, MSR_KVM_ASYNC_PF_INT, VEC)
    return r


def enable(r: Rig, bits: int = EN | INT) -> bool:
    return r.host.wrmsr(0, MSR_KVM_ASYNC_PF_EN, AREA | bits)


def take(r: Rig) -> int:
    """The guest's page-ready handler: read the token, free the slot, ACK."""
    token = r.mem.read_u32(TOKEN)
    r.mem.words[TOKEN] = 0
    assert r.host.wrmsr(0, MSR_KVM_ASYNC_PF_ACK, 1)
    return token


def test_cpuid_offers_async_pf_int_and_vmexit():
    """kvm_set_cpu_caps (cpuid.c): KVM_FEATURE_ASYNC_PF, _VMEXIT, _INT (bits 4, 10, 14)."""
    assert Rig("6.18").host.cpuid_features() == (1 << 4) | (1 << 10) | (1 << 14)


def test_int_msr_reserved_bits_and_read_back():
    """kvm_pv_enable_async_pf_int: data >> 8 -> #GP, nothing stored; else the vector."""
    r = Rig("6.18")
    assert r.host.rdmsr(0, MSR_KVM_ASYNC_PF_INT) == 0
    assert not r.host.wrmsr(0, MSR_KVM_ASYNC_PF_INT, 0x1EC)
    assert r.host.rdmsr(0, MSR_KVM_ASYNC_PF_INT) == 0
    assert r.host.wrmsr(0, MSR_KVM_ASYNC_PF_INT, VEC)
    assert r.host.rdmsr(0, MSR_KVM_ASYNC_PF_INT) == VEC
    assert r.st().snapshot().int_vector == VEC


def test_en_reserved_bits_5_4_and_enabled_needs_delivery_as_int():
    """kvm_pv_enable_async_pf: bits 5:4 -> #GP, nothing stored; kvm_pv_async_pf_enabled:
    ENABLED and DELIVERY_AS_INT; ENABLED alone is stored, clears the queue, queues no wake-all."""
    r = modern()
    for bit in (0x10, 0x20):
        assert not enable(r, EN | INT | bit)
    assert r.host.rdmsr(0, MSR_KVM_ASYNC_PF_EN) == 0
    assert enable(r, EN)
    assert r.host.rdmsr(0, MSR_KVM_ASYNC_PF_EN) == AREA | EN and not r.st().enabled
    assert not r.st().done and r.kinds("completion_queue_cleared")
    assert enable(r, EN | INT | SEND_ALWAYS | VMEXIT) and r.st().enabled


def test_an_area_outside_ram_is_gp_after_the_store():
    """kvm_pv_enable_async_pf: the hva cache init (8 bytes) fails after msr_en_val is stored."""
    r = modern()
    assert not r.host.wrmsr(0, MSR_KVM_ASYNC_PF_EN, r.mem.size | EN | INT)
    assert r.host.rdmsr(0, MSR_KVM_ASYNC_PF_EN) == r.mem.size | EN | INT
    assert not r.st().done, "no wake-all"


def test_wake_all_is_an_interrupt_with_token_all_ones_in_the_token_slot():
    """kvm_async_pf_wakeup_all + kvm_arch_async_page_present: token ~0 at offset 4, flags left
    alone, pageready_pending, a fixed interrupt on the INT vector; ACK clears pending."""
    r = modern()
    r.mem.words[FLAGS] = 0x5A5A
    assert enable(r)
    assert r.v0.interrupts == []            # checked at the next entry (KVM_REQ_APF_READY)
    r.host.before_entry(0)
    assert r.v0.interrupts == [VEC] and r.mem.read_u32(TOKEN) == 0xFFFFFFFF
    assert r.mem.read_u32(FLAGS) == 0x5A5A and r.v0.injected == []
    assert r.st().pageready_pending
    assert take(r) == 0xFFFFFFFF and not r.st().pageready_pending
    assert r.host.rdmsr(0, MSR_KVM_ASYNC_PF_ACK) == 0


def _drained() -> Rig:
    r = modern()
    assert enable(r)
    r.host.before_entry(0)
    take(r)
    r.v0.interrupts.clear()
    return r


def test_not_present_writes_flags_and_injects_pf_with_the_token():
    """kvm_arch_async_page_not_present: apf_put_user_notpresent (flags = 1 at offset 0), #PF with
    CR2 = token and error code 0; alloc_apf_token never hands out 0."""
    r = _drained()
    assert r.host.on_swapped_fault(0, 0x300, 0x300000) is Outcome.ASYNC
    (cr2, ec), = r.v0.injected
    assert ec == 0 and cr2 != 0 and cr2 & 0xFFF == 0
    assert r.mem.read_u32(FLAGS) == 1


def test_page_ready_waits_for_the_token_slot_and_the_ack_delivers_it():
    """apf_pageready_slot_free / kvm_arch_can_dequeue_async_page_present: not while the token word
    is not 0; freeing it alone does nothing (no request); the ACK write checks at once."""
    r = _drained()
    r.host.on_swapped_fault(0, 0x300, 0x300000)
    (token, _), = r.v0.injected
    r.v0.pending.clear()
    r.mem.words[TOKEN] = 0x1234                    # the slot is taken
    work = r.host.find_work(token)
    r.pager.finish(work)
    r.host.before_entry(0)
    assert r.v0.interrupts == [] and r.st().done
    r.mem.words[TOKEN] = 0                         # freed, without ACK
    r.host.before_entry(0)
    assert r.v0.interrupts == []
    assert r.host.wrmsr(0, MSR_KVM_ASYNC_PF_ACK, 1)
    assert r.v0.interrupts == [VEC] and r.mem.read_u32(TOKEN) == token and not r.st().done


def test_page_ready_waits_for_the_apic_and_enabling_it_checks():
    """kvm_lapic_enabled in kvm_arch_can_dequeue_async_page_present; apic_set_spiv (lapic.c)
    makes the check request when the guest turns its APIC on."""
    r = _drained()
    r.host.on_swapped_fault(0, 0x300, 0x300000)
    (token, _), = r.v0.injected
    r.v0.apic_on = False
    r.pager.finish(r.host.find_work(token))
    r.host.before_entry(0)
    assert r.v0.interrupts == []
    r.v0.apic_on = True
    r.host.on_apic_enabled(0)
    r.host.before_entry(0)
    assert r.v0.interrupts == [VEC] and r.mem.read_u32(TOKEN) == token


def test_a_not_present_that_halted_gets_no_page_ready():
    """kvm_arch_async_page_present: only works whose not-present was injected (or wake-alls) are
    announced; the halted vCPU runs again all the same."""
    r = _drained()
    r.v0.set_cpl(0)                                 # CPL 0 without SEND_ALWAYS: halt
    assert r.host.on_swapped_fault(0, 0x300, 0x300000) is Outcome.HALT
    (work,) = r.host.works(0)
    r.pager.finish(work)
    r.host.before_entry(0)
    assert r.v0.interrupts == [] and not r.st().done and not r.st().halted
    assert r.mem.read_u32(TOKEN) == 0


def test_the_completion_loop_stops_at_a_taken_slot():
    """kvm_check_async_pf_completion loops while it can dequeue: after one page-ready the slot is
    taken, so the second waits for the guest's ACK."""
    r = _drained()
    tokens = []
    for gfn in (0x300, 0x301):
        r.host.on_swapped_fault(0, gfn, gfn << 12)
        tokens.append(r.v0.injected[-1][0])
        r.v0.pending.clear()
    for t in tokens:
        r.pager.finish(r.host.find_work(t))
    r.host.before_entry(0)
    assert r.v0.interrupts == [VEC] and len(r.st().done) == 1
    assert take(r) == tokens[0]
    assert r.v0.interrupts == [VEC, VEC] and r.mem.read_u32(TOKEN) == tokens[1]


def test_the_2010_profiles_keep_their_msrs_only():
    """seed and 2.6.38 own MSR_KVM_ASYNC_PF_EN only; today's profile owns INT and ACK too."""
    assert get_profile("2.6.38").msr_ids == (MSR_KVM_ASYNC_PF_EN,)
    assert set(get_profile("6.18").msr_ids) == {MSR_KVM_ASYNC_PF_EN, MSR_KVM_ASYNC_PF_INT,
                                               MSR_KVM_ASYNC_PF_ACK}


@pytest.mark.parametrize("profile", ["seed", "2.6.38"])
def test_delivery_as_int_is_reserved_in_2010(profile):
    r = Rig(profile)
    assert not r.host.wrmsr(0, MSR_KVM_ASYNC_PF_EN, AREA | EN | INT)


def test_the_msr_panel_decodes_the_delivery_bits_of_today():
    """The MSR panel's EN decoding: today's profile shows INT (needed for "enabled") and VMX; the
    2010 profiles keep their fields."""
    from apfdbg.ui.fmt import apf_text
    assert apf_text(AREA | EN | INT, get_profile("6.18")) == f"GPA={AREA:#x} EN=1 SA=0 INT=1 VMX=0 rsvd=0x0"
    assert apf_text(AREA | EN, get_profile("2.6.38")) == f"GPA={AREA:#x} EN=1 SA=0 rsvd=0x0"
