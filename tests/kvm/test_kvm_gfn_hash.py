"""The per-vCPU gfn table (apfdbg.kvm.gfn_hash) against hand-computed values and a
brute-force reference."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from apfdbg.kvm.gfn_hash import (
    EMPTY,
    GOLDEN_RATIO_32,
    GOLDEN_RATIO_PRIME_32,
    TABLE_SIZE,
    GfnHash,
    hash_32,
)


# ---- hash_32 by hand ---------------------------------------------------------------------
# 0x9e370001 = 1001 1110 0011 0111 0000 0000 0000 0001; the bucket is the top 6 bits of the
# 32-bit product.
@pytest.mark.parametrize(
    "gfn, bucket",
    [
        (0, 0),  # 0 * G = 0
        (1, 39),  # G itself: top 6 bits 100111 = 39
        (2, 15),  # 2G = 0x1_3c6e_0002 -> 0x3c6e0002: top bits 001111 = 15
        (0x100, 13),  # 0x9e_3700_0100 -> 0x37000100: 001101 = 13
        (0x10000, 0),  # G << 16 keeps only the low 0x0001: 0x00010000 -> 0
        (0x8000000, 2),  # (k << 16) * G == k << 16 (mod 2^32): k = 0x800 -> 0x08000000 -> 2
        (0xFC000000, 63),  # k = 0xfc00 -> 0xfc000000 -> 111111 = 63
        (0xFC010000, 63),
        (0x1_0000_0001, 39),  # only the low 32 bits of a gfn are hashed
    ],
)
def test_hash_32_hand_computed_2010_constant(gfn: int, bucket: int) -> None:
    assert hash_32(gfn, 6, GOLDEN_RATIO_PRIME_32) == bucket
    assert GfnHash().home(gfn) == bucket


def test_hash_32_hand_computed_modern_constant() -> None:
    # 0x61c88647: top 6 bits 011000 = 24; 2 * 0x61c88647 = 0xc3910c8e: 110000 = 48
    assert hash_32(1, 6, GOLDEN_RATIO_32) == 24
    assert hash_32(2, 6, GOLDEN_RATIO_32) == 48
    assert GfnHash(GOLDEN_RATIO_32).home(1) == 24


def test_hash_32_bits_range() -> None:
    with pytest.raises(ValueError):
        hash_32(1, 0)
    assert hash_32(0xFFFFFFFF, 32) == (0xFFFFFFFF * GOLDEN_RATIO_PRIME_32) & 0xFFFFFFFF


def test_2010_constant_collides_on_0x10000_gfn_strides() -> None:
    # every gfn k << 16 with k < 1024 lands in bucket 0 (why the constant was replaced)
    assert {GfnHash().home(k << 16) for k in range(1024)} == {0}


# ---- table behaviour ---------------------------------------------------------------------
def test_empty_table() -> None:
    t = GfnHash()
    assert t.slots == [EMPTY] * 64
    assert t.entries() == [None] * 64
    assert not t.find(5)
    assert len(t) == 0


def test_add_goes_to_home_bucket() -> None:
    t = GfnHash()
    assert t.add(1) == 39
    assert t.slots[39] == 1
    assert t.distance(39) == 0
    assert t.lookup(1).probes == 0


def test_collisions_probe_linearly() -> None:
    t = GfnHash()
    gfns = [k << 16 for k in range(1, 6)]  # all home 0
    assert [t.add(g) for g in gfns] == [0, 1, 2, 3, 4]
    for i, g in enumerate(gfns):
        look = t.lookup(g)
        assert look.found and look.slot == i and look.probes == i
        assert t.distance(i) == i


def test_wrap_around_63_to_0() -> None:
    t = GfnHash()
    a, b, c = 0xFC000000, 0xFC010000, 0xFC020000  # all home 63
    assert [t.add(a), t.add(b), t.add(c)] == [63, 0, 1]
    assert t.distance(0) == 1 and t.distance(1) == 2
    assert all(t.find(g) for g in (a, b, c))


def test_delete_backward_shift_across_wrap() -> None:
    t = GfnHash()
    a, b, c = 0xFC000000, 0xFC010000, 0xFC020000  # home 63 -> slots 63, 0, 1
    d = 0x8000000  # home 2 -> slot 2: lies in (i, j] and stays
    for g in (a, b, c, d):
        t.add(g)
    moves = t.delete(a)
    assert moves == [(0, 63), (1, 0)]
    assert t.slots[63] == b and t.slots[0] == c and t.slots[1] == EMPTY and t.slots[2] == d
    assert not t.find(a)
    assert all(t.find(g) for g in (b, c, d))


def test_delete_keeps_entry_whose_home_lies_between() -> None:
    t = GfnHash()
    x1, x2 = 0x10000, 0x20000  # home 0 -> slots 0, 1
    y = 0x400 << 16  # k = 0x400 -> home 1 -> slot 2 (1 is taken)
    for g in (x1, x2, y):
        t.add(g)
    assert t.slots[:3] == [x1, x2, y]
    t.delete(x2)  # i = 1; y's home 1 is not in (1, 2] -> y moves into 1
    assert t.slots[:3] == [x1, y, EMPTY]
    t2 = GfnHash()
    for g in (x1, x2, y):
        t2.add(g)
    t2.delete(x1)  # i = 0: x2 (home 0) moves to 0; then y (home 1) in (1, 2]? no -> moves to 1
    assert t2.slots[:3] == [x2, y, EMPTY]
    assert all(t2.find(g) for g in (x2, y))


def test_find_bounded_on_full_table() -> None:
    t = GfnHash()
    gfns = [k << 16 for k in range(64)]  # all 64 in bucket 0 -> fill the table
    for g in gfns:
        t.add(g)
    assert len(t) == 64
    look = t.lookup(0x12345678)
    assert not look.found and look.probes == TABLE_SIZE
    with pytest.raises(OverflowError):
        t.add(0x999)


def test_lookup_variants_differ_only_in_probes() -> None:
    posted = GfnHash(stop_at_empty=False)  # Oct 2010 loop: only a hit stops it
    merged = GfnHash(stop_at_empty=True)
    for t in (posted, merged):
        t.add(1)
        t.add(2)
    assert posted.lookup(3).probes == 64 and not posted.lookup(3).found
    assert merged.lookup(3).probes == 0 and not merged.lookup(3).found
    assert posted.lookup(1) == merged.lookup(1)


def test_delete_absent_gfn_quirk_of_2010_code() -> None:
    # Not reachable from the host (a work's gfn is always in the table when it is deleted),
    # but it is what the 2010 code does: the posted lookup ends back on the home bucket,
    # and delete empties that slot whatever it holds.
    g = 0x10000  # home 0
    other = 0x20000  # home 0 too, so a lookup for it starts at slot 0
    posted = GfnHash(stop_at_empty=False)
    posted.add(g)
    posted.delete(other)
    assert not posted.find(g)  # clobbered
    merged = GfnHash(stop_at_empty=True)
    merged.add(g)
    merged.delete(other)  # lookup stops at the empty slot 1: nothing to clear
    assert merged.find(g)
    guarded = GfnHash(stop_at_empty=False, guard_missing_delete=True)
    guarded.add(g)
    assert guarded.delete(other) == []
    assert guarded.find(g)


def test_reset() -> None:
    t = GfnHash()
    t.add(7)
    t.reset()
    assert t.slots == [EMPTY] * 64


def test_rejects_bad_gfns() -> None:
    t = GfnHash()
    for bad in (-1, EMPTY, 1 << 64):
        with pytest.raises(ValueError):
            t.add(bad)


# ---- brute-force reference ----------------------------------------------------------------
def naive_table(order: list[int], multiplier: int) -> list[int]:
    """Insert in order into a fresh list by the textbook rule."""
    slots = [EMPTY] * 64
    for g in order:
        k = (((g & 0xFFFFFFFF) * multiplier) & 0xFFFFFFFF) >> 26
        while slots[k] != EMPTY:
            k = (k + 1) % 64
        slots[k] = g
    return slots


def brute_find(slots: list[int], g: int) -> bool:
    return g in slots


# gfns drawn so that collisions are common: multiples of 0x10000 (k >> 10 is the bucket) plus noise
gfn_st = st.one_of(
    st.integers(0, 1023).map(lambda k: k << 16),
    st.integers(0, 200),
    st.integers(0, (1 << 52) - 1),
)


@given(st.lists(st.tuples(st.booleans(), gfn_st), max_size=200), st.booleans(), st.booleans())
@settings(max_examples=300)
def test_against_brute_force(ops, modern: bool, posted: bool) -> None:
    mult = GOLDEN_RATIO_32 if modern else GOLDEN_RATIO_PRIME_32
    t = GfnHash(mult, stop_at_empty=not posted)
    order: list[int] = []
    for is_add, g in ops:
        if is_add:
            if g in order or len(order) == 64:
                continue
            t.add(g)
            order.append(g)
        else:
            if not order:
                continue
            victim = order[g % len(order)]
            t.delete(victim)
            order.remove(victim)
        # Algorithm R property: after any deletes the table is exactly the table of the
        # surviving keys inserted in their original order
        assert t.slots == naive_table(order, mult)
        for x in order:
            assert t.find(x) and brute_find(t.slots, x)
        assert t.find(g) == brute_find(t.slots, g)


class GfnHashMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.t = GfnHash()
        self.ref: list[int] = []  # insertion order of present gfns

    @precondition(lambda self: len(self.ref) < 64)
    @rule(g=gfn_st)
    def add(self, g: int) -> None:
        if g in self.ref:
            assert self.t.find(g)
            return
        slot = self.t.add(g)
        assert self.t.slots[slot] == g
        self.ref.append(g)

    @precondition(lambda self: bool(self.ref))
    @rule(data=st.data())
    def delete(self, data) -> None:
        g = data.draw(st.sampled_from(self.ref))
        before = self.t.slots
        moves = self.t.delete(g)
        self.ref.remove(g)
        for src, dst in moves:
            assert before[src] != EMPTY
        assert not self.t.find(g)

    @rule(g=gfn_st)
    def lookup_absent_or_present(self, g: int) -> None:
        assert self.t.find(g) == (g in self.ref)

    @invariant()
    def contents_match(self) -> None:
        assert sorted(self.t) == sorted(self.ref)
        assert len(set(self.t)) == len(self.ref)

    @invariant()
    def runs_have_no_holes(self) -> None:
        slots = self.t.slots
        for s, v in enumerate(slots):
            if v == EMPTY:
                continue
            k = self.t.home(v)
            while k != s:  # every slot from home to the entry is occupied
                assert slots[k] != EMPTY
                k = (k + 1) % 64
            assert self.t.distance(s) == (s - self.t.home(v)) % 64

    @invariant()
    def equals_reinsertion(self) -> None:
        assert self.t.slots == naive_table(self.ref, GOLDEN_RATIO_PRIME_32)


TestGfnHashMachine = GfnHashMachine.TestCase
TestGfnHashMachine.settings = settings(max_examples=150, stateful_step_count=80)
