"""The reference guest kernel (guests/refkernel, docs/refkernel.md) run through the machine and the
simulated KVM host.

- with no host (no KVM feature bit): a plain SMP scheduler that runs every task to the end;
- under the KVM host with host paging of the task pages: async PF in user and kernel mode, every
  "page not present" the host injects is answered by its "page ready", no data corruption;
- the guest half of the protocol driven by hand (page ready before its wait, wake-all, a wake
  on another vCPU), by writing the reason word and injecting #PF as the host does;
- corruption is really detected; the image is what its sources build.
"""
from __future__ import annotations

import random
import re
import struct
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from apfdbg.host import build_machine
from apfdbg.host.pager import RandomLatency
from apfdbg.machine.config import MachineConfig
from apfdbg.machine.image import load_image
from apfdbg.machine.machine import Machine

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "guests" / "refkernel"
IMAGE = SRC / "refkernel.elf"

# docs/refkernel.md: the boot parameter block
PARAMS_ADDR = 0x50000
PARAMS_MAGIC = 0x314B4652
RKF_NO_APF, RKF_NO_SEND_ALWAYS, RKF_NO_KSUM, RKF_VERBOSE = 1, 2, 4, 8
RKF_NO_YIELD, RKF_NO_TIMER, RKF_KSUM_ATOMIC, RKF_KSUM_PREEMPT = 16, 32, 64, 128
DEFAULT_DATA_BASE = 0x800000
DEFAULTS = dict(iterations=6, tasks=4, pages=16)
PAGE = 4096
MSR_KVM_ASYNC_PF_EN = 0x4B564D02

SUMMARY = re.compile(r"refkernel: (\d+) tasks, (\d+) iterations, (\d+) async PF not-present, "
                     r"(\d+) ready, (\d+) corrupt")
APF_LINE = re.compile(r"refkernel: apf (\d+) task sleeps \((\d+) in kernel mode\), (\d+) cpu halts, "
                      r"(\d+) wake-all, (\d+) data checks after wakes, dummies (\d+) left (\d+) "
                      r"used (\d+) dropped (\d+)")


def params(iterations=0, tasks=0, pages=0, flags=0, timer=0, data_base=0) -> bytes:
    return struct.pack("<IIIIIIQ", PARAMS_MAGIC, iterations, tasks, pages, flags, timer, data_base)


def machine(vcpus: int, profile: str | None = None, latency=None, **p) -> Machine:
    image = load_image(IMAGE)
    cfg = MachineConfig(vcpus=vcpus)
    if profile is None:
        m = Machine(image, cfg)
    else:
        m = build_machine(image, cfg, profile=profile,
                          latency=latency or RandomLatency(kind="random", min=2_000, max=30_000))
    if p:
        m.ram.write(PARAMS_ADDR, params(**p))
    return m


def record(m: Machine, *kinds: str) -> list:
    out = []
    m.sinks.append(lambda e: out.append(e) if e.kind in kinds else None)
    return out


def console(m: Machine, i: int = 0) -> str:
    return m.vcpus[i].console.decode()


def all_console(m: Machine) -> str:
    return "".join(console(m, i) for i in range(len(m.vcpus)))


def summary(m: Machine) -> dict:
    text = console(m, 0)
    s = SUMMARY.search(text)
    a = APF_LINE.search(text)
    assert s and a, text[-2000:]
    tasks, iters, np_, ready, corrupt = map(int, s.groups())
    sleeps, ksleeps, halts, wake_all, checks, dummies, left, used, dropped = map(int, a.groups())
    return dict(tasks=tasks, iterations=iters, not_present=np_, ready=ready, corrupt=corrupt,
                sleeps=sleeps, kernel_sleeps=ksleeps, halts=halts, wake_all=wake_all,
                wake_checks=checks, dummies=dummies, dummies_left=left, dummies_used=used,
                dummies_dropped=dropped)


def task_gfns(vcpus: int, tasks: int, pages: int, data_base: int = DEFAULT_DATA_BASE) -> list[int]:
    """docs/refkernel.md: task t (global index cpu * tasks + slot) owns pages
    data_base + (t * pages + p) * 4096."""
    first = data_base // PAGE
    return list(range(first, first + vcpus * tasks * pages))


def periodic_pager(m: Machine, gfns: list[int], period: int, count: int, seed: int = 1) -> Counter:
    """Every `period` instructions, swap out `count` of `gfns` that are resident (a host under
    memory pressure).  Returns a counter of frames swapped out."""
    rng = random.Random(seed)
    out = Counter()

    def tick() -> None:
        resident = [g for g in gfns if not m.ram.is_swapped(g)]
        victims = rng.sample(resident, min(count, len(resident)))
        for g in m.page_out(victims):
            out[g] += 1
        m.timeline.schedule(m.now + period, tick)
    m.timeline.schedule(m.now + period, tick)
    return out


# ---- the image ---------------------------------------------------------------------------------
def test_symbols_for_the_debugger():
    img = load_image(IMAGE)
    for name in ("current_task", "tasks", "task_name", "task_user", "cpus", "apf_reason_area",
                 "apf_sleepers", "pf_handler", "apf_task_wait", "apf_task_wake", "apf_task_wake_one",
                 "apf_task_wake_all", "apf_read_and_reset_reason", "apf_cpu_init", "schedule",
                 "switch_to", "syscall_entry", "trap_common", "idle_loop", "user_main",
                 "__user_text_start", "__user_text_end", "refkernel_config", "wrmsr_safe"):
        assert img.symbol(name) is not None, name
    area = img.symbol("apf_reason_area")
    assert area.addr % 64 == 0 and area.size == 64 * 16
    assert img.symbol("apf_sleepers").size == 256 * 16
    assert img.symbol("current_task").size == 8 * 16
    assert img.entry == img.symbol("_start").addr


def _toolchain() -> str | None:
    try:
        return "".join(subprocess.run([tool, "--version"], capture_output=True, text=True,
                                      check=True).stdout.splitlines(True)[0]
                       for tool in ("gcc", "as", "ld"))
    except (OSError, subprocess.CalledProcessError):
        return None


@pytest.mark.skipif(_toolchain() != (SRC / "toolchain.txt").read_text(),
                    reason="not the toolchain of guests/refkernel/toolchain.txt")
def test_image_is_what_the_sources_build(tmp_path):
    """The committed image is reproducible from its sources (with the same gcc and binutils)."""
    subprocess.run(["make", "-s", "-C", str(SRC), f"OUT={tmp_path}"], check=True,
                   capture_output=True)
    built = (tmp_path / "refkernel.elf").read_bytes()
    if built != IMAGE.read_bytes():
        pytest.fail("guests/refkernel/refkernel.elf differs from a fresh build: run make -C "
                    f"guests/refkernel ({(SRC / 'toolchain.txt').read_text().strip()!r})")


# ---- a plain scheduler: no host paging, no KVM feature -----------------------------------------
@pytest.mark.parametrize("vcpus", [1, 4])
def test_runs_every_task_to_the_end_without_paging(vcpus):
    m = machine(vcpus)
    res = m.run(max_insns=60_000_000)
    assert res.status == 1, (res.reason, console(m)[-2000:])
    s = summary(m)
    n = vcpus * DEFAULTS["tasks"]
    assert (s["tasks"], s["iterations"]) == (n, n * DEFAULTS["iterations"])
    assert s["not_present"] == s["ready"] == s["corrupt"] == s["wake_all"] == 0
    assert "refkernel: KVM features 0\n" in console(m)
    assert "PASS" in console(m)
    for t in range(n):
        cpu = t // DEFAULTS["tasks"]
        assert f"task {t} done: 6 iterations" in console(m, cpu)
    # every vCPU switched tasks and took timer ticks
    for i in range(vcpus):
        line = re.search(rf"refkernel: cpu {i}: (\d+) switches, (\d+) ticks", console(m)).groups()
        assert int(line[0]) > DEFAULTS["tasks"] and int(line[1]) > 10


def test_boot_parameters_are_honoured():
    m = machine(2, iterations=2, tasks=3, pages=5, flags=RKF_NO_TIMER | RKF_NO_KSUM)
    res = m.run(max_insns=30_000_000)
    assert res.status == 1, console(m)[-2000:]
    assert "2 cpus, 3 tasks/cpu, 5 pages/task, 2 iterations, data 800000-81e000" in console(m)
    assert "(boot parameters)" in console(m)
    s = summary(m)
    assert (s["tasks"], s["iterations"]) == (6, 12)
    assert re.search(r"cpu 0: \d+ switches, 0 ticks", console(m))


def test_task_pages_swapped_out_without_kvm_stall_synchronously():
    """No KVM feature: a touch of a swapped-out page stalls the vCPU; the kernel does not notice."""
    m = machine(2, iterations=3, tasks=2, pages=8)
    m.page_in_latency = lambda gfn: 5_000
    swapped = periodic_pager(m, task_gfns(2, 2, 8), period=20_000, count=8)
    stalls = record(m, "stall")
    res = m.run(max_insns=60_000_000)
    assert res.status == 1, console(m)[-2000:]
    assert len(stalls) > 50 and sum(swapped.values()) > 50
    s = summary(m)
    assert s["not_present"] == s["ready"] == s["corrupt"] == 0


# ---- the KVM host ------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", ["seed", "2.6.38"])
def test_async_pf_enable_per_vcpu(profile):
    """seed reserves bit 1: the SEND_ALWAYS attempt #GPs (fixed up), then bit 0 alone is taken.
    2.6.38 takes SEND_ALWAYS.  Each vCPU registers its own 64-byte area; the enable's wake-all
    arrives as reason 2 with token 0xffffffff."""
    m = machine(3, profile, iterations=1, tasks=1, pages=2)
    writes = record(m, "msr_write")
    injects = record(m, "inject")
    res = m.run(max_insns=20_000_000)
    assert res.status == 1, console(m)[-2000:]
    area = m.image.symbol("apf_reason_area").addr
    for i in range(3):
        mine = [(w.value, w.result) for w in writes if w.vcpu == i and w.index == MSR_KVM_ASYNC_PF_EN]
        base = area + 64 * i
        if profile == "seed":
            assert mine == [(base | 3, "gp"), (base | 1, "ok")]
            assert "SEND_ALWAYS refused (#GP" in console(m, i)
        else:
            assert mine == [(base | 3, "ok")]
            assert f"cpu {i}: async PF enabled, area {base:x}, SEND_ALWAYS" in console(m, i)
        wake_all = [e for e in injects if e.vcpu == i and e.vector == 14 and e.source == "host"]
        assert [e.cr2 for e in wake_all] == [0xFFFFFFFF]
    s = summary(m)
    assert s["wake_all"] == 3 and s["not_present"] == s["ready"] == 0


def _paging_run(vcpus, profile, flags=0, iterations=3, tasks=3, pages=8, period=15_000, count=12,
                max_insns=150_000_000):
    m = machine(vcpus, profile, iterations=iterations, tasks=tasks, pages=pages, flags=flags)
    np_events = record(m, "async_pf_not_present")
    ready_events = record(m, "async_pf_ready")
    m.recorded_injects = record(m, "inject")
    swapped = periodic_pager(m, task_gfns(vcpus, tasks, pages), period=period, count=count)
    res = m.run(max_insns=max_insns)
    assert res.status == 1, (res.reason, all_console(m)[-3000:])
    assert "CORRUPT" not in all_console(m)
    s = summary(m)
    n = vcpus * tasks
    assert (s["tasks"], s["iterations"], s["corrupt"]) == (n, n * iterations, 0)
    assert s["dummies_dropped"] == 0
    assert sum(swapped.values()) > 100
    return m, s, np_events, ready_events


def _check_pairs(np_events, ready_events, s, profile):
    """Every not-present the host injected is answered by a page ready for the same token on the
    same vCPU, later; the guest counted exactly what the host delivered."""
    injected = {e.token: e for e in np_events if e.delivery == "pf"}
    halted = [e for e in np_events if e.delivery == "halt"]
    delivered = {e.delivered_token: e for e in ready_events
                 if e.delivered_token not in (None, 0xFFFFFFFF)}
    assert len(injected) == s["not_present"] > 100
    for token, e in injected.items():
        r = delivered.get(token)
        assert r is not None, f"not-present token {token:#x} never got its page ready"
        assert r.vcpu == e.vcpu and r.time >= e.time and r.gfn == e.gfn
    # 2010 hosts also send page ready for works whose not-present was a halt
    assert len(delivered) == s["ready"] == len(injected) + len(halted)
    if profile == "2.6.38":
        assert not halted          # SEND_ALWAYS: kernel-mode faults are injected too
    # a ready nobody waits on leaves a dummy; with this host no wait ever comes first
    assert s["dummies"] == s["dummies_left"] == len(halted) and s["dummies_used"] == 0


@pytest.mark.parametrize("profile", ["seed", "2.6.38"])
def test_host_paging_four_vcpus(profile):
    m, s, np_events, ready_events = _paging_run(4, profile)
    assert m.now > 5_000_000
    _check_pairs(np_events, ready_events, s, profile)
    assert s["sleeps"] + s["halts"] == s["not_present"]
    assert s["wake_checks"] > 0
    assert s["wake_all"] == 4
    for i in range(4):   # every vCPU took async PFs
        assert re.search(rf"cpu {i}: .* apf [1-9]\d* not-present", console(m))


def test_host_paging_one_vcpu():
    m, s, np_events, ready_events = _paging_run(1, "2.6.38", tasks=4, iterations=4)
    _check_pairs(np_events, ready_events, s, "2.6.38")


def _not_present_in(m, np_events, function) -> int:
    """How many injected not-present #PFs interrupted `function` (their inject event's RIP)."""
    sym = m.image.symbol(function)
    tokens = {(e.vcpu, e.token) for e in np_events if e.delivery == "pf"}
    hits = 0
    for e in m.recorded_injects:
        if (e.vcpu, e.cr2) in tokens:
            tokens.discard((e.vcpu, e.cr2))     # the first #PF with that token is the not-present
            hits += sym.addr <= e.rip < sym.addr + sym.size
    return hits


def test_kernel_mode_async_pf_sleeps_the_task_2638():
    """2.6.38, SEND_ALWAYS: sys_sum reads task pages in kernel mode with preemption enabled; its
    async PFs put the task to sleep inside the syscall, as a CONFIG_PREEMPT kernel does."""
    m, s, np_events, ready_events = _paging_run(2, "2.6.38", flags=RKF_KSUM_PREEMPT, pages=4,
                                                period=4_000, count=24, iterations=4)
    _check_pairs(np_events, ready_events, s, "2.6.38")
    assert s["kernel_sleeps"] > 0 and s["halts"] == 0
    assert _not_present_in(m, np_events, "sys_sum") == s["kernel_sleeps"]


def test_kernel_mode_async_pf_halts_when_it_cannot_schedule_2638():
    """With preemption disabled (sys_sum atomic) the wait cannot schedule: the CPU halts with
    interrupts on until its page-ready #PF unhashes the node."""
    m, s, np_events, ready_events = _paging_run(2, "2.6.38", flags=RKF_KSUM_ATOMIC, pages=4,
                                                period=4_000, count=24, iterations=4)
    _check_pairs(np_events, ready_events, s, "2.6.38")
    assert s["halts"] > 0 and s["kernel_sleeps"] == 0
    assert s["sleeps"] + s["halts"] == s["not_present"]


def test_kernel_mode_faults_halt_in_the_host_seed():
    """seed: no SEND_ALWAYS, so a CPL 0 fault halts the vCPU in the host; its page ready still
    comes (2010 behaviour) and leaves a dummy in the guest's sleeper hash."""
    m, s, np_events, ready_events = _paging_run(2, "seed", flags=RKF_KSUM_ATOMIC, pages=4,
                                                period=4_000, count=24, iterations=4)
    _check_pairs(np_events, ready_events, s, "seed")
    assert any(e.delivery == "halt" for e in np_events)
    assert s["halts"] == s["kernel_sleeps"] == 0


def test_apf_disabled_by_the_guest_under_kvm():
    """RKF_NO_APF (Linux's no-kvmapf): the MSR is never written; the host halts the vCPU on
    each swapped page instead, and the kernel is a plain scheduler."""
    m = machine(2, "2.6.38", iterations=2, tasks=2, pages=6, flags=RKF_NO_APF)
    writes = record(m, "msr_write")
    np_events = record(m, "async_pf_not_present")
    periodic_pager(m, task_gfns(2, 2, 6), period=15_000, count=8)
    res = m.run(max_insns=100_000_000)
    assert res.status == 1, all_console(m)[-2000:]
    assert not [w for w in writes if w.index == MSR_KVM_ASYNC_PF_EN]
    assert np_events and all(e.delivery == "halt" for e in np_events)
    s = summary(m)
    assert s["not_present"] == s["ready"] == s["wake_all"] == s["corrupt"] == 0


def test_without_send_always_flag_2638_kernel_faults_halt_in_host():
    m, s, np_events, ready_events = _paging_run(2, "2.6.38", flags=RKF_NO_SEND_ALWAYS | RKF_KSUM_ATOMIC,
                                                pages=4, period=4_000, count=24, iterations=3)
    _check_pairs(np_events, ready_events, s, "seed")   # the 2010 accounting of host halts
    assert any(e.delivery == "halt" for e in np_events)


# ---- corruption is detected ------------------------------------------------------------------
def test_corruption_is_reported_and_fails_the_run():
    m = machine(1, iterations=20, tasks=2, pages=4, flags=RKF_NO_KSUM)
    gfns = task_gfns(1, 2, 4)

    def smash() -> None:
        for g in gfns:              # word 17 of every page of both tasks
            addr = g * PAGE + 8 * 17
            m.ram.write_u64(addr, m.ram.read_u64(addr) ^ 0x100)
    m.timeline.schedule(200_000, smash)
    res = m.run(max_insns=30_000_000)
    s = summary(m)
    assert s["corrupt"] > 0
    assert res.status == (s["corrupt"] << 1) | 1
    assert re.search(r"CORRUPT task [01] page \d word 17 iteration \d+: expected [0-9a-f]+ found", console(m))
    assert "refkernel: FAIL" in console(m)


# ---- the guest half of the protocol, driven by hand --------------------------------------------
class Injector:
    """Plays the host's part by hand: write the reason word into the vCPU's area, then inject #PF
    with CR2 = token, only when the host could (interrupts allowed, nothing pending) and, for a
    not-present, only at CPL 3 (a task that can sleep)."""

    def __init__(self, m: Machine):
        self.m = m
        self.area = m.image.symbol("apf_reason_area").addr
        self.log: list[tuple[int, int, int]] = []

    def inject(self, vcpu: int, reason: int, token: int, need_user: bool, then=None) -> None:
        m, v = self.m, self.m.vcpus[vcpu]

        def attempt() -> None:
            st = m.host.kvm.state(vcpu)
            if (st.enabled and v.interrupt_allowed() and (v.cpl() == 3 or not need_user)
                    and m.ram.read_u32(self.area + 64 * vcpu) == 0):
                m.ram.write_u32(self.area + 64 * vcpu, reason)
                v.inject_page_fault(token, 0)
                m.kick(v)
                self.log.append((vcpu, reason, token))
                if then:
                    then()
            else:
                m.timeline.schedule(m.now + 97, attempt)
        m.timeline.schedule(m.now + 1, attempt)

    def when_console(self, vcpu: int, text: str, fn) -> None:
        fired = []

        def sink(e) -> None:
            if e.kind == "console" and e.vcpu == vcpu and text in e.text and not fired:
                fired.append(1)
                fn()
        self.m.sinks.append(sink)


def _manual(vcpus: int, **p) -> tuple[Machine, Injector]:
    m = machine(vcpus, "2.6.38", flags=RKF_VERBOSE | RKF_NO_KSUM, **p)
    return m, Injector(m)


def test_page_ready_before_its_wait_leaves_a_dummy_the_wait_consumes():
    m, inj = _manual(1, iterations=8, tasks=2, pages=4)
    token = 0x7000
    m.timeline.schedule(300_000, lambda: inj.inject(0, 2, token, need_user=False))
    inj.when_console(0, f"token {token:x}: ready before its wait, dummy left",
                     lambda: inj.inject(0, 1, token, need_user=True))
    res = m.run(max_insns=40_000_000)
    assert res.status == 1, console(m)[-2000:]
    assert [(r, t) for _v, r, t in inj.log] == [(2, token), (1, token)]
    assert f"token {token:x}: wake came first, dummy consumed" in console(m)
    s = summary(m)
    assert (s["dummies"], s["dummies_used"], s["dummies_left"]) == (1, 1, 0)
    assert s["not_present"] == 1 and s["ready"] == 1 and s["sleeps"] == 0


def test_wake_all_token_wakes_every_sleeper_of_the_vcpu():
    m, inj = _manual(1, iterations=8, tasks=2, pages=4)
    t1, t2 = 0x11000, 0x22000
    m.timeline.schedule(300_000, lambda: inj.inject(0, 1, t1, need_user=True))
    inj.when_console(0, f"token {t1:x}: t0.", lambda: inj.inject(0, 1, t2, need_user=True))
    # both tasks asleep: the CPU idles; then one wake-all releases them both
    inj.when_console(0, f"token {t2:x}: t0.",
                     lambda: inj.inject(0, 2, 0xFFFFFFFF, need_user=False))
    res = m.run(max_insns=40_000_000)
    assert res.status == 1, console(m)[-2000:]
    text = console(m)
    sleepers = re.findall(r"token (11000|22000): (t0\.\d) sleeps \(user", text)
    assert len(sleepers) == 2 and sleepers[0][1] != sleepers[1][1]
    assert "token ffffffff: page ready" in text
    s = summary(m)
    assert s["sleeps"] == 2 and s["wake_all"] == 2    # the enable's and ours
    assert s["ready"] == 0 and s["dummies"] == 0
    assert re.search(r"cpu 0: .* [1-9]\d* idle hlt", text)


def test_page_ready_on_another_vcpu_wakes_the_sleeper_through_an_ipi():
    """The host sends page ready to the vCPU that got the not-present, but guests must not rely
    on it: vCPU 0 wakes a task sleeping on vCPU 1, which takes a reschedule IPI (0xfd)."""
    m, inj = _manual(2, iterations=6, tasks=1, pages=4)
    token = 0x5001
    injects = record(m, "inject")
    m.timeline.schedule(400_000, lambda: inj.inject(1, 1, token, need_user=True))
    inj.when_console(1, f"token {token:x}: t1.0 sleeps",
                     lambda: inj.inject(0, 2, token, need_user=False))
    res = m.run(max_insns=40_000_000)
    assert res.status == 1, all_console(m)[-2000:]
    assert f"token {token:x}: page ready" in console(m, 0)
    woke = [e for e in injects if e.vcpu == 0 and e.vector == 14 and e.cr2 == token]
    ipis = [e for e in injects if e.vcpu == 1 and e.vector == 0xFD and e.time >= woke[0].time]
    assert woke and ipis
    s = summary(m)
    assert s["sleeps"] == 1 and s["ready"] == 1 and s["dummies"] == 0


# ---- the command line ----------------------------------------------------------------------------
def test_cli_headless_runs_it(capsys):
    from apfdbg.cli import main
    assert main(["run", str(IMAGE), "--headless", "--vcpus", "2"]) == 1
    out = capsys.readouterr().out
    assert SUMMARY.search(out) and "exit status 1" in out
