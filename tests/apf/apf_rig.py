"""The rig of the async-PF spec tests: the `apf_script` guest (guests/apf/apf_script.S) on a
machine with the KVM host model attached.

A test builds a script of guest operations, chooses the host's profile, latency and the frames it
swaps out, reacts to events if it needs to (``on``: a sink; ``at``: a timeline callback) and runs.
Afterwards it reads what the guest saw (``pf_log``, ``results``, ``ready_tokens``, ``vals``) and
what the host did (``events``, ``kvm`` state).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from apfdbg.host.kvm import build_machine
from apfdbg.host.pager import FixedLatency, ManualLatency  # noqa: F401 (re-exported for the tests)
from apfdbg.machine.config import MachineConfig
from apfdbg.machine.image import load_image

GUEST = Path(__file__).resolve().parents[2] / "guests" / "apf" / "apf_script.elf"

MSR_EN = 0x4B564D02
MSR_TSC_AUX = 0xC0000103
EN, SEND_ALWAYS = 1, 2
WAKE_ALL = 0xFFFFFFFF
TOUCH_MARK = 0x70C470C470C470C4  # what a touch leaves in RAX when its access was skipped
KERNEL_CS, USER_CS = 0x08, 0x23
PROFILES = ["seed", "2.6.38"]

# ops (apf_script.S)
OP_END, OP_WRMSR, OP_RDMSR, OP_CPUID, OP_TOUCH, OP_TOUCHLIST = 0, 1, 2, 3, 4, 5
OP_WAIT_READY, OP_SPIN, OP_MARK, OP_MODE, OP_TIMER, OP_HLT = 6, 7, 8, 9, 10, 11
T_USER, T_IF, T_WRITE, T_SHADOW = 1, 2, 4, 8
PF_SLEEP, PF_IGNORE, PF_SKIP = 0, 1, 2

#: first data frame the tests use: well above the image (checked in Rig)
DATA_GFN = 0x300


def hash_32_ref(gfn: int) -> int:
    """The spec's bucket, written out here (not apfdbg's): hash_32(gfn & 0xffffffff, 6) with
    GOLDEN_RATIO_PRIME_32 = 0x9e370001: the top 6 bits of the 32-bit product."""
    return (((gfn & 0xFFFFFFFF) * 0x9E370001) & 0xFFFFFFFF) >> 26


class RefGfnHash:
    """The kernel's per-vCPU gfn table, written from the spec: 64 slots, linear probing,
    add at the first empty slot, backward-shift delete.  None = empty."""

    def __init__(self) -> None:
        self.slots: list[int | None] = [None] * 64

    def add(self, gfn: int) -> int:
        k = hash_32_ref(gfn)
        while self.slots[k] is not None:
            k = (k + 1) & 63
        self.slots[k] = gfn
        return k

    def find(self, gfn: int) -> int | None:
        k = hash_32_ref(gfn)
        for _ in range(64):
            if self.slots[k] == gfn:
                return k
            if self.slots[k] is None:
                return None
            k = (k + 1) & 63
        return None

    def delete(self, gfn: int) -> list[tuple[int, int]]:
        i = self.find(gfn)
        assert i is not None
        moves = []
        j = i
        self.slots[i] = None
        while True:
            j = (j + 1) & 63
            if self.slots[j] is None:
                return moves
            k = hash_32_ref(self.slots[j])
            # an entry whose home k lies cyclically in (i, j] stays
            stays = (i < k <= j) if i <= j else (k > i or k <= j)
            if not stays:
                self.slots[i] = self.slots[j]
                self.slots[j] = None
                moves.append((j, i))
                i = j

    def table(self) -> dict[int, int]:
        return {i: g for i, g in enumerate(self.slots) if g is not None}


@dataclass(frozen=True)
class PfEntry:
    """One #PF as the guest's handler logged it."""
    reason: int
    cr2: int
    err: int
    cs: int
    rip: int
    rflags: int
    tsc: int
    op: int

    @property
    def token(self) -> int:
        return self.cr2 & 0xFFFFFFFF


class Rig:
    def __init__(self, profile: str = "seed", *, vcpus: int = 1, script_vcpu: int = 0,
                 latency=None, pf_mode: int = PF_SLEEP, max_insns: int = 5_000_000,
                 quantum: int = 10_000) -> None:
        self.image = load_image(GUEST)
        self.m = build_machine(self.image, MachineConfig(vcpus=vcpus, max_insns=max_insns,
                                                         quantum=quantum, tcg_buffer_mib=4),
                               profile=profile, latency=latency or FixedLatency(instructions=20_000))
        self.kvm = self.m.host.kvm
        self.profile = profile
        self.vcpu = script_vcpu
        self.events: list = []
        self.m.sinks.append(self.events.append)
        self.ops: list[tuple[int, int, int, int]] = []
        self.area = self.sym("apf_area")
        assert self.area % 64 == 0
        assert self.sym("guest_end") <= DATA_GFN << 12, "the image reaches the test's data frames"
        self.w64("script_vcpu", script_vcpu)
        self.w64("pf_mode", pf_mode)
        self.result = None

    # ---- guest memory ----
    def sym(self, name: str) -> int:
        s = self.image.symbol(name)
        assert s is not None, name
        return s.addr

    def w64(self, name: str, value: int, index: int = 0) -> None:
        self.m.ram.write_u64(self.sym(name) + 8 * index, value)

    def r64(self, name: str, index: int = 0) -> int:
        return self.m.ram.read_u64(self.sym(name) + 8 * index)

    # ---- script ----
    def op(self, code: int, a: int = 0, b: int = 0, c: int = 0) -> int:
        self.ops.append((code, a, b, c))
        return len(self.ops) - 1

    def wrmsr(self, value: int, msr: int = MSR_EN) -> int:
        return self.op(OP_WRMSR, msr, value)

    def rdmsr(self, msr: int = MSR_EN) -> int:
        return self.op(OP_RDMSR, msr)

    def enable(self, bits: int = EN, drain: bool = True) -> int:
        """Enable APF with the guest's area; by default also take the enable's wake-all."""
        i = self.wrmsr(self.area | bits)
        if drain:
            self.wait_ready(1)
        return i

    def cpuid(self, leaf: int) -> int:
        return self.op(OP_CPUID, leaf)

    def touch(self, addr: int, *, user: bool = True, if_: bool = True, write: int | None = None,
              shadow: bool = False) -> int:
        flags = (T_USER if user else 0) | (T_IF if if_ else 0) | (T_SHADOW if shadow else 0)
        if write is not None:
            flags |= T_WRITE
        return self.op(OP_TOUCH, addr, flags, write or 0)

    def touchlist(self, first: int, count: int, *, user: bool = True, if_: bool = True) -> int:
        return self.op(OP_TOUCHLIST, first, count, (T_USER if user else 0) | (T_IF if if_ else 0))

    def wait_ready(self, n: int) -> int:
        """Sleep (sti; hlt at CPL 0) until the guest has seen n page-ready #PFs in all."""
        return self.op(OP_WAIT_READY, n)

    def spin(self, loops: int, *, if_: bool = False) -> int:
        return self.op(OP_SPIN, loops, T_IF if if_ else 0)

    def mark(self, value: int) -> int:
        return self.op(OP_MARK, value)

    def mode(self, pf_mode: int) -> int:
        return self.op(OP_MODE, pf_mode)

    def timer(self, count: int, touch: int = 0) -> int:
        return self.op(OP_TIMER, count, touch)

    def hlt_if0(self) -> int:
        """`cli; hlt`: an interrupt cannot end it."""
        return self.op(OP_HLT)

    def end(self) -> int:
        return self.op(OP_END)

    # ---- host side ----
    def page(self, gfn: int, value: int | None = None, *, out: bool = True) -> int:
        """Put a recognisable u64 at the start of frame gfn and swap it out now (t = 0)."""
        value = (0xDA7A << 48) | gfn if value is None else value
        self.m.ram.write_u64(gfn << 12, value)
        if out:
            assert self.m.page_out(gfn) == [gfn]
        return value

    def addr_list(self, addrs: list[int], first: int = 0) -> None:
        for i, a in enumerate(addrs):
            self.w64("addr_list", a, first + i)

    def on(self, kind: str, fn: Callable, *, vcpu: int | None = None, once: bool = False) -> None:
        """Call fn(event) for every event of this kind (runs inside the machine: defer model
        calls with ``at``)."""
        fired = [False]

        def sink(e) -> None:
            if e.kind == kind and (vcpu is None or e.vcpu == vcpu) and not (once and fired[0]):
                fired[0] = True
                fn(e)
        self.m.sinks.append(sink)

    def on_mark(self, value: int, fn: Callable[[], None]) -> None:
        """fn() when the guest's OP_MARK `value` executes (between engine runs: page-outs and
        model commands are safe there)."""
        def sink(e) -> None:
            if e.kind == "msr_write" and e.index == MSR_TSC_AUX and e.value == value:
                fn()
        self.m.sinks.append(sink)

    def at(self, delay: int, fn: Callable[[], None]) -> None:
        """fn() on the machine's timeline `delay` instructions from now."""
        self.m.timeline.schedule(self.m.now + delay, fn)

    def state(self):
        return self.kvm.state(self.vcpu)

    def snap(self):
        return self.kvm.snapshot()[self.vcpu]

    # ---- running ----
    def run(self, expect_status: int | None = 1):
        assert self.ops and self.ops[-1][0] == OP_END, "the script must end with end()"
        base = self.sym("ops")
        for i, op in enumerate(self.ops):
            for j, v in enumerate(op):
                self.m.ram.write_u64(base + 32 * i + 8 * j, v)
        self.result = self.m.run()
        if expect_status is not None:
            assert self.result.status == expect_status, (self.result, self.console())
            if expect_status == 1:
                assert self.r64("script_done") == 1
        return self.result

    def console(self) -> str:
        return "".join(bytes(v.console).decode(errors="replace") for v in self.m.vcpus)

    # ---- what the guest saw ----
    def results(self, i: int) -> tuple[int, int, int, int]:
        base = self.sym("results") + 32 * i
        return tuple(self.m.ram.read_u64(base + 8 * k) for k in range(4))

    def r0(self, i: int) -> int:
        return self.results(i)[0]

    def pf_log(self) -> list[PfEntry]:
        n = self.r64("pf_log_n")
        assert n <= 256
        base = self.sym("pf_log")
        return [PfEntry(*(self.m.ram.read_u64(base + 64 * i + 8 * k) for k in range(8)))
                for i in range(n)]

    def not_presents(self) -> list[PfEntry]:
        return [e for e in self.pf_log() if e.reason == 1]

    def readies(self) -> list[PfEntry]:
        return [e for e in self.pf_log() if e.reason == 2]

    def ready_tokens(self) -> list[int]:
        return [self.r64("ready_tokens", i) for i in range(self.r64("ready_n"))]

    def vals(self, first: int, count: int) -> list[int]:
        return [self.r64("vals", first + i) for i in range(count)]

    def reason_word(self) -> int:
        return self.m.ram.read_u32(self.area)

    # ---- what the host did ----
    def ev(self, *kinds: str, vcpu: int | None = -1) -> list:
        """Events of these kinds (of the script vCPU by default; vcpu=None: any)."""
        want = self.vcpu if vcpu == -1 else vcpu
        return [e for e in self.events if e.kind in kinds and (want is None or e.vcpu == want)]

    def kvm_msr_writes(self) -> list:
        return [e for e in self.ev("msr_write") if e.handler == "kvm"]

