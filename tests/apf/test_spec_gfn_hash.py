"""Spec "Host per-vCPU state: apf.gfns[64]": hash_32 with 0x9e370001, linear probing with
wrap-around 63 -> 0, add at the first empty slot, lookup, backward-shift delete, driven by the
apf_script guest faulting on gfns chosen to collide, with page-ins completed in another order.

The reference is written here from the spec (apf_rig.RefGfnHash / hash_32_ref) and pinned by
hand-computed tables; apfdbg's own hash_32 is only compared against it.
"""
from __future__ import annotations

import pytest

from apf_rig import (PF_SKIP, PROFILES, TOUCH_MARK, WAKE_ALL, ManualLatency, RefGfnHash, Rig,
                     hash_32_ref)
from apfdbg.kvm import hash_32

# For gfn < 0x10000: gfn * 0x9e370001 = ((gfn * 0x9e37) << 16) + gfn, so mod 2**32 the top 6 bits
# are ((gfn * 0x9e37) & 0xffff) >> 10:
#   0x21e * 0x9e37 = 0x14ef872 -> 0xf872 >> 10 = 62
#   0x240 * 0x9e37 = 0x163fbc0 -> 0xfbc0 >> 10 = 62
#   0x277 * 0x9e37 = 0x185f991 -> 0xf991 >> 10 = 62
#   0x209 * 0x9e37 = 0x141fdef -> 0xfdef >> 10 = 63
#   0x22b * 0x9e37 = 0x157013d -> 0x013d >> 10 = 0
#   0x10000 * 0x9e370001 = 0x9e3700010000 -> 0x00010000 mod 2**32 -> bucket 0 (kvm-model.md)
A1, A2, A3, B1, C1 = 0x21E, 0x240, 0x277, 0x209, 0x22B
HAND_HOME = {A1: 62, A2: 62, A3: 62, B1: 63, C1: 0, 0x10000: 0, 0x20000: 0}

FAULT_ORDER = [A1, B1, A2, C1, A3]
COMPLETE_ORDER = [A1, C1, B1, A3, A2]
# the table (slot -> gfn) after each add, in FAULT_ORDER: A2 wraps from 63 to 0
HAND_ADDS = [
    {62: A1},
    {62: A1, 63: B1},
    {62: A1, 63: B1, 0: A2},
    {62: A1, 63: B1, 0: A2, 1: C1},
    {62: A1, 63: B1, 0: A2, 1: C1, 2: A3},
]
# after each delete, in COMPLETE_ORDER, with the backward-shift moves (from, to)
HAND_DELETES = [
    ({62: A2, 63: B1, 0: C1, 1: A3}, [(0, 62), (1, 0), (2, 1)]),
    ({62: A2, 63: B1, 0: A3}, [(1, 0)]),
    ({62: A2, 63: A3}, [(0, 63)]),
    ({62: A2}, []),
    ({}, []),
]


def table(snap) -> dict[int, int]:
    return {i: g for i, g in enumerate(snap.gfns) if g is not None}


def test_gfn_hash_hand_computed_buckets():
    """The reference and apfdbg's hash_32 agree with the hand-computed buckets."""
    for gfn, home in HAND_HOME.items():
        assert hash_32_ref(gfn) == home, hex(gfn)
        assert hash_32(gfn, 6) == home, hex(gfn)
    ref = RefGfnHash()
    for gfn, expect in zip(FAULT_ORDER, HAND_ADDS):
        ref.add(gfn)
        assert ref.table() == expect
    for gfn, (expect, moves) in zip(COMPLETE_ORDER, HAND_DELETES):
        assert ref.delete(gfn) == moves
        assert ref.table() == expect


def _hash_rig(profile: str, retouch: int | None = None):
    """Fault on FAULT_ORDER (the task skips each access), optionally touch `retouch` again
    before its page is in, complete the page-ins one at a time in COMPLETE_ORDER (the next one
    when the previous page-ready arrives), then read every page again."""
    r = Rig(profile, latency=ManualLatency(kind="manual"), pf_mode=PF_SKIP)
    data = {g: r.page(g) for g in FAULT_ORDER}
    r.addr_list([g << 12 for g in FAULT_ORDER] * 2)
    r.enable()
    r.touchlist(0, 5)
    if retouch is not None:
        r.mode(0)                         # PF_SLEEP: an ordinary task again
        r.touch(retouch << 12)
    r.wait_ready(1 + 5)
    r.touchlist(5, 5)
    r.end()

    log = {"adds": [], "readies": [], "tokens": {}}
    pending = list(COMPLETE_ORDER)

    def complete_next():
        g = pending.pop(0)
        work = r.kvm.find_work(log["tokens"][g], r.vcpu)
        assert work is not None and work.gfn == g
        assert r.kvm.complete(work)

    def on_np(e):
        log["tokens"][e.gfn] = e.token
        log["adds"].append((e, r.snap()))
        if len(log["adds"]) == 5:
            r.at(1_000, complete_next)

    def on_ready(e):
        if e.wakeup_all:
            return
        log["readies"].append((e, r.snap()))
        if pending:
            r.at(1_000, complete_next)
    r.on("async_pf_not_present", on_np)
    r.on("async_pf_ready", on_ready)
    return r, data, log


@pytest.mark.parametrize("profile", PROFILES)
def test_gfn_hash_collisions_wraparound_and_backward_shift(profile):
    r, data, log = _hash_rig(profile)
    r.run()
    ref = RefGfnHash()
    # adds, in fault order: slots as the reference and the hand table say
    assert [e.gfn for e, _ in log["adds"]] == FAULT_ORDER
    for (e, snap), expect in zip(log["adds"], HAND_ADDS):
        slot = ref.add(e.gfn)
        assert e.slot == slot
        assert table(snap) == ref.table() == expect
        assert all(snap.gfn_home[i] == HAND_HOME[g] for i, g in expect.items())
    s = log["adds"][-1][1]
    assert s.gfn_distance[0] == 2 and s.gfn_distance[2] == 4, "A2 wrapped 62 -> 0, A3 to 2"
    # deletes, in completion order, one page-ready each
    assert [e.gfn for e, _ in log["readies"]] == COMPLETE_ORDER
    for (e, snap), (expect, moves) in zip(log["readies"], HAND_DELETES):
        slot = ref.find(e.gfn)
        ref_moves = ref.delete(e.gfn)
        assert e.slot == slot
        assert e.moves == ref_moves == moves
        assert table(snap) == ref.table() == expect
        assert e.delivered_token == log["tokens"][e.gfn]
    # the guest: tokens in fault order, page-readies in completion order, data intact
    tokens = log["tokens"]
    assert [p.token for p in r.not_presents()] == [tokens[g] for g in FAULT_ORDER]
    assert r.ready_tokens() == [WAKE_ALL] + [tokens[g] for g in COMPLETE_ORDER]
    assert r.vals(0, 5) == [TOUCH_MARK] * 5
    assert r.vals(5, 5) == [data[g] for g in FAULT_ORDER]
    assert not r.ev("async_pf_doublefault") and r.snap().gfns == [None] * 64


@pytest.mark.parametrize("profile", PROFILES)
def test_gfn_hash_lookup_follows_wraparound_and_shifts(profile):
    """The task touches A3 again while its page is out: the lookup probes 62, 63, 0, 1, 2 and
    finds it (doublefault, halt).  Each page-ready before A3's wakes the vCPU, the access
    retries and finds A3 again where the backward shift moved it: 2, 1, 0, 63; then its own
    page-ready arrives and the access succeeds."""
    r, data, log = _hash_rig(profile, retouch=A3)
    r.run()
    df = r.ev("async_pf_doublefault")
    assert [e.gfn for e in df] == [A3] * 4
    assert [e.slot for e in df] == [2, 1, 0, 63]
    assert [h.reason for h in r.ev("halt")] == ["doublefault"] * 4
    assert r.results(r.ops.index((4, A3 << 12, 3, 0)))[0] == data[A3]
    tokens = log["tokens"]
    assert r.ready_tokens() == [WAKE_ALL] + [tokens[g] for g in COMPLETE_ORDER]
    assert r.vals(5, 5) == [data[g] for g in FAULT_ORDER]
