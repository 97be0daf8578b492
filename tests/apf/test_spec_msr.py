"""Spec "MSR write semantics" 1-6, reads, vCPU reset and CPUID, each driven by the apf_script guest
(guests/apf/apf_script.S) on the machine with the KVM host model attached.

Every test checks the guest's view (what wrmsr/rdmsr/cpuid and its #PF handler saw, in guest RAM)
and the host's (typed events, the model's per-vCPU state).
"""
from __future__ import annotations

import pytest

from apf_rig import (EN, PF_SKIP, PROFILES, SEND_ALWAYS, WAKE_ALL, DATA_GFN, FixedLatency,
                     ManualLatency, Rig)

RAM_END = 16 << 20  # the rig's 16 MiB of guest RAM: the first GPA beyond it

RESERVED = {"seed": [1, 2, 3, 4, 5], "2.6.38": [2, 3, 4, 5]}


# ---- CPUID ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_cpuid_advertises_kvm_async_pf(profile):
    """CPUID 0x40000000 = max leaf + "KVMKVMKVM\\0\\0\\0"; 0x40000001 EAX bit 4 = KVM_FEATURE_ASYNC_PF."""
    r = Rig(profile)
    sig, feat = r.cpuid(0x40000000), r.cpuid(0x40000001)
    r.end()
    r.run()
    eax, ebx, ecx, edx = r.results(sig)
    assert eax == 0x40000001
    assert (ebx.to_bytes(4, "little") + ecx.to_bytes(4, "little") + edx.to_bytes(4, "little")
            == b"KVMKVMKVM\0\0\0")
    assert r.results(feat)[0] & (1 << 4)
    assert r.results(feat)[0] == r.kvm.cpuid_features() == 1 << 4
    assert [e.eax for e in r.ev("cpuid") if e.leaf == 0x40000001] == [1 << 4]


# ---- rule 1: reserved bits -> #GP, nothing stored ------------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_msr_rule1_reserved_bits_gp_and_nothing_stored(profile):
    r = Rig(profile)
    r.enable()
    good = r.area | EN
    probes = []
    for bit in RESERVED[profile]:
        # with the enable bit set, and with it clear (a "disable" with reserved bits fails too)
        for value in (good | (1 << bit), r.area | (1 << bit)):
            probes.append((value, r.wrmsr(value), r.rdmsr()))
    r.end()
    r.run()
    for value, w, rd in probes:
        assert r.results(w)[:2] == (1, 0), f"{value:#x}: the guest's #GP handler saw #GP(0)"
        assert r.results(rd)[:2] == (good, 0), f"{value:#x}: rdmsr returns the old value"
    assert r.state().msr_val == good and r.state().enabled
    gps = [e for e in r.kvm_msr_writes() if e.result == "gp"]
    assert [e.value for e in gps] == [v for v, _, _ in probes]
    assert all("reserved" in e.reason for e in gps)
    assert len(r.ev("gp")) == len(probes)
    assert not r.ev("completion_queue_cleared"), "a failed disable clears nothing"
    assert len(r.ev("wakeup_all")) == 1, "only the first, good enable queued a wake-all"


@pytest.mark.parametrize("profile", PROFILES)
def test_msr_send_always_bit_2638_accepted_seed_rejects(profile):
    """Bit 1: reserved in the seed patch (#GP), SEND_ALWAYS in 2.6.38."""
    r = Rig(profile)
    r.enable()
    w = r.wrmsr(r.area | EN | SEND_ALWAYS)
    rd = r.rdmsr()
    r.end()
    r.run()
    if profile == "seed":
        assert r.results(w)[0] == 1
        assert r.r0(rd) == r.area | EN
        assert r.state().msr_val == r.area | EN
    else:
        assert r.results(w)[0] == 0
        assert r.r0(rd) == r.area | EN | SEND_ALWAYS
        assert r.snap().msr["send_always"] is True and r.state().send_user_only is False


# ---- rule 2 and reads: msr_val = data, reads return it ------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_msr_reads_return_the_value_written(profile):
    r = Rig(profile)
    values = [r.area | EN, r.area, 0, (r.area + 0x40) | EN, r.area | EN]
    if profile == "2.6.38":
        values.insert(1, r.area | EN | SEND_ALWAYS)
    pairs = [(v, r.wrmsr(v), r.rdmsr()) for v in values]
    r.end()
    r.run()
    for v, w, rd in pairs:
        assert r.results(w)[0] == 0, hex(v)
        assert r.results(rd)[:2] == (v, 0), hex(v)
    assert [e.value for e in r.ev("msr_read") if e.handler == "kvm"] == values


# ---- rules 2 + 4: stored before the GPA check ---------------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_msr_rule4_gpa_beyond_ram_gp_but_value_stored(profile):
    """An enable whose area is not guest RAM #GPs, yet rdmsr returns it (stored first); it
    queues no wake-all (step 6 is not reached).  A *disable* with such a GPA succeeds: step 3
    returns before the GPA is checked."""
    r = Rig(profile)
    r.enable()
    bad = RAM_END | EN
    w1, rd1 = r.wrmsr(bad), r.rdmsr()
    s1 = r.spin(20_000, if_=True)               # a wake-all would be delivered here
    w2, rd2 = r.wrmsr(RAM_END), r.rdmsr()         # enable bit clear: no GPA check
    w3 = r.wrmsr(r.area | EN)
    r.wait_ready(2)
    r.end()
    r.run()
    assert r.results(w1)[:2] == (1, 0)
    assert r.r0(rd1) == bad
    assert r.results(w2)[0] == 0 and r.r0(rd2) == RAM_END
    assert r.results(w3)[0] == 0
    assert r.ready_tokens() == [WAKE_ALL, WAKE_ALL], "no wake-all from the failed enable"
    writes = r.kvm_msr_writes()
    assert [(e.value, e.result) for e in writes] == [
        (r.area | EN, "ok"), (bad, "gp"), (RAM_END, "ok"), (r.area | EN, "ok")]
    assert "not in guest RAM" in writes[1].reason
    assert [e.queued for e in r.ev("wakeup_all")] == [True, True]
    t0, t1 = r.results(s1)[:2]
    assert not [e for e in r.ev("async_pf_ready") if t0 <= e.time <= t1]


@pytest.mark.parametrize("profile", PROFILES)
def test_msr_half_enabled_after_gpa_gp_faults_queue_silently(profile):
    """After the #GP'd enable msr_val reads enabled (rule 2 before rule 4).  A user fault then
    queues a work but the reason cannot be written: no #PF, no halt (kvm-model.md "half
    enabled"); the retried access is a doublefault and halts until the page is in; the
    page-ready is not injected either.  The guest sees nothing and its data is intact."""
    r = Rig(profile, latency=FixedLatency(instructions=30_000))
    gfn = DATA_GFN
    data = r.page(gfn)
    r.enable()
    r.wrmsr(RAM_END | EN)
    t = r.touch(gfn << 12)
    r.end()
    r.run()
    assert r.r0(t) == data
    assert r.ready_tokens() == [WAKE_ALL] and not r.not_presents()
    (np,) = r.ev("async_pf_not_present")
    assert np.delivery == "none"
    assert [e.reason for e in r.ev("halt")] == ["doublefault"]
    assert len(r.ev("async_pf_doublefault")) == 1
    (rdy,) = [e for e in r.ev("async_pf_ready") if not e.wakeup_all]
    assert rdy.delivered_token is None


# ---- rule 3: disable clears everything ------------------------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_msr_rule3_disable_drops_outstanding_and_done_works(profile):
    """Two user faults are outstanding (the guest's task skips them); the host finishes one
    page-in, then the guest disables APF with IF = 0: the paging-in work is cancelled, the done
    one dropped, queued = 0, the hash emptied.  Neither is ever delivered: after re-enabling, the
    guest sees only the new wake-all, even once the second page-in finishes late."""
    r = Rig(profile, latency=ManualLatency(kind="manual"), pf_mode=PF_SKIP)
    ga, gb = DATA_GFN, DATA_GFN + 1
    da, db = r.page(ga), r.page(gb)
    r.addr_list([ga << 12, gb << 12])
    r.enable()
    r.touchlist(0, 2)
    spin = r.spin(30_000)                         # IF = 0: nothing can be delivered
    dis, rd = r.wrmsr(0), r.rdmsr()
    r.wrmsr(r.area | EN)
    r.wait_ready(2)
    r.mark(1)                                     # the cancelled page-in of B finishes now
    r.spin(30_000, if_=True)
    r.touchlist(0, 2)
    r.end()

    snaps = {}
    tokens = {}

    def on_np(e):
        tokens[e.gfn] = e.token
        if len(tokens) == 2:  # A's page-in finishes while the guest spins with IF = 0
            r.at(1_000, lambda: r.kvm.complete(r.kvm.find_work(tokens[ga], r.vcpu)))
    r.on("async_pf_not_present", on_np)
    r.on("msr_write", lambda e: e.handler == "kvm" and e.value == 0
         and snaps.setdefault("after_disable", r.snap()))
    r.on_mark(1, lambda: r.m.page_in(gb))
    r.run()

    assert r.results(dis)[0] == 0 and r.r0(rd) == 0
    assert r.vals(0, 2) == [da, db]               # the second pass read the data
    assert [e.token for e in r.not_presents()] == [tokens[ga], tokens[gb]]
    assert r.ready_tokens() == [WAKE_ALL, WAKE_ALL], "the dropped works are never delivered"
    (cl,) = r.ev("completion_queue_cleared")
    assert cl.reason == "msr_disable"
    assert cl.cancelled == [tokens[gb]] and cl.dropped_done == [tokens[ga]]
    assert cl.queued_before == 2
    s = snaps["after_disable"]
    assert s.queued == 0 and s.queue == [] and s.done == [] and s.gfns == [None] * 64
    assert s.msr_val == 0
    completed = r.ev("async_pf_completed")
    assert [e.gfn for e in completed] == [ga], "B's late page-in completes nothing"
    assert [e.wakeup_all for e in r.ev("async_pf_ready")] == [True, True]
    assert r.results(spin)[1] < cl.time


# ---- rule 6: the enable's wake-all, only when done is empty --------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_msr_rule6_enable_queues_wake_all(profile):
    """After enabling, once interrupts are on, the guest gets #PF reason 2 with CR2 = 0xffffffff."""
    r = Rig(profile)
    w = r.enable(drain=False)
    r.wait_ready(1)
    r.end()
    r.run()
    assert r.r0(w) == 0
    (rdy,) = r.readies()
    assert rdy.cr2 == WAKE_ALL and rdy.err == 0 and rdy.cs == 0x08
    assert r.reason_word() == 0, "the guest read and reset the reason"
    (wa,) = r.ev("wakeup_all")
    assert wa.queued
    (ev,) = r.ev("async_pf_ready")
    assert ev.wakeup_all and ev.delivered_token == WAKE_ALL and ev.slot is None
    assert r.state().queued == 0


@pytest.mark.parametrize("profile", PROFILES)
def test_msr_rule6_enable_with_done_work_queues_no_wake_all(profile):
    """A user fault's page-in completes while the guest has IF = 0 (done is non-empty); the
    guest enables again: no wake-all is queued, and only the page's own ready arrives."""
    r = Rig(profile, latency=FixedLatency(instructions=5_000), pf_mode=PF_SKIP)
    gfn = DATA_GFN
    r.page(gfn)
    r.enable()
    r.touch(gfn << 12)
    r.spin(20_000)
    again = r.wrmsr(r.area | EN)
    r.wait_ready(2)
    r.spin(20_000, if_=True)
    r.end()
    snaps = []
    r.on("wakeup_all", lambda e: snaps.append(r.snap()))
    r.run()
    (np,) = r.not_presents()
    assert r.results(again)[0] == 0
    assert r.ready_tokens() == [WAKE_ALL, np.token]
    assert [e.queued for e in r.ev("wakeup_all")] == [True, False]
    assert [w.gfn for w in snaps[1].done] == [gfn] and snaps[1].queued == 1


# ---- rule 5: send_user_only (2.6.38) ----------------------------------------------------------------
def test_msr_rule5_send_user_only_set_only_by_a_good_enable():
    r = Rig("2.6.38")
    r.wrmsr(r.area | EN | SEND_ALWAYS)
    r.wrmsr(r.area | EN)
    r.wrmsr(r.area | EN | SEND_ALWAYS)
    r.wrmsr(RAM_END | EN)             # #GP at the GPA check: send_user_only keeps its value
    r.wrmsr(0)                        # a disable does not touch it either
    r.end()
    seen = []
    r.on("msr_write", lambda e: e.handler == "kvm"
         and seen.append((e.value, e.result, r.state().send_user_only)))
    r.run()
    assert seen == [
        (r.area | 3, "ok", False), (r.area | 1, "ok", True), (r.area | 3, "ok", False),
        (RAM_END | 1, "gp", False), (0, "ok", False)]


# ---- vCPU reset ------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_vcpu_reset_zeroes_msr_and_drops_outstanding_work(profile):
    """The host command reset_vcpu: msr_val = 0 (the guest's rdmsr says so), the outstanding
    work is cancelled and never delivered, the hash is empty; the token counter survives."""
    r = Rig(profile, latency=FixedLatency(instructions=20_000), pf_mode=PF_SKIP)
    gfn = DATA_GFN
    data = r.page(gfn)
    r.enable()
    r.touch(gfn << 12)
    r.mark(7)
    rd = r.rdmsr()
    r.spin(60_000, if_=True)          # the page-in finishes in here: nothing may arrive
    t = r.touch(gfn << 12)
    r.end()
    snaps = []

    def reset():
        r.kvm.reset_vcpu(r.vcpu)
        snaps.append(r.snap())
    r.on_mark(7, reset)
    r.run()
    assert r.r0(rd) == 0
    assert r.r0(t) == data
    (np,) = r.not_presents()
    assert r.ready_tokens() == [WAKE_ALL]
    (cl,) = r.ev("completion_queue_cleared")
    assert cl.reason == "reset" and cl.cancelled == [np.token]
    assert len(r.ev("vcpu_reset")) == 1
    s = snaps[0]
    assert s.msr_val == 0 and not s.enabled and s.queued == 0 and s.gfns == [None] * 64
    assert s.id == 1 and not s.halted
    assert not r.ev("async_pf_completed"), "the cancelled page-in completes nothing"


@pytest.mark.parametrize("profile", PROFILES)
def test_vcpu_reset_clears_halted(profile):
    """A CPL 0 fault halts the vCPU (send_user_only / seed); reset_vcpu wakes it.  It retries,
    and with APF now disabled the host takes the halt path again ("non-PV guests get this
    too") until the page is in; no #PF reaches the guest."""
    r = Rig(profile, latency=ManualLatency(kind="manual"))
    gfn = DATA_GFN
    data = r.page(gfn)
    r.enable()
    t = r.touch(gfn << 12, user=False)
    r.end()
    halts = []

    def on_halt(e):
        halts.append(e)
        if len(halts) == 1:
            r.at(5_000, lambda: r.kvm.reset_vcpu(r.vcpu))
        else:
            r.at(5_000, lambda: r.kvm.complete_all())
    r.on("halt", on_halt)
    r.run()
    assert r.r0(t) == data
    assert [h.reason for h in halts] == ["not_present", "not_present"]
    assert [e.reason for e in r.ev("wake")] == ["reset", "completion"]
    assert [e.delivery for e in r.ev("async_pf_not_present")] == ["halt", "halt"]
    assert r.ready_tokens() == [WAKE_ALL] and not r.not_presents()
    rdy = [e for e in r.ev("async_pf_ready") if not e.wakeup_all]
    assert len(rdy) == 1 and rdy[0].delivered_token is None   # APF disabled: nothing injected
    assert r.state().msr_val == 0 and not r.state().halted
