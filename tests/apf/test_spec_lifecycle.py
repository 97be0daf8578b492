"""Spec "Lifecycle" 1-8 and the token format, each driven by the apf_script guest
(guests/apf/apf_script.S) on the machine with the KVM host model attached.

The guest's #PF handler logs every async PF it takes (reason, CR2, error code, the interrupted
CS:RIP, its TSC) and, in its default PF_SLEEP mode, puts the faulting "task" to sleep on the token
with `sti; hlt` until the matching page-ready arrives, as 2.6.38's kvm_async_pf_task_wait does
for a task that cannot schedule.
"""
from __future__ import annotations

import pytest

from apf_rig import (DATA_GFN, EN, KERNEL_CS, PF_IGNORE, PF_SKIP, PROFILES, SEND_ALWAYS,
                     TOUCH_MARK, USER_CS, WAKE_ALL, FixedLatency, ManualLatency, Rig)

PF = 14
TIMER_VEC = 0x40


def kinds(r: Rig, *names: str) -> list[str]:
    return [e.kind for e in r.ev(*names)]


# ---- the main path: not present, then page ready -------------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_lifecycle_user_fault_not_present_then_page_ready(profile):
    """CPL 3, IF = 1, APF enabled: #PF error code 0, CR2 = token, reason 1 (read and zeroed by
    the guest); the task sleeps; when the page-in completes, #PF reason 2 with the same token;
    the retried access succeeds with the data intact."""
    latency = 20_000
    r = Rig(profile, latency=FixedLatency(instructions=latency))
    gfn = DATA_GFN
    data = r.page(gfn)
    r.enable()
    t = r.touch(gfn << 12)
    r.end()
    r.run()

    # the guest's view
    assert r.r0(t) == data
    wa, np, rdy = r.pf_log()
    assert (wa.reason, wa.cr2) == (2, WAKE_ALL)
    assert (np.reason, np.err, np.cs, np.rip) == (1, 0, USER_CS, r.sym("touch_load"))
    assert np.cr2 == (0 << 12) | 0  # id 0, vCPU 0
    assert (rdy.reason, rdy.cr2, rdy.err) == (2, np.cr2, 0)
    assert rdy.cs == KERNEL_CS, "it arrived while the task slept in the handler"
    assert r.r64("sleeps") >= 1
    assert r.reason_word() == 0, "the guest zeroed the reason each time"
    # the host's view
    seq = [e for e in r.ev("swapped_fault", "try_async_get_page", "async_pf_not_present", "inject",
                           "async_pf_completed", "async_pf_ready", "sync_fault", "halt")
           if e.kind != "inject" or e.vector == PF]
    assert [e.kind for e in seq] == [
        "async_pf_ready", "inject",                                   # the enable's wake-all
        "swapped_fault", "try_async_get_page", "async_pf_not_present", "inject",
        "async_pf_completed", "async_pf_ready", "inject"]
    (npe,) = r.ev("async_pf_not_present")
    assert (npe.token, npe.gfn, npe.gva, npe.delivery) == (np.cr2, gfn, gfn << 12, "pf")
    (comp,) = r.ev("async_pf_completed")
    assert comp.time - npe.time == latency and comp.token == np.cr2
    rdye = [e for e in r.ev("async_pf_ready") if not e.wakeup_all]
    assert [(e.token, e.delivered_token, e.gfn) for e in rdye] == [(np.cr2, np.cr2, gfn)]
    injected = [e for e in r.ev("inject") if e.vector == PF and e.source == "host"]
    assert [(e.cr2, e.error_code) for e in injected] == [(WAKE_ALL, 0), (np.cr2, 0), (np.cr2, 0)]
    assert len(r.ev("swapped_fault")) == 1, "the retry after page-ready did not fault"
    s = r.snap()
    assert s.queued == 0 and s.gfns == [None] * 64 and s.id == 1 and not s.halted


# ---- step 2: async only with interrupts allowed -------------------------------------------------
@pytest.mark.parametrize("user", [True, False], ids=["cpl3", "cpl0"])
@pytest.mark.parametrize("profile", PROFILES)
def test_lifecycle_if0_fault_is_synchronous(profile, user):
    """IF = 0: no async PF.  The vCPU stalls until the page is in; the guest sees no #PF."""
    latency = 20_000
    r = Rig(profile, latency=FixedLatency(instructions=latency))
    gfn = DATA_GFN
    data = r.page(gfn)
    r.enable(EN | (SEND_ALWAYS if profile == "2.6.38" else 0))
    t = r.touch(gfn << 12, user=user, if_=False)
    r.end()
    r.run()
    assert r.r0(t) == data
    assert r.ready_tokens() == [WAKE_ALL] and not r.not_presents()
    (sf,) = r.ev("sync_fault")
    assert (sf.reason, sf.gfn) == ("cannot_async", gfn)
    (st,), (un,) = r.ev("stall"), r.ev("unstall")
    assert un.time - st.time == latency
    assert not r.ev("try_async_get_page", "async_pf_not_present", "halt")
    assert r.state().queued == 0 and r.state().id == 0


@pytest.mark.parametrize("profile", PROFILES)
def test_lifecycle_sti_shadow_fault_is_synchronous(profile):
    """The access right after `sti` sits in the interrupt shadow: interrupts are not allowed
    yet, so the fault is synchronous even though IF = 1."""
    r = Rig(profile)
    gfn = DATA_GFN
    data = r.page(gfn)
    r.enable(EN | (SEND_ALWAYS if profile == "2.6.38" else 0))
    t = r.touch(gfn << 12, user=False, shadow=True)
    r.end()
    r.run()
    assert r.r0(t) == data
    (sw,) = r.ev("swapped_fault")
    assert sw.rip == r.sym("shadow_load")
    assert [e.reason for e in r.ev("sync_fault")] == ["cannot_async"]
    assert not r.ev("async_pf_not_present", "halt") and not r.not_presents()


# ---- step 4: CPL 0 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("profile,bits", [("seed", EN), ("2.6.38", EN)],
                         ids=["seed", "2.6.38-send_user_only"])
def test_lifecycle_cpl0_fault_halts_until_completion(profile, bits):
    """CPL 0 (seed always; 2.6.38 without SEND_ALWAYS): no not-present #PF; the vCPU halts,
    the completion wakes it, and the 2010 host still sends the page-ready (for a token the guest
    never saw); then the access is retried and succeeds."""
    latency = 20_000
    r = Rig(profile, latency=FixedLatency(instructions=latency))
    gfn = DATA_GFN
    data = r.page(gfn)
    r.enable(bits)
    t = r.touch(gfn << 12, user=False)
    r.end()
    r.run()
    assert r.r0(t) == data
    assert not r.not_presents()
    _wake_all, rdy = r.readies()
    (npe,) = r.ev("async_pf_not_present")
    assert npe.delivery == "halt"
    assert (rdy.cr2, rdy.cs, rdy.rip) == (npe.token, KERNEL_CS, r.sym("touch_load"))
    (h,) = r.ev("halt")
    assert (h.reason, h.gfn, h.token) == ("not_present", gfn, npe.token)
    (w,) = r.ev("wake")
    assert w.reason == "completion" and w.time - h.time == latency
    # nothing ran on the vCPU while it was halted
    assert not [e for e in r.events if e.vcpu == r.vcpu and h.time < e.time < w.time]
    (rd,) = [e for e in r.ev("async_pf_ready") if not e.wakeup_all]
    assert rd.delivered_token == npe.token and rd.time == w.time
    assert not r.ev("stall")


def test_lifecycle_cpl0_fault_2638_send_always_is_async():
    """2.6.38 with SEND_ALWAYS: a CPL 0 fault gets the not-present #PF like a user one."""
    r = Rig("2.6.38")
    gfn = DATA_GFN
    data = r.page(gfn)
    r.enable(EN | SEND_ALWAYS)
    t = r.touch(gfn << 12, user=False)
    r.end()
    r.run()
    assert r.r0(t) == data
    (np,) = r.not_presents()
    assert (np.cs, np.rip, np.err) == (KERNEL_CS, r.sym("touch_load"), 0)
    assert r.ready_tokens() == [WAKE_ALL, np.token]
    assert [e.delivery for e in r.ev("async_pf_not_present")] == ["pf"]
    assert not r.ev("halt")


# ---- step 3: doublefault ----------------------------------------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_lifecycle_doublefault_when_not_present_is_ignored(profile):
    """The guest returns from the not-present #PF without waiting: the retried access finds the
    gfn hashed -> doublefault, the vCPU halts (no new work, no new token) until the page-in
    completes; then page-ready, and the access succeeds."""
    latency = 20_000
    r = Rig(profile, latency=FixedLatency(instructions=latency), pf_mode=PF_IGNORE)
    gfn = DATA_GFN
    data = r.page(gfn)
    r.enable()
    t = r.touch(gfn << 12)
    r.end()
    r.run()
    assert r.r0(t) == data
    np, = r.not_presents()
    assert r.ready_tokens() == [WAKE_ALL, np.token]
    assert kinds(r, "async_pf_not_present", "async_pf_doublefault", "halt", "wake",
                 "async_pf_ready")[1:] == [
        "async_pf_not_present", "async_pf_doublefault", "halt", "wake", "async_pf_ready"]
    (df,) = r.ev("async_pf_doublefault")
    assert df.gfn == gfn and df.slot == r.ev("async_pf_not_present")[0].slot
    (h,) = r.ev("halt")
    assert (h.reason, h.token) == ("doublefault", None)
    assert [e.reason for e in r.ev("wake")] == ["completion"]
    assert r.state().id == 1, "a doublefault takes no token"
    assert len(r.ev("async_pf_not_present")) == 1


@pytest.mark.parametrize("profile", PROFILES)
def test_lifecycle_doublefault_from_interrupt_handler(profile):
    """The task sleeps on its token; a timer interrupt's handler (with IF = 1, like a softirq)
    touches the same page: doublefault, the vCPU halts inside the handler; the completion wakes
    it, page-ready arrives there, the handler's access succeeds, and the task wakes too."""
    r = Rig(profile, latency=FixedLatency(instructions=50_000))
    gfn = DATA_GFN
    data = r.page(gfn)
    r.enable()
    r.timer(3_000, touch=gfn << 12)
    t = r.touch(gfn << 12)
    r.end()
    r.run()
    assert r.r0(t) == data
    assert r.r64("timer_ticks") == 1 and r.r64("timer_val") == data
    (np,) = r.not_presents()
    assert np.cs == USER_CS
    _wake_all, rdy = r.readies()
    assert (rdy.cr2, rdy.cs, rdy.rip) == (np.token, KERNEL_CS, r.sym("timer_load"))
    sw = r.ev("swapped_fault")
    assert [e.rip for e in sw] == [r.sym("touch_load"), r.sym("timer_load")]
    (df,) = r.ev("async_pf_doublefault")
    assert df.gfn == gfn and df.time == sw[1].time
    assert [(h.reason, h.time) for h in r.ev("halt")] == [("doublefault", df.time)]
    assert [e.reason for e in r.ev("wake")] == ["completion"]


@pytest.mark.parametrize("profile", PROFILES)
def test_lifecycle_halted_vcpu_wakes_for_timer_and_faults_again(profile):
    """A vCPU halted by a CPL 0 fault (seed; 2.6.38 send_user_only) wakes for an APIC timer
    interrupt it can take, runs the handler, returns to the access, faults again on the same gfn
    (doublefault) and halts again until its page is in."""
    r = Rig(profile, latency=ManualLatency(kind="manual"))
    gfn = DATA_GFN
    data = r.page(gfn)
    r.enable()
    r.timer(3_000)
    t = r.touch(gfn << 12, user=False)
    r.end()
    r.on("halt", lambda e: e.reason == "doublefault" and r.at(10_000, r.kvm.complete_all))
    r.run()
    assert r.r0(t) == data
    assert r.r64("timer_ticks") == 1
    seq = [(e.kind, getattr(e, "reason", getattr(e, "vector", None)))
           for e in r.ev("halt", "wake", "async_pf_doublefault", "async_pf_ready", "inject")
           if not (e.kind == "async_pf_ready" and e.wakeup_all)
           and not (e.kind == "inject" and e.vector not in (PF, TIMER_VEC))]
    # (the machine reports the interrupt's delivery, then the wake-up it caused)
    assert seq[seq.index(("halt", "not_present")):] == [
        ("halt", "not_present"), ("inject", TIMER_VEC), ("wake", "interrupt"),
        ("async_pf_doublefault", None), ("halt", "doublefault"), ("wake", "completion"),
        ("async_pf_ready", None), ("inject", PF)]
    assert not r.not_presents() and len(r.readies()) == 2


# ---- step 3: queued >= 64 -> synchronous -------------------------------------------------------------
QUEUE = 64


def _queue_full_rig(profile):
    r = Rig(profile, latency=FixedLatency(instructions=300_000), pf_mode=PF_SKIP)
    gfns = [DATA_GFN + i for i in range(QUEUE + 1)]
    data = [r.page(g) for g in gfns]
    r.addr_list([g << 12 for g in gfns] * 2)
    r.enable()
    r.touchlist(0, QUEUE + 1)           # the task skips each not-present access and goes on
    r.wait_ready(1 + QUEUE)
    r.touchlist(QUEUE + 1, QUEUE + 1)   # every page again, after all the page-readies
    r.end()
    return r, gfns, data


@pytest.mark.parametrize("profile", PROFILES)
def test_lifecycle_queue_full_at_64_is_synchronous(profile):
    r, gfns, data = _queue_full_rig(profile)
    at_sync = []
    r.on("sync_fault", lambda e: at_sync.append(r.snap()))
    r.run()
    n = QUEUE + 1
    assert r.vals(0, n) == [TOUCH_MARK] * QUEUE + [data[-1]], "64 skipped, the 65th waited"
    assert r.vals(n, n) == data
    tokens = [e.token for e in r.not_presents()]
    assert tokens == [i << 12 for i in range(QUEUE)]
    assert r.ready_tokens() == [WAKE_ALL] + tokens
    (sf,) = r.ev("sync_fault")
    assert (sf.reason, sf.gfn) == ("queue_full", gfns[-1])
    assert [e.gfn for e in r.ev("stall")] == [gfns[-1]]
    (s,) = at_sync
    assert s.queued == QUEUE and sum(g is not None for g in s.gfns) == QUEUE
    assert s.id == QUEUE + 1, "the queue-full fault used up token id 64"
    assert r.state().id == QUEUE + 1 and r.state().queued == 0


@pytest.mark.parametrize("profile", PROFILES)
def test_lifecycle_no_page_ready_while_stalled(profile):
    """While the vCPU stalls in the queue-full synchronous fault, the 64 page-ins complete; their
    page-readies must wait until the stall is over (the vCPU does not enter the guest)."""
    r, _, _ = _queue_full_rig(profile)
    r.run()
    (st,), (un,) = r.ev("stall"), r.ev("unstall")
    assert len([e for e in r.ev("async_pf_completed") if st.time < e.time < un.time]) == QUEUE
    assert not [e for e in r.ev("async_pf_ready") if st.time <= e.time < un.time]


# ---- step 5: a completion makes a halted vCPU runnable ------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_lifecycle_completion_makes_halted_vcpu_runnable(profile):
    """The task's page-in is outstanding and the guest halts with `cli; hlt`.  When the page-in
    completes the done list is non-empty, so the vCPU is runnable again (the 2010
    kvm_arch_vcpu_runnable): it resumes after the hlt with IF = 0 (the page-ready waits), and
    gets the page-ready once it enables interrupts."""
    r = Rig(profile, latency=FixedLatency(instructions=20_000), pf_mode=PF_SKIP)
    gfn = DATA_GFN
    r.page(gfn)
    r.enable()
    r.touch(gfn << 12)
    h = r.hlt_if0()
    r.wait_ready(2)
    r.end()
    r.run(expect_status=None)
    assert r.result.status == 1, r.result
    (comp,) = r.ev("async_pf_completed")
    assert r.r0(h) >= comp.time
    (np,) = r.not_presents()
    assert r.ready_tokens() == [WAKE_ALL, np.token]


# ---- token format ---------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_lifecycle_token_format_and_counter(profile):
    """token = (apf.id++ << 12) | vcpu_id, on vCPU 1: each new work (async or halted) takes the
    next id; a doublefault takes none.  Page-readies go to the vCPU that faulted."""
    r = Rig(profile, vcpus=2, script_vcpu=1)
    a, b, c, d = (DATA_GFN + i for i in range(4))
    data = [r.page(g) for g in (a, b, c, d)]
    r.enable()
    ta = r.touch(a << 12)                     # id 0: async
    tb = r.touch(b << 12)                     # id 1: async
    tc = r.touch(c << 12, user=False)         # id 2: CPL 0 -> halt, page-ready only
    r.mode(PF_IGNORE)
    td = r.touch(d << 12)                     # id 3: async, then a doublefault (no id)
    r.end()
    r.run()
    assert [r.r0(i) for i in (ta, tb, tc, td)] == data
    assert [e.cr2 for e in r.not_presents()] == [0x0001, 0x1001, 0x3001]
    assert r.ready_tokens() == [WAKE_ALL, 0x0001, 0x1001, 0x2001, 0x3001]
    assert [e.token for e in r.ev("async_pf_not_present")] == [(i << 12) | 1 for i in range(4)]
    assert len(r.ev("async_pf_doublefault")) == 1
    assert r.kvm.state(1).id == 4
    apf_kinds = ("async_pf_not_present", "async_pf_ready", "async_pf_completed", "halt", "wake")
    assert {e.vcpu for e in r.ev(*apf_kinds, vcpu=None)} == {1}
    assert r.kvm.state(0).id == 0 and r.kvm.state(0).msr_val == 0


# ---- step 6: page ready only when it can be injected ----------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_lifecycle_page_ready_waits_for_interrupts(profile):
    """The page-in completes while the guest runs with IF = 0: the page-ready waits on the done
    list and is injected only after the guest's sti."""
    r = Rig(profile, latency=FixedLatency(instructions=5_000), pf_mode=PF_SKIP)
    gfn = DATA_GFN
    data = r.page(gfn)
    r.enable()
    r.touch(gfn << 12)
    sp = r.spin(40_000)
    w = r.wait_ready(2)
    t = r.touch(gfn << 12)
    r.end()
    r.run()
    assert r.r0(t) == data
    np, = r.not_presents()
    rdy = r.readies()[-1]
    assert rdy.cr2 == np.cr2
    spin_start, spin_end = r.results(sp)[:2]
    sti_time = r.results(w)[0]
    (comp,) = r.ev("async_pf_completed")
    assert spin_start < comp.time < spin_end, "completed while IF = 0"
    (ready_ev,) = [e for e in r.ev("async_pf_ready") if not e.wakeup_all]
    assert ready_ev.time > sti_time and rdy.tsc > sti_time
    assert not [e for e in r.ev("inject") if comp.time <= e.time < sti_time]
    assert rdy.cs == KERNEL_CS and rdy.rflags & (1 << 9)


# ---- step 7: wake-all ------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_lifecycle_wake_all_token_and_no_hash_delete(profile):
    """A wake-all (queued by an enable while a work is outstanding) reaches the guest as reason 2,
    CR2 = 0xffffffff; the host deletes nothing from the gfn hash for it; the outstanding work's
    own page-ready still follows."""
    r = Rig(profile, latency=ManualLatency(kind="manual"), pf_mode=PF_SKIP)
    gfn = DATA_GFN
    data = r.page(gfn)
    r.enable()
    r.touch(gfn << 12)
    again = r.wrmsr(r.area | EN)
    r.wait_ready(2)
    r.mark(1)
    r.wait_ready(3)
    t = r.touch(gfn << 12)
    r.end()
    snaps = []
    r.on("async_pf_ready", lambda e: snaps.append((e, r.snap())))
    at_mark = []

    def mark():
        at_mark.append(r.snap())       # the wake-all has been delivered, A is still out
        r.kvm.complete_all()
    r.on_mark(1, mark)
    r.run()
    assert r.r0(again) == 0 and r.r0(t) == data
    (np,) = r.not_presents()
    assert r.ready_tokens() == [WAKE_ALL, WAKE_ALL, np.token]
    _, (e2, s2), (e3, s3) = snaps
    assert e2.wakeup_all and e2.delivered_token == WAKE_ALL and e2.token == 0
    assert e2.slot is None and e2.moves == []
    home = r.ev("async_pf_not_present")[0].slot
    assert s2.gfns[home] == gfn and sum(g is not None for g in s2.gfns) == 1
    (sm,) = at_mark
    assert sm.gfns == s2.gfns and sm.queued == 1 and [w.gfn for w in sm.queue] == [gfn]
    assert sm.done == []
    assert not e3.wakeup_all and e3.delivered_token == np.token and e3.slot == home
    assert s3.gfns == [None] * 64, "A's own page-ready deleted it"
    assert r.snap().queued == 0 and r.snap().queue == []


# ---- migration: the restore write's wake-all releases the waiters ---------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_lifecycle_restore_write_wake_all_releases_waiter(profile):
    """The task sleeps on a token; the host saves the MSR (rdmsr), resets the vCPU's APF state
    and writes the MSR back (a migration's restore): the write's wake-all wakes the task, which
    retries, faults again (the hash was reset) and sleeps on a new token until its page is in."""
    r = Rig(profile, latency=ManualLatency(kind="manual"))
    gfn = DATA_GFN
    data = r.page(gfn)
    r.enable()
    t = r.touch(gfn << 12)
    r.end()
    saved = []

    def migrate():
        saved.append(r.kvm.rdmsr(r.vcpu, 0x4B564D02))
        r.kvm.reset_vcpu(r.vcpu)
        assert r.kvm.wrmsr(r.vcpu, 0x4B564D02, saved[0])

    nps = []

    def on_np(e):
        nps.append(e)
        r.at(5_000, migrate if len(nps) == 1 else r.kvm.complete_all)
    r.on("async_pf_not_present", on_np)
    r.run()
    assert r.r0(t) == data
    assert saved == [r.area | EN]
    log = [(e.reason, e.token) for e in r.pf_log()]
    t0, t1 = nps[0].token, nps[1].token
    assert log == [(2, WAKE_ALL), (1, t0), (2, WAKE_ALL), (1, t1), (2, t1)]
    assert t1 == t0 + (1 << 12)
    (cl,) = r.ev("completion_queue_cleared")
    assert cl.reason == "reset" and cl.cancelled == [t0]
