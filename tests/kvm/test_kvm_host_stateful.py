"""The whole host under random page-outs/faults/completions/wake-alls/MSR writes/resets,
checked step by step against a small reference model written straight from the spec."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from kvm_fakes import AREA, RAM_SIZE, Rig

from apfdbg.kvm import EMPTY, MSR_KVM_ASYNC_PF_EN, Outcome, WorkState

U32 = 0xFFFFFFFF
NV = 2
BAD = RAM_SIZE * 2  # an area outside RAM

MSR_VALUES = [  # offsets from the vCPU's own area base (AREA + 0x100 * v); BAD is absolute
    1,
    3,
    0x40 | 1,
    0,
    None,  # 0: disable with no address
    BAD | 1,
    BAD | 3,
    BAD,
    *(1 | (1 << k) for k in range(1, 6)),
]
# a few gfn families: distinct, 0x10000-stride collisions (same home bucket) and wrap-around
GFNS = [1, 2, 3, 0x10000, 0x20000, 0x30000, 0xFC000000, 0xFC010000, 0x8000000, 0x555]


@dataclass
class RWork:
    token: int
    gfn: int | None  # None: wake-all dummy
    done: bool = False


@dataclass
class RVcpu:
    index: int
    msr_val: int = 0
    send_user_only: bool = False
    id: int = 0
    halted: bool = False
    queue: list[RWork] = field(default_factory=list)
    done: list[RWork] = field(default_factory=list)
    queued: int = 0
    hashed: set[int] = field(default_factory=set)


class HostMachine(RuleBasedStateMachine):
    PROFILE = "seed"

    def __init__(self) -> None:
        super().__init__()
        self.r = Rig(self.PROFILE, nvcpus=NV)
        self.ref = [RVcpu(i) for i in range(NV)]
        self.expect_pending: list[list[tuple[int, int, int]]] = [[] for _ in range(NV)]
        self.dead_serials: set[int] = set()  # works dropped by a disable or reset
        self.np_injected: dict[tuple[int, int], int] = {}  # (vcpu, token) -> count
        self.ready_injected: dict[tuple[int, int], int] = {}

    # ---- helpers ----
    def seed(self) -> bool:
        return self.PROFILE == "seed"

    def reserved(self) -> int:
        return 0x3E if self.seed() else 0x3C

    def area_ok(self, rv: RVcpu) -> bool:
        gpa = rv.msr_val & ~0x3F
        return gpa + 4 <= RAM_SIZE

    def ref_clear(self, rv: RVcpu) -> None:
        for w in self.r.host.works(rv.index) + list(self.r.st(rv.index).done):
            self.dead_serials.add(w.serial)
        rv.queue.clear()
        rv.done.clear()
        rv.queued = 0
        rv.hashed.clear()

    def ref_wakeall(self, rv: RVcpu) -> None:
        if not rv.done:
            rv.done.append(RWork(0, None, True))
            rv.queued += 1
            rv.halted = False

    def ref_halt(self, rv: RVcpu) -> None:
        rv.halted = True
        if rv.done:
            rv.halted = False

    # ---- rules ----
    @rule(v=st.integers(0, NV - 1), flag=st.booleans())
    def set_if(self, v: int, flag: bool) -> None:
        self.r.vcpus[v].if_flag = flag

    @rule(v=st.integers(0, NV - 1), cpl=st.sampled_from([0, 3]))
    def set_cpl(self, v: int, cpl: int) -> None:
        self.r.vcpus[v].set_cpl(cpl)

    @rule(v=st.integers(0, NV - 1))
    def deliver(self, v: int) -> None:
        # the machine delivers the queued #PF; the guest reads and zeroes its reason
        port = self.r.vcpus[v]
        got = []
        for (cr2, _ec), (_tok, _reason, area) in zip(port.pending, self.expect_pending[v]):
            got.append((cr2, self.r.mem.read_u32(area)))
            self.r.mem.words[area] = 0
        assert len(port.pending) == len(self.expect_pending[v]) <= 1
        port.pending.clear()
        assert got == [(t, reason) for t, reason, _a in self.expect_pending[v]]
        self.expect_pending[v] = []

    @rule(v=st.integers(0, NV - 1), gfn=st.sampled_from(GFNS))
    def fault(self, v: int, gfn: int) -> None:
        rv, port = self.ref[v], self.r.vcpus[v]
        allowed = port.interrupt_allowed()
        if not allowed:
            expect = Outcome.SYNC
        elif gfn in rv.hashed:
            expect = Outcome.DOUBLEFAULT_HALT
            self.ref_halt(rv)
        else:
            token = ((rv.id << 12) | v) & U32
            rv.id = (rv.id + 1) & U32
            if rv.queued >= 64:
                expect = Outcome.SYNC
            else:
                rv.queue.append(RWork(token, gfn))
                rv.queued += 1
                rv.hashed.add(gfn)
                enabled = bool(rv.msr_val & 1)
                cpl0_halts = port.cpl() == 0 and (self.seed() or rv.send_user_only)
                if not enabled or cpl0_halts:
                    expect = Outcome.HALT
                    self.ref_halt(rv)
                elif self.area_ok(rv):
                    expect = Outcome.ASYNC
                    self.expect_pending[v].append((token, 1, rv.msr_val & ~0x3F))
                    key = (v, token)
                    self.np_injected[key] = self.np_injected.get(key, 0) + 1
                else:
                    expect = Outcome.QUEUED_SILENT
        got = self.r.host.on_swapped_fault(v, gfn, gfn << 12)
        assert got is expect, (got, expect)
        event(f"fault -> {got.value}")

    @rule(v=st.integers(0, NV - 1), pick=st.integers(0, 63))
    def complete(self, v: int, pick: int) -> None:
        flying = self.r.st(v).in_flight
        if not flying:
            assert all(w.done for w in self.ref[v].queue)
            return
        work = flying[pick % len(flying)]
        rw = next(w for w in self.ref[v].queue if w.token == work.token and not w.done)
        rw.done = True
        self.ref[v].done.append(rw)
        self.ref[v].halted = False
        assert self.r.host.complete(work) is True

    @rule(v=st.integers(0, NV - 1))
    def before_entry(self, v: int) -> None:
        rv, port = self.ref[v], self.r.vcpus[v]
        enabled = bool(rv.msr_val & 1)
        expect: list[RWork] = []
        if rv.done and (not enabled or port.interrupt_allowed()):
            w = rv.done.pop(0)
            if w.gfn is None:
                w.token = 0xFFFFFFFF
            else:
                rv.hashed.discard(w.gfn)
                rv.queue.remove(w)
            rv.queued -= 1
            rv.halted = False
            if enabled and self.area_ok(rv):
                self.expect_pending[v].append((w.token, 2, rv.msr_val & ~0x3F))
                if w.gfn is not None:
                    key = (v, w.token)
                    self.ready_injected[key] = self.ready_injected.get(key, 0) + 1
            expect.append(w)
        got = self.r.host.before_entry(v)
        assert [w.token for w in got] == [w.token for w in expect]
        for w in got:
            event("ready: wake-all" if w.wakeup_all else "ready: work")
        for w in got:
            assert w.serial not in self.dead_serials

    @rule(v=st.integers(0, NV - 1), offset=st.sampled_from(MSR_VALUES))
    def wrmsr(self, v: int, offset: int | None) -> None:
        rv = self.ref[v]
        if offset is None:
            value = 0
        elif offset >= BAD:
            value = offset
        else:
            value = AREA + 0x100 * v + offset
        if value & self.reserved():
            expect = False
        else:
            rv.msr_val = value
            if not value & 1:
                self.ref_clear(rv)
                expect = True
            elif not self.area_ok(rv):
                expect = False
            else:
                if not self.seed():
                    rv.send_user_only = not value & 2
                self.ref_wakeall(rv)
                expect = True
        assert self.r.host.wrmsr(v, MSR_KVM_ASYNC_PF_EN, value) is expect

    @rule(v=st.integers(0, NV - 1))
    def guest_enables_apf(self, v: int) -> None:
        """What a PV guest does at boot: IF on, user mode, MSR = its area | enable."""
        self.r.vcpus[v].if_flag = True
        self.r.vcpus[v].set_cpl(3)
        self.wrmsr(v, 1)

    @rule(v=st.integers(0, NV - 1))
    def wake_all(self, v: int) -> None:
        had_done = bool(self.ref[v].done)
        self.ref_wakeall(self.ref[v])
        got = self.r.host.wake_all(v)
        assert (got is None) == had_done

    @rule(v=st.integers(0, NV - 1))
    def reset(self, v: int) -> None:
        rv = self.ref[v]
        rv.msr_val = 0
        self.ref_clear(rv)
        rv.halted = False
        self.r.host.reset_vcpu(v)

    @precondition(lambda self: any(rv.halted for rv in self.ref))
    @rule(data=st.data())
    def interrupt_wake(self, data) -> None:
        v = data.draw(st.sampled_from([rv.index for rv in self.ref if rv.halted]))
        self.ref[v].halted = False
        self.r.host.on_interrupt_wake(v)

    @rule()
    def late_completion_of_dropped_work_is_ignored(self) -> None:
        for _, _, work in self.r.pager.requests:
            if work.state is WorkState.CANCELLED:
                assert self.r.pager.finish(work) is False

    # ---- invariants ----
    @invariant()
    def matches_reference(self) -> None:
        for rv in self.ref:
            s = self.r.st(rv.index)
            assert s.msr_val == rv.msr_val
            assert s.id == rv.id
            assert s.halted == rv.halted == self.r.vcpus[rv.index].halted
            assert s.queued == rv.queued
            assert [w.token for w in s.queue] == [w.token for w in rv.queue]
            assert [w.token for w in s.done] == [w.token for w in rv.done]
            assert s.gfns.gfns() == rv.hashed
            if not self.seed():
                assert s.send_user_only == rv.send_user_only

    @invariant()
    def queued_counts_queue_and_dummies(self) -> None:
        for i in range(NV):
            s = self.r.st(i)
            assert s.queued == len(s.queue) + sum(1 for w in s.done if w.wakeup_all)
            assert 0 <= s.queued <= 64

    @invariant()
    def hash_holds_exactly_the_outstanding_gfns(self) -> None:
        for i in range(NV):
            s = self.r.st(i)
            outstanding = [w.gfn for w in s.queue]
            assert len(outstanding) == len(set(outstanding))
            stored = [g for g in s.gfns.slots if g != EMPTY]
            assert sorted(stored) == sorted(outstanding)
            for g in outstanding:
                assert s.gfns.find(g)

    @invariant()
    def at_most_one_ready_per_not_present(self) -> None:
        counts: dict[tuple[int, int], int] = {}
        for e in self.r.kinds("async_pf_ready"):
            if e.delivered_token is not None and not e.wakeup_all:
                key = (e.vcpu, e.delivered_token)
                counts[key] = counts.get(key, 0) + 1
        for key, n in counts.items():
            assert n <= 1, key
        assert counts == self.ready_injected

    @invariant()
    def nothing_delivered_after_disable(self) -> None:
        for e in self.r.kinds("async_pf_ready"):
            assert e.work not in self.dead_serials

    @invariant()
    def works_states_consistent(self) -> None:
        for i in range(NV):
            s = self.r.st(i)
            for w in s.queue:
                assert w.state in (WorkState.PAGING_IN, WorkState.DONE)
            for w in s.done:
                assert w.state is WorkState.DONE


class HostMachine2638(HostMachine):
    PROFILE = "2.6.38"


TestHostSeed = HostMachine.TestCase
TestHostSeed.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
TestHost2638 = HostMachine2638.TestCase
TestHost2638.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
