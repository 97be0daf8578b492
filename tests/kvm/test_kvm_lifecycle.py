"""Lifecycle of an async page fault (spec steps 1-8), per profile."""

from __future__ import annotations

import json

import pytest
from kvm_fakes import AREA, RAM_SIZE, FakeClock, FakeMemory, FakeVcpu, Rig

from apfdbg.kvm import (
    ASYNC_PF_PER_VCPU,
    MSR_KVM_ASYNC_PF_EN,
    AsyncPfHost,
    Outcome,
    WorkState,
    kvm_event_adapter,
)
from apfdbg.kvm.events import AsyncPfReady

EN = MSR_KVM_ASYNC_PF_EN
BOTH = ["seed", "2.6.38"]


def fault(r: Rig, gfn: int, vcpu: int = 0) -> Outcome:
    return r.host.on_swapped_fault(vcpu, gfn, gfn << 12)


def work_of(r: Rig, gfn: int):
    return next(w for _, g, w in r.pager.requests if g == gfn)


# ---- tokens ------------------------------------------------------------------------------
@pytest.mark.parametrize("prof", BOTH)
def test_token_format(prof: str) -> None:
    r = Rig(prof, nvcpus=6)
    r.enable_and_drain(5)
    tokens = []
    for g in range(3):
        assert fault(r, 0x100 + g, vcpu=5) is Outcome.ASYNC
        tokens.append(r.vcpus[5].deliver(r.mem)[0][0])
    assert tokens == [(0 << 12) | 5, (1 << 12) | 5, (2 << 12) | 5]
    assert r.st(5).id == 3
    assert [e.token for e in r.kinds("async_pf_not_present")] == tokens


def test_token_is_u32_and_zero_is_not_skipped_in_2010() -> None:
    r = Rig("seed")
    r.enable_and_drain()
    r.st().id = 0xFFFFF  # next token would need bit 32
    fault(r, 1)
    fault_token = r.v0.deliver(r.mem)[0][0]
    assert fault_token == 0xFFFFF000
    assert r.st().id == 0x100000
    r.host.complete_all()
    r.host.before_entry(0)
    r.v0.deliver(r.mem)
    fault(r, 2)
    assert r.v0.deliver(r.mem)[0][0] == 0  # (0x100000 << 12) wraps to 0: token 0 is used


def test_id_wraps_as_u32() -> None:
    r = Rig("seed")
    r.enable_and_drain()
    r.st().id = 0xFFFFFFFF
    fault(r, 1)
    assert r.st().id == 0


# ---- step 2: can_do_async_pf -------------------------------------------------------------
@pytest.mark.parametrize("prof", BOTH)
def test_interrupts_not_allowed_goes_sync(prof: str) -> None:
    r = Rig(prof)
    r.enable_and_drain()
    r.v0.if_flag = False
    assert fault(r, 7) is Outcome.SYNC
    assert r.st().queued == 0 and r.st().id == 0 and not r.pager.requests
    assert not r.kinds("try_async_get_page")  # the tracepoint is after the check
    assert r.kinds("sync_fault")[-1].reason == "cannot_async"


@pytest.mark.parametrize("prof", BOTH)
def test_pending_event_goes_sync(prof: str) -> None:
    r = Rig(prof)
    r.enable_and_drain()
    r.v0.pending.append((0xDEAD, 0))  # an exception awaiting delivery
    assert fault(r, 7) is Outcome.SYNC


def test_interrupt_shadow_goes_sync() -> None:
    r = Rig("seed")
    r.enable_and_drain()
    r.v0.shadow = True
    assert fault(r, 7) is Outcome.SYNC


def test_prefault_goes_sync() -> None:
    r = Rig("seed")
    r.enable_and_drain()
    assert r.host.on_swapped_fault(0, 7, 0x7000, prefault=True) is Outcome.SYNC
    assert r.kinds("sync_fault")[-1].reason == "prefault"


# ---- step 3: doublefault ------------------------------------------------------------------
@pytest.mark.parametrize("prof", BOTH)
def test_doublefault_halts(prof: str) -> None:
    r = Rig(prof)
    r.enable_and_drain()
    assert fault(r, 9) is Outcome.ASYNC
    r.v0.deliver(r.mem)
    queued, ident = r.st().queued, r.st().id
    assert fault(r, 9) is Outcome.DOUBLEFAULT_HALT
    assert r.st().halted and r.v0.halted
    assert r.st().queued == queued and r.st().id == ident  # no new work, no token
    df = r.kinds("async_pf_doublefault")[-1]
    assert df.gfn == 9 and df.gva == 0x9000
    assert r.kinds("halt")[-1].reason == "doublefault"
    assert r.v0.injected[-1][0] != 0xFFFFFFFF and len(r.v0.pending) == 0


@pytest.mark.parametrize("prof", BOTH)
def test_doublefault_on_halt_path_gfn(prof: str) -> None:
    r = Rig(prof, cpl=0)
    r.enable_and_drain()
    assert fault(r, 9) is Outcome.HALT
    r.host.on_interrupt_wake(0)
    assert fault(r, 9) is Outcome.DOUBLEFAULT_HALT


# ---- step 3: setup ------------------------------------------------------------------------
@pytest.mark.parametrize("prof", BOTH)
def test_queued_64_goes_sync(prof: str) -> None:
    r = Rig(prof)
    r.enable_and_drain()
    for g in range(ASYNC_PF_PER_VCPU):
        assert fault(r, 0x1000 + g) is Outcome.ASYNC
        r.v0.deliver(r.mem)
    st = r.st()
    assert st.queued == 64 and len(st.gfns) == 64
    assert fault(r, 0x5000) is Outcome.SYNC
    assert r.kinds("sync_fault")[-1].reason == "queue_full"
    assert st.queued == 64 and not st.gfns.find(0x5000)
    # a gfn already outstanding is still a doublefault, table full or not
    assert fault(r, 0x1000) is Outcome.DOUBLEFAULT_HALT


@pytest.mark.parametrize("prof", BOTH)
def test_queue_full_still_consumes_token_id(prof: str) -> None:
    r = Rig(prof)
    r.enable_and_drain()
    for g in range(64):
        fault(r, 0x1000 + g)
        r.v0.deliver(r.mem)
    assert r.st().id == 64
    fault(r, 0x5000)
    assert r.st().id == 65  # kvm_arch_setup_async_pf took a token before the room check


@pytest.mark.parametrize("prof", BOTH)
def test_wakeall_dummy_counts_toward_64(prof: str) -> None:
    r = Rig(prof)
    assert r.enable()  # dummy on done: queued = 1
    r.v0.if_flag = True
    for g in range(63):
        assert fault(r, 0x1000 + g) is Outcome.ASYNC
        r.v0.deliver(r.mem)
    assert r.st().queued == 64
    assert fault(r, 0x2000) is Outcome.SYNC


# ---- step 4: not present ------------------------------------------------------------------
@pytest.mark.parametrize("prof", BOTH)
def test_async_writes_reason_1_and_injects_pf_with_token(prof: str) -> None:
    r = Rig(prof)
    r.enable_and_drain()
    r.mem.words[AREA] = 0x77  # the host does not look at the old value
    assert fault(r, 0x33) is Outcome.ASYNC
    assert r.reason() == 1
    assert r.v0.pending == [(0, 0)]  # CR2 = token 0, error code 0
    st = r.st()
    assert [w.gfn for w in st.queue] == [0x33] and st.queued == 1 and st.gfns.find(0x33)
    assert not st.halted
    assert r.pager.requests[0][:2] == (0, 0x33)
    npe = r.kinds("async_pf_not_present")[-1]
    assert npe.delivery == "pf" and npe.token == 0 and npe.gva == 0x33000
    assert npe.slot == st.gfns.lookup(0x33).slot
    assert [e.kind for e in r.events[-2:]] == ["try_async_get_page", "async_pf_not_present"]


def test_cpl0_halts_in_seed() -> None:
    r = Rig("seed", cpl=0)
    r.enable_and_drain()
    assert fault(r, 0x44) is Outcome.HALT
    st = r.st()
    assert st.halted and r.v0.halted
    assert st.gfns.find(0x44) and st.queued == 1 and r.pager.requests
    assert r.v0.pending == [] and r.reason() == 0  # nothing written, nothing injected
    assert r.kinds("async_pf_not_present")[-1].delivery == "halt"
    h = r.kinds("halt")[-1]
    assert h.reason == "not_present" and h.token == 0


def test_send_always_cpl0_async_in_2638() -> None:
    r = Rig("2.6.38", cpl=0)
    r.enable_and_drain(extra=2)
    assert fault(r, 0x44) is Outcome.ASYNC
    assert r.v0.pending == [(0, 0)] and r.reason() == 1


def test_cpl0_without_send_always_halts_in_2638() -> None:
    r = Rig("2.6.38", cpl=0)
    r.enable_and_drain()
    assert fault(r, 0x44) is Outcome.HALT


@pytest.mark.parametrize("prof", BOTH)
def test_cpl3_async_in_both(prof: str) -> None:
    r = Rig(prof, cpl=3)
    r.enable_and_drain()
    assert fault(r, 0x44) is Outcome.ASYNC


@pytest.mark.parametrize("prof", BOTH)
def test_apf_disabled_non_pv_guest_takes_halt_path(prof: str) -> None:
    r = Rig(prof)  # the guest never wrote the MSR
    assert fault(r, 0x44) is Outcome.HALT
    st = r.st()
    assert st.halted and st.gfns.find(0x44) and st.queued == 1
    assert r.v0.injected == [] and r.mem.writes == []
    # completion: the halted vCPU runs again; on entry the work is retired, nothing injected
    r.pager.finish(work_of(r, 0x44))
    assert not st.halted and r.kinds("wake")[-1].reason == "completion"
    assert len(r.host.before_entry(0)) == 1
    assert r.v0.injected == [] and st.queued == 0 and not st.gfns.find(0x44)
    ready = r.kinds("async_pf_ready")[-1]
    assert ready.delivered_token is None


@pytest.mark.parametrize("prof", BOTH)
def test_half_enabled_after_gpa_gp_queues_silently(prof: str) -> None:
    r = Rig(prof)
    assert r.host.wrmsr(0, EN, (RAM_SIZE * 2) | 1) is False  # #GP, but msr_val has bit 0
    assert fault(r, 0x44) is Outcome.QUEUED_SILENT  # the reason write fails: no #PF, no halt
    st = r.st()
    assert st.gfns.find(0x44) and st.queued == 1 and not st.halted and r.v0.injected == []
    assert r.kinds("async_pf_not_present")[-1].delivery == "none"
    assert fault(r, 0x44) is Outcome.DOUBLEFAULT_HALT  # the retried access
    r.pager.finish(work_of(r, 0x44))
    assert r.host.before_entry(0)
    assert r.v0.injected == []  # ready cannot be written either


# ---- step 5: completion -------------------------------------------------------------------
@pytest.mark.parametrize("prof", BOTH)
def test_page_in_done_moves_work_to_done_and_wakes(prof: str) -> None:
    r = Rig(prof, cpl=0)
    r.enable_and_drain()
    r.clock.tick(100)
    assert fault(r, 0x44) is Outcome.HALT
    w = work_of(r, 0x44)
    r.clock.tick(50)
    assert r.pager.finish(w) is True
    assert w.state is WorkState.DONE and w.completed_at == 150
    assert r.st().done == [w] and w in r.st().queue
    assert not r.st().halted and r.v0.halt_calls[-2:] == [True, False]
    done = r.kinds("async_pf_completed")[-1]
    assert done.address == 0x44 << 12 and done.gfn == 0x44 and done.time == 150
    assert r.pager.finish(w) is False  # idempotent


@pytest.mark.parametrize("prof", BOTH)
def test_halt_with_done_pending_is_runnable_at_once(prof: str) -> None:
    r = Rig(prof, cpl=0)
    r.enable()  # wake-all dummy sits on done
    r.v0.if_flag = True
    assert fault(r, 0x44) is Outcome.HALT
    assert not r.st().halted  # kvm_vcpu_block returned at once
    assert [e.kind for e in r.events[-2:]] == ["halt", "wake"]
    assert r.kinds("wake")[-1].reason == "done_pending"


@pytest.mark.parametrize("prof", BOTH)
def test_interrupt_wake_then_refault_halts_again(prof: str) -> None:
    r = Rig(prof, cpl=0)
    r.enable_and_drain()
    assert fault(r, 0x44) is Outcome.HALT
    r.host.on_interrupt_wake(0)
    assert not r.st().halted and r.kinds("wake")[-1].reason == "interrupt"
    assert r.host.runnable(0)
    assert fault(r, 0x44) is Outcome.DOUBLEFAULT_HALT
    assert r.st().halted and not r.host.runnable(0)
    r.pager.finish(work_of(r, 0x44))
    assert r.host.runnable(0) and not r.st().halted


# ---- step 6: page ready -------------------------------------------------------------------
@pytest.mark.parametrize("prof", BOTH)
def test_ready_only_when_injectable(prof: str) -> None:
    r = Rig(prof)
    r.enable_and_drain()
    fault(r, 0x44)
    r.v0.deliver(r.mem)
    w = work_of(r, 0x44)
    r.pager.finish(w)
    r.v0.if_flag = False
    assert r.host.before_entry(0) == [] and not r.host.can_inject_page_ready(0)
    r.v0.if_flag = True
    r.v0.pending.append((0x1234, 0))  # an exception still awaiting delivery
    assert r.host.before_entry(0) == []
    r.v0.pending.clear()
    assert r.host.before_entry(0) == [w]
    assert r.v0.pending == [(w.token, 0)] and r.reason() == 2
    st = r.st()
    assert st.queued == 0 and not st.queue and not st.done and not st.gfns.find(0x44)
    assert w.state is WorkState.DELIVERED and w.ready_token == w.token
    ready = r.kinds("async_pf_ready")[-1]
    assert ready.token == w.token and ready.delivered_token == w.token and not ready.wakeup_all


@pytest.mark.parametrize("prof", BOTH)
def test_one_completion_per_entry(prof: str) -> None:
    r = Rig(prof)
    r.enable_and_drain()
    for g in (1, 2, 3):
        fault(r, g)
        r.v0.deliver(r.mem)
    r.host.complete_all(0)
    assert len(r.st().done) == 3
    for expect_left in (2, 1, 0):
        got = r.host.before_entry(0)
        assert len(got) == 1
        r.v0.deliver(r.mem)
        assert len(r.st().done) == expect_left


@pytest.mark.parametrize("prof", BOTH)
def test_ready_order_is_completion_order(prof: str) -> None:
    r = Rig(prof)
    r.enable_and_drain()
    for g in (1, 2, 3):
        fault(r, g)
        r.v0.deliver(r.mem)
    for g in (3, 1, 2):
        r.pager.finish(work_of(r, g))
    order = []
    for _ in range(3):
        (w,) = r.host.before_entry(0)
        order.append(w.gfn)
        r.v0.deliver(r.mem)
    assert order == [3, 1, 2]


@pytest.mark.parametrize("prof", BOTH)
def test_ready_clears_halted(prof: str) -> None:
    r = Rig(prof, cpl=0)
    r.enable_and_drain()
    fault(r, 5)
    st = r.st()
    w = work_of(r, 5)
    # force the state where a done work is delivered to a halted vCPU
    w.state = WorkState.DONE
    st.done.append(w)
    assert st.halted
    r.host.before_entry(0)
    assert not st.halted and r.kinds("wake")[-1].reason == "page_ready"


@pytest.mark.parametrize("prof", BOTH)
def test_halt_path_work_still_gets_page_ready(prof: str) -> None:
    # 2010 kernels send "page ready" for every work, also one whose "not present" was
    # replaced by a halt (the guest then gets a wake for a token nobody waits on)
    r = Rig(prof, cpl=0)
    r.enable_and_drain()
    assert fault(r, 5) is Outcome.HALT
    w = work_of(r, 5)
    r.pager.finish(w)
    r.host.before_entry(0)
    assert r.v0.deliver(r.mem) == [(w.token, 2)]


@pytest.mark.parametrize("prof", BOTH)
def test_wakeall_token_ffffffff_no_hash_delete(prof: str) -> None:
    r = Rig(prof)
    r.enable_and_drain()
    fault(r, 0x10)
    r.v0.deliver(r.mem)
    before = r.st().gfns.slots
    dummy = r.host.wake_all(0)
    assert dummy is not None and dummy.token == 0 and dummy.gfn is None
    assert r.st().queued == 2
    assert r.host.before_entry(0) == [dummy]
    assert r.v0.deliver(r.mem) == [(0xFFFFFFFF, 2)]
    assert r.st().gfns.slots == before  # the outstanding gfn stays hashed
    assert r.st().queued == 1 and [w.gfn for w in r.st().queue] == [0x10]
    ready = r.kinds("async_pf_ready")[-1]
    assert isinstance(ready, AsyncPfReady)
    assert ready.wakeup_all and ready.token == 0 and ready.delivered_token == 0xFFFFFFFF
    assert ready.slot is None and ready.moves == []
    assert dummy.token == 0xFFFFFFFF


@pytest.mark.parametrize("prof", BOTH)
def test_wake_all_command_skipped_when_done_nonempty(prof: str) -> None:
    r = Rig(prof)
    r.enable()
    assert r.host.wake_all(0) is None
    assert r.kinds("wakeup_all")[-1].queued is False


def test_page_ready_deletes_gfn_with_backward_shift() -> None:
    r = Rig("seed")
    r.enable_and_drain()
    a, b = 0x10000, 0x20000  # same home bucket 0
    fault(r, a)
    r.v0.deliver(r.mem)
    fault(r, b)
    r.v0.deliver(r.mem)
    st = r.st()
    assert st.gfns.slots[0] == a and st.gfns.slots[1] == b
    r.pager.finish(work_of(r, a))
    r.host.before_entry(0)
    assert st.gfns.slots[0] == b
    ready = r.kinds("async_pf_ready")[-1]
    assert ready.slot == 0 and ready.moves == [(1, 0)]


# ---- step 8 and multi-vCPU ----------------------------------------------------------------
@pytest.mark.parametrize("prof", BOTH)
def test_page_ready_goes_to_the_faulting_vcpu(prof: str) -> None:
    r = Rig(prof, nvcpus=2)
    r.enable_and_drain(0)
    r.enable_and_drain(1)
    fault(r, 0x70, vcpu=1)
    tok = r.vcpus[1].deliver(r.mem)[0][0]
    assert tok & 0xFFF == 1
    r.host.complete_all()
    assert r.host.before_entry(0) == []
    assert len(r.host.before_entry(1)) == 1
    assert r.vcpus[1].deliver(r.mem) == [(tok, 2)]
    # the same gfn can be outstanding on two vCPUs: the tables are per vCPU
    fault(r, 0x71, vcpu=0)
    fault(r, 0x71, vcpu=1)
    assert r.st(0).gfns.find(0x71) and r.st(1).gfns.find(0x71)


# ---- reset and commands -------------------------------------------------------------------
@pytest.mark.parametrize("prof", BOTH)
def test_reset_vcpu(prof: str) -> None:
    r = Rig(prof, cpl=0)
    r.enable_and_drain()
    fault(r, 1)  # halt path
    fault(r, 1)  # doublefault
    st = r.st()
    assert st.halted
    ident = st.id
    r.host.reset_vcpu(0)
    assert st.msr_val == 0 and r.host.rdmsr(0, EN) == 0
    assert st.queued == 0 and not st.queue and not st.done
    assert st.gfns.entries() == [None] * 64
    assert not st.halted and not r.v0.halted
    assert st.id == ident  # the token counter survives a reset
    assert r.kinds("completion_queue_cleared")[-1].reason == "reset"
    assert r.kinds("vcpu_reset")
    assert r.kinds("wake")[-1].reason == "reset"


def test_complete_commands() -> None:
    r = Rig("seed")
    r.enable_and_drain()
    for g in (1, 2, 3, 4):
        fault(r, g)
        r.v0.deliver(r.mem)
    w1, w2, w3, w4 = (work_of(r, g) for g in (1, 2, 3, 4))
    assert r.host.complete(w2) is True and w2.state is WorkState.DONE
    assert r.pager.now_calls == [w2]  # the pager was asked to bring the page in
    assert r.host.complete(w2) is False
    assert r.host.complete_oldest(0) is w1
    assert [w.gfn for w in r.host.complete_all()] == [3, 4]
    assert r.host.complete_oldest(0) is None
    assert [w.gfn for w in r.st().done] == [2, 1, 3, 4]


def test_complete_without_pager_hook() -> None:
    clock, mem, v = FakeClock(), FakeMemory(), FakeVcpu(0)
    seen = []
    host = AsyncPfHost(mem, clock, pager=lambda i, g, w: seen.append((i, g)), vcpus=[v])
    host.wrmsr(0, EN, AREA | 1)
    host.before_entry(0)
    v.deliver(mem)
    assert host.on_swapped_fault(0, 9, 0x9000) is Outcome.ASYNC
    assert seen == [(0, 9)]
    assert len(host.complete_all()) == 1


def test_synchronous_pager_completes_inside_request() -> None:
    clock, mem, v = FakeClock(), FakeMemory(), FakeVcpu(0, cpl=0)
    box: dict = {}

    class SyncPager:
        def request_page_in(self, i, g, w):
            box["host"].page_in_done(w)

    host = AsyncPfHost(mem, clock, pager=SyncPager(), vcpus=[v])
    box["host"] = host
    host.wrmsr(0, EN, AREA | 1)
    host.before_entry(0)
    v.deliver(mem)
    assert host.on_swapped_fault(0, 9, 0x9000) is Outcome.HALT
    assert not host.state(0).halted  # woken by the completion
    assert len(host.state(0).done) == 1


# ---- events and snapshots -----------------------------------------------------------------
def test_events_round_trip_through_the_union() -> None:
    r = Rig("2.6.38", cpl=0)
    r.enable_and_drain(extra=2)
    r.host.wrmsr(0, EN, AREA | 0x20)
    r.host.rdmsr(0, EN)
    r.enable_and_drain()
    fault(r, 1)
    fault(r, 1)
    r.host.on_interrupt_wake(0)
    r.v0.if_flag = False
    fault(r, 2)
    r.v0.if_flag = True
    r.host.complete_all()
    r.host.before_entry(0)
    r.host.wrmsr(0, EN, 0)
    r.host.reset_vcpu(0)
    kinds = {e.kind for e in r.events}
    assert kinds >= {
        "msr_write", "msr_read", "gp", "wakeup_all", "async_pf_ready", "try_async_get_page",
        "async_pf_not_present", "halt", "async_pf_doublefault", "wake", "sync_fault",
        "async_pf_completed", "completion_queue_cleared", "vcpu_reset",
    }
    for e in r.events:
        back = kvm_event_adapter.validate_json(e.model_dump_json())
        assert type(back) is type(e) and back == e
        json.loads(e.model_dump_json())["time"]


def test_snapshot_for_the_ui() -> None:
    r = Rig("2.6.38")
    r.enable_and_drain(extra=2)
    fault(r, 0x10000)
    r.v0.deliver(r.mem)
    fault(r, 0x20000)
    snap = r.st().snapshot()
    assert snap.profile == "2.6.38" and snap.enabled and not snap.send_user_only
    assert snap.msr["gpa"] == AREA and snap.msr["send_always"] is True
    assert len(snap.gfns) == 64 and snap.gfns[0] == 0x10000 and snap.gfns[1] == 0x20000
    assert snap.gfn_home[1] == 0 and snap.gfn_distance[1] == 1 and snap.gfn_distance[5] is None
    assert snap.queued == 2 and [w.gfn for w in snap.queue] == [0x10000, 0x20000]
    assert snap.id == 2 and snap.next_token == 2 << 12
    assert [s.index for s in r.host.snapshot()] == [0]
    snap.model_dump_json()


def test_unknown_profile_and_vcpu() -> None:
    with pytest.raises(ValueError):
        AsyncPfHost(FakeMemory(), FakeClock(), profile="5.8")
    host = AsyncPfHost(FakeMemory(), FakeClock())
    with pytest.raises(KeyError):
        host.state(3)
    host.add_vcpu(FakeVcpu(0))
    with pytest.raises(ValueError):
        host.add_vcpu(FakeVcpu(0))
    with pytest.raises(ValueError):
        host.add_vcpu(FakeVcpu(4096))
