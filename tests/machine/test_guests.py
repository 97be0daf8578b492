"""The test guests (guests/machine/*.S, docs/test-guests.md) run on apfdbg's machine.

Each guest checks one machine feature from the inside and ends the run itself: status 1 is a pass,
(N << 1) | 1 names the failed check N (see the guest's source), 0x100 + v an unexpected vector v.
These tests also check what can be seen from the outside: the console of every vCPU and the
events the machine reports (which vectors it delivered, with which error codes and CR2).

The committed images are used as they are (a machine needs no toolchain); the rebuild tests make
them again from source with guests/Makefile (GNU as and ld) and run those too.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from apfdbg.machine.config import MachineConfig
from apfdbg.machine.image import load_image
from apfdbg.machine.machine import Machine

ROOT = Path(__file__).resolve().parents[2]
GUESTS = ROOT / "guests"
IMAGES = GUESTS / "machine"

PASS, DEADLOCK, SHUTDOWN = 1, 2, 4
UD, GP, PF, DF, NP = 6, 13, 14, 8, 11


def explain(status: int) -> str:
    if status & 1:
        value = status >> 1
        if value == 0:
            return "pass"
        if value == 0x200:
            return "the CPU's exception frame was not 16-byte aligned"
        if value == 0x201:
            return "an exception arrived before tl_init"
        if value >= 0x100:
            return f"unexpected vector {value - 0x100:#x}"
        return f"check {value:#x} failed (FAIL {value:#x} in the guest source)"
    return {2: "deadlock", 4: "shutdown (triple fault or bad access)", 6: "instruction limit",
            8: "bad input"}.get(status, "?")


@dataclass
class Run:
    machine: Machine = field(repr=False)
    status: int
    reason: str
    events: list = field(default_factory=list, repr=False)

    def console(self, i: int) -> str:
        return self.machine.vcpus[i].console.decode("utf-8", "replace")

    def injected(self, vcpu: int | None = None) -> list:
        return [e for e in self.events if e.kind == "inject" and (vcpu is None or e.vcpu == vcpu)]

    def vectors(self, vcpu: int | None = None) -> list[int]:
        return [e.vector for e in self.injected(vcpu)]

    def report(self) -> str:
        lines = [f"status {self.status} ({explain(self.status)}): {self.reason}"]
        for i, v in enumerate(self.machine.vcpus):
            for line in v.console.decode("utf-8", "replace").splitlines():
                lines.append(f"  [vCPU {i}] {line}")
        return "\n".join(lines)


def run_guest(image: Path, vcpus: int = 1, max_insns: int = 5_000_000,
              setup: Callable[[Machine], None] | None = None) -> Run:
    m = Machine(load_image(image), MachineConfig(vcpus=vcpus))
    events: list = []
    m.sinks.append(events.append)
    if setup:
        setup(m)
    res = m.run(max_insns=max_insns)
    return Run(m, res.status, res.reason, events)


# --- what each guest must show from the outside ------------------------------------------------
def check_hello(r: Run) -> None:
    n = len(r.machine.vcpus)
    for i in range(n):
        assert r.console(i).startswith(f"hello from vCPU {i}\n"), r.report()
    assert r.console(0).endswith("PASS\n"), r.report()
    assert r.vectors() == []


def check_msr(r: Run) -> None:
    # rdmsr of an unknown MSR, wrmsr of an unknown MSR, non-canonical LSTAR: three #GP(0).
    assert [(e.vector, e.error_code) for e in r.injected()] == [(GP, 0)] * 3
    gp = [e for e in r.events if e.kind in ("msr_read", "msr_write") and e.result == "gp"]
    assert [(e.kind, e.index) for e in gp] == [("msr_read", 0x12345), ("msr_write", 0x12345),
                                               ("msr_write", 0xC0000082)]


def check_cpuid(r: Run) -> None:
    for i in range(len(r.machine.vcpus)):
        assert f"cpuid ok on vCPU {i}\n" in r.console(i)
        leaves = {e.leaf for e in r.events if e.kind == "cpuid" and e.vcpu == i}
        assert {1, 0x40000000, 0x40000001} <= leaves


def check_exceptions(r: Run) -> None:
    expected = [(0, None), (0, None), (UD, None), (3, None), (3, None), (GP, 0x28), (GP, 0xFF8),
                (GP, 0x18), (0x80, None), (0x81, None), (NP, 0x82 * 8 + 2), (0x80, None),
                (0x80, None), (0x80, None), (0x83, None)]
    assert [(e.vector, e.error_code) for e in r.injected()] == expected


def check_usermode(r: Run) -> None:
    expected = [(0x80, None), (GP, 0x81 * 8 + 2), (GP, 3 * 8 + 2)] + [(GP, 0)] * 5
    assert [(e.vector, e.error_code) for e in r.injected()] == expected
    assert "!" not in r.console(0), "an `out` at CPL 3 reached the console"


def check_ist(r: Run) -> None:
    assert r.vectors() == [0x80, DF, DF, DF]
    assert [e.error_code for e in r.injected()][1:] == [0, 0, 0]
    assert r.machine.counts.get("double_fault") == 3


def check_triplefault(r: Run) -> None:
    assert r.console(0) == "triple fault ahead\n", r.report()
    assert r.machine.counts.get("triple_fault") == 1


def check_paging(r: Run) -> None:
    t = 0x40000000
    expected = [(PF, 0, t + 0x1000), (PF, 2, t + 0x1000), (PF, 3, t + 0x2000),
                (PF, 0, t + 0x1000), (PF, 0x11, t + 0x4000), (PF, 0x10, t + 0x1000),
                (PF, 0, t + 0x5000), (PF, 5, t + 0x3000), (PF, 4, t + 0x1000),
                (PF, 7, t + 0x6000), (UD, None, None), (PF, 9, t + 0x7000)]
    assert [(e.vector, e.error_code, e.cr2) for e in r.injected()] == expected
    assert r.console(0) == "paging on\nPASS\n"


def check_apic_timer(r: Run) -> None:
    # one-shot, 4 periodic ticks, divide by 2 and by 128, then the #GP of a non-zero EOI
    assert r.vectors() == [0x40] * 7 + [GP]


def check_ipi(r: Run) -> None:
    assert r.vectors(0) == [0x50, 0x51, 0x52, 0x53, 0x61, 0x60, 0x50, 0x60, 0x70, 0x61]
    assert r.vectors(1) == [0x54]


def check_sti_hlt(r: Run) -> None:
    assert r.vectors() == [0x40, 0x42, 0x43, 0x41]


def check_hlt_if0(r: Run) -> None:
    for i in range(len(r.machine.vcpus)):
        assert r.console(i) == f"vCPU {i} halts with IF = 0\n", r.report()
    assert r.vectors() == []


def check_kvmprobe(r: Run) -> None:
    # apfdbg keeps every rule a KVM quirk stands for: the probe finds none here.
    assert r.console(0) == "quirks 0x0\nPASS\n", r.report()


def check_memtouch(r: Run) -> None:
    assert r.console(0) == "".join(f"round {i} ok\n" for i in range(4)) + "PASS\n", r.report()


@dataclass(frozen=True)
class Case:
    guest: str
    vcpus: int = 1
    status: int = PASS
    check: Callable[[Run], None] | None = None
    max_insns: int = 5_000_000

    @property
    def id(self) -> str:
        return f"{self.guest}-{self.vcpus}vcpu"


CASES = [
    Case("hello", 1, check=check_hello),
    Case("hello", 2, check=check_hello),
    Case("hello", 4, check=check_hello),
    Case("msr", check=check_msr),
    Case("cpuid", 2, check=check_cpuid),
    Case("cpuid", 3, check=check_cpuid),
    Case("exceptions", check=check_exceptions),
    Case("usermode", check=check_usermode),
    Case("ist", check=check_ist),
    Case("triplefault", status=SHUTDOWN, check=check_triplefault),
    Case("paging", check=check_paging),
    Case("apic_timer", check=check_apic_timer),
    Case("ipi", 2, check=check_ipi),
    Case("sti_hlt", check=check_sti_hlt),
    Case("hlt_if0", 1, status=DEADLOCK, check=check_hlt_if0),
    Case("hlt_if0", 2, status=DEADLOCK, check=check_hlt_if0),
    Case("memtouch", check=check_memtouch, max_insns=50_000_000),
    Case("kvmprobe", check=check_kvmprobe),
]


def _check(case: Case, image: Path) -> None:
    r = run_guest(image, case.vcpus, case.max_insns)
    assert r.status == case.status, r.report()
    if case.check:
        case.check(r)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_guest(case: Case) -> None:
    _check(case, IMAGES / f"{case.guest}.elf")


# --- memtouch while the host pages its frames out ------------------------------------------------
@pytest.mark.parametrize("latency", [0, 50], ids=["page-in-latency-0", "page-in-latency-50"])
def test_memtouch_survives_page_out(latency: int) -> None:
    """Every 100,000 instructions the host pages out the whole buffer, the code and the stack;
    the guest's pattern must still read back. Latency 0 is the machine's default pager."""
    image = load_image(IMAGES / "memtouch.elf")
    buf = image.symbol("membuf")
    assert buf is not None and buf.size == 1 << 20
    code = [s.paddr >> 12 for s in image.segments if s.executable]
    gfns = list(range(buf.addr >> 12, (buf.addr + buf.size) >> 12)) + code + [0x10]  # + boot stack
    rounds = []

    def setup(m: Machine) -> None:
        m.page_in_latency = lambda gfn: latency

        def page_out() -> None:
            m.page_out(gfns)
            rounds.append(m.now)
            m.timeline.schedule(m.now + 100_000, page_out)
        m.timeline.schedule(100_000, page_out)

    r = run_guest(IMAGES / "memtouch.elf", 1, 50_000_000, setup)
    assert r.status == PASS, r.report() + f"\n  {r.machine.counts}"
    check_memtouch(r)
    counts = r.machine.counts
    # A sweep over the buffer (a write or a read pass) takes ~650,000 instructions, more than the
    # page-out period: every sweep finds every frame out again, 2 sweeps a round, 4 rounds.
    assert len(rounds) >= 50
    assert counts.get("swapped_fault", 0) >= 8 * 256
    assert counts.get("page_in", 0) == counts.get("swapped_fault", 0)
    assert counts.get("stall", 0) == counts.get("unstall", 0) == counts.get("swapped_fault", 0)


# --- the images are the sources ---------------------------------------------------------------------
def _makefile_guests() -> list[str]:
    text = (GUESTS / "Makefile").read_text()
    body = text.split("GUESTS :=", 1)[1].split("\n\n", 1)[0]
    return body.replace("\\", " ").split()


def test_every_guest_is_built_committed_and_tested() -> None:
    sources = sorted(p.stem for p in IMAGES.glob("*.S"))
    assert sorted(_makefile_guests()) == sources
    assert sorted(p.stem for p in IMAGES.glob("*.elf")) == sources
    assert {c.guest for c in CASES} == set(sources)
    documented = (ROOT / "docs" / "test-guests.md").read_text()
    for name in sources:
        assert f"`{name}`" in documented, f"{name} is missing from docs/test-guests.md"


def _toolchain_missing() -> str | None:
    missing = [t for t in ("make", "as", "ld") if shutil.which(t) is None]
    return f"{', '.join(missing)} not installed (GNU make and binutils build the guests)" if missing else None


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory) -> Path:
    why = _toolchain_missing()
    if why:
        pytest.skip(why)
    out = tmp_path_factory.mktemp("guests")
    proc = subprocess.run(["make", "-C", str(GUESTS), f"OUT={out}"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / "machine"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_rebuilt_guest(case: Case, rebuilt: Path) -> None:
    _check(case, rebuilt / f"{case.guest}.elf")


def test_rebuild_is_reproducible(rebuilt: Path) -> None:
    """Same binutils as the committed images: the same bytes (else the images are stale)."""
    committed = (IMAGES / "toolchain.txt").read_text()
    if (rebuilt / "toolchain.txt").read_text() != committed:
        pytest.skip(f"the committed images were built with other binutils:\n{committed}")
    stale = [p.name for p in sorted(IMAGES.glob("*.elf"))
             if p.read_bytes() != (rebuilt / p.name).read_bytes()]
    assert not stale, f"committed images differ from their sources: {stale} (run `make -C guests`)"


# --- the same guests on KVM, the reference (optional) ---------------------------------------------
sys.path.insert(0, str(GUESTS / "tools"))
import kvmrun  # noqa: E402

@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_guest_on_kvm(case: Case) -> None:
    """The guests are right about the architecture: they pass on a real KVM too. What this host's
    KVM does differently is found at run time by the probe guest (kvmrun.probe_quirks) and skipped
    by the guests through tl_quirks; every other check runs."""
    why = kvmrun.kvm_usable()
    if why:
        pytest.skip(f"no KVM here ({why})")
    quirks = kvmrun.probe_quirks()
    res = kvmrun.run_guest(str(IMAGES / f"{case.guest}.elf"), case.vcpus,
                           timeout=3.0 if case.status == DEADLOCK else 30.0)
    consoles = "\n".join(f"  [vCPU {i}] {c.decode('utf-8', 'replace')}" for i, c in enumerate(res.consoles))
    assert res.status == case.status, (f"status {res.status} ({explain(res.status)}): {res.reason}\n"
                                       f"{consoles}\n  KVM quirks in force: {quirks.describe()}")
