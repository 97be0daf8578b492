"""MSR_KVM_ASYNC_PF_EN write/read rules (kvm_pv_enable_async_pf), per profile."""

from __future__ import annotations

import pytest
from kvm_fakes import AREA, RAM_SIZE, Rig

from apfdbg.kvm import (
    KVM_CAP_ASYNC_PF,
    MSR_KVM_ASYNC_PF_EN,
    MsrFault,
    Outcome,
    WorkState,
)
from apfdbg.kvm.events import Gp, MsrWrite

EN = MSR_KVM_ASYNC_PF_EN


def test_msr_ids_cpuid_and_cap() -> None:
    for prof in ("seed", "2.6.38"):
        r = Rig(prof)
        assert r.host.msr_ids() == (0x4B564D02,)
        assert r.host.cpuid_features() == 1 << 4
    assert KVM_CAP_ASYNC_PF == 59


@pytest.mark.parametrize("bit", [1, 2, 3, 4, 5])
def test_msr_reserved_bits_gp_seed(bit: int) -> None:
    r = Rig("seed")
    assert r.host.wrmsr(0, EN, AREA | 1 | (1 << bit)) is False
    assert r.st().msr_val == 0  # nothing stored
    assert r.host.rdmsr(0, EN) == 0
    assert r.st().queued == 0 and not r.st().done  # no wake-all
    gp = r.kinds("gp")
    assert len(gp) == 1 and isinstance(gp[0], Gp) and "reserved" in gp[0].why
    w = r.kinds("msr_write")[-1]
    assert isinstance(w, MsrWrite) and w.result == "gp"


@pytest.mark.parametrize("bit", [2, 3, 4, 5])
def test_msr_reserved_bits_gp_2638(bit: int) -> None:
    r = Rig("2.6.38")
    assert r.host.wrmsr(0, EN, AREA | 1 | (1 << bit)) is False
    assert r.st().msr_val == 0
    assert r.kinds("gp")


def test_msr_send_always_bit_accepted_in_2638_reserved_in_seed() -> None:
    assert Rig("2.6.38").enable(extra=2) is True
    assert Rig("seed").enable(extra=2) is False


def test_msr_reserved_check_applies_to_disable_writes_too() -> None:
    r = Rig("seed")
    r.enable()
    assert r.host.wrmsr(0, EN, AREA | 0x4) is False  # enable bit clear, reserved bit set
    assert r.st().msr_val == AREA | 1


@pytest.mark.parametrize("prof", ["seed", "2.6.38"])
def test_msr_gpa_not_ram_gp_after_store(prof: str) -> None:
    r = Rig(prof)
    bad = (RAM_SIZE + 0x1000) | 1
    assert r.host.wrmsr(0, EN, bad) is False
    assert r.st().msr_val == bad  # stored before the GPA check
    assert r.host.rdmsr(0, EN) == bad
    assert r.st().enabled  # "half enabled"
    assert r.st().queued == 0 and not r.st().done  # no wake-all
    assert "not in guest RAM" in r.kinds("gp")[0].why


def test_msr_area_straddling_ram_end_gp() -> None:
    r = Rig("seed")
    assert r.host.wrmsr(0, EN, (RAM_SIZE - 0x40) | 1) is True  # last 64 bytes: fine
    r2 = Rig("seed")
    assert r2.host.wrmsr(0, EN, RAM_SIZE | 1) is False


@pytest.mark.parametrize("prof", ["seed", "2.6.38"])
def test_msr_disable_with_gpa_outside_ram_succeeds(prof: str) -> None:
    r = Rig(prof)
    value = RAM_SIZE * 4  # enable bit clear: the GPA is never checked
    assert r.host.wrmsr(0, EN, value) is True
    assert r.host.rdmsr(0, EN) == value


@pytest.mark.parametrize("prof", ["seed", "2.6.38"])
def test_enable_queues_wakeall_only_if_done_empty(prof: str) -> None:
    r = Rig(prof)
    assert r.enable()
    st = r.st()
    assert len(st.done) == 1 and st.done[0].wakeup_all and st.queued == 1
    # a second enable while the first wake-all is still on done queues nothing
    assert r.enable()
    assert len(st.done) == 1 and st.queued == 1
    ev = r.kinds("wakeup_all")
    assert [e.queued for e in ev] == [True, False]
    # once delivered, the next enable queues a new one
    r.host.before_entry(0)
    r.v0.deliver(r.mem)
    assert r.enable()
    assert len(st.done) == 1 and st.queued == 1


@pytest.mark.parametrize("prof", ["seed", "2.6.38"])
def test_enable_with_a_real_work_on_done_queues_no_wakeall(prof: str) -> None:
    r = Rig(prof)
    r.enable_and_drain()
    assert r.host.on_swapped_fault(0, 0x123, 0x123000) is Outcome.ASYNC
    r.v0.deliver(r.mem)
    _, _, work = r.pager.requests[0]
    r.pager.finish(work)
    assert r.enable()
    assert [w.wakeup_all for w in r.st().done] == [False]
    assert r.st().queued == 1


@pytest.mark.parametrize("prof", ["seed", "2.6.38"])
def test_disable_cancels_outstanding_and_never_delivers(prof: str) -> None:
    r = Rig(prof)
    r.enable_and_drain()
    r.host.on_swapped_fault(0, 0x10, 0x10000)
    r.v0.deliver(r.mem)
    r.host.on_swapped_fault(0, 0x11, 0x11000)
    r.v0.deliver(r.mem)
    works = [w for _, _, w in r.pager.requests]
    r.pager.finish(works[0])  # one done, one still paging in
    assert r.host.wrmsr(0, EN, 0) is True
    st = r.st()
    assert st.queued == 0 and not st.queue and not st.done
    assert st.gfns.entries() == [None] * 64
    assert all(w.state is WorkState.CANCELLED for w in works)
    assert r.pager.cancelled == [works[1]]
    cleared = r.kinds("completion_queue_cleared")[-1]
    assert cleared.cancelled == [works[1].token] and cleared.dropped_done == [works[0].token]
    # the late page-in completion is ignored; nothing is ever delivered
    assert r.pager.finish(works[1]) is False
    injected_before = list(r.v0.injected)
    for _ in range(3):
        assert r.host.before_entry(0) == []
    assert r.v0.injected == injected_before
    assert not r.kinds("async_pf_ready")[1:]  # only the first enable's wake-all was ever ready


def test_disable_keeps_send_user_only_and_id() -> None:
    r = Rig("2.6.38")
    r.enable(extra=2)
    r.host.on_swapped_fault(0, 1, 0x1000)
    assert r.st().send_user_only is False and r.st().id == 1
    r.host.wrmsr(0, EN, 0)
    assert r.st().send_user_only is False and r.st().id == 1


def test_send_user_only_follows_send_always_2638() -> None:
    r = Rig("2.6.38")
    r.enable(extra=2)
    assert r.st().send_user_only is False
    r.enable()
    assert r.st().send_user_only is True


def test_send_user_only_stale_after_gpa_gp_2638() -> None:
    r = Rig("2.6.38")
    r.enable(extra=2)  # SEND_ALWAYS: send_user_only = False
    assert r.host.wrmsr(0, EN, (RAM_SIZE * 2) | 1) is False  # no SEND_ALWAYS, but #GP
    assert r.st().send_user_only is False  # step 5 never ran


def test_reenable_keeps_outstanding_works() -> None:
    r = Rig("seed")
    r.enable_and_drain()
    r.host.on_swapped_fault(0, 0x42, 0x42000)
    r.v0.deliver(r.mem)
    assert r.enable(area=AREA + 0x40)  # move the area: no clearing
    st = r.st()
    assert [w.gfn for w in st.queue] == [0x42] and st.gfns.find(0x42)
    assert st.area_gpa == AREA + 0x40


def test_rdmsr_returns_msr_val_and_emits() -> None:
    r = Rig("2.6.38")
    r.enable(extra=2)
    assert r.host.rdmsr(0, EN) == AREA | 3
    assert r.kinds("msr_read")[-1].value == AREA | 3
    dec = r.st().msr
    assert dec["gpa"] == AREA and dec["enabled"] and dec["send_always"] and dec["reserved"] == 0


def test_unknown_msr() -> None:
    r = Rig("seed")
    assert r.host.wrmsr(0, 0x4B564D06, 1) is False  # ASYNC_PF_INT is 5.8 only
    assert r.kinds("gp")
    with pytest.raises(MsrFault):
        r.host.rdmsr(0, 0x4B564D06)


def test_wrmsr_value_must_be_u64() -> None:
    r = Rig("seed")
    with pytest.raises(ValueError):
        r.host.wrmsr(0, EN, 1 << 64)


def test_migration_restore_write_releases_waiters() -> None:
    # the source's value is saved (msrs_to_save) and written on the destination vCPU:
    # its wake-all releases every task the guest had waiting
    src = Rig("2.6.38")
    src.enable(extra=2)
    saved = src.host.rdmsr(0, EN)
    dst = Rig("2.6.38")
    assert dst.host.wrmsr(0, EN, saved)
    dst.host.before_entry(0)
    assert dst.v0.deliver(dst.mem) == [(0xFFFFFFFF, 2)]
