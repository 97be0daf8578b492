"""Guest code: random bytes at the entry of a real guest, and mutated copies of real guests' code and
data, each run on 1 and on 4 vCPUs under an instruction cap, with the KVM host (and, for some, a pager).

Whatever the bytes do, the run must end in something the guest can see (an exception delivered, #DF,
a triple fault, hlt, the guest's own exit, the cap) or a clear error: never a Python exception out of
the machine, and every event it published is a parsable line of its trace.
"""
from __future__ import annotations

import dataclasses
import random
from functools import lru_cache

from .common import GUESTS, Hang, Progress, Report, TooSlow, TraceCheck, input_rng, mutate_bytes, watchdog

NAME = "guest"
DEFAULTS = {"insns": 1_000_000}
DESCRIBE = "random code at the entry / mutated code+data of {n} guests, 1 and 4 vCPUs, cap {insns:,} insns"
SECONDS_PER_MILLION = 120.0  # wall-time budget: every instruction an exit to Python (~100 us) fits;
                             # a hang is no progress for common.STALL s

#: instructions that leave the fast path: exits, deliveries, system state, the KVM MSRs
OPCODES = tuple(bytes.fromhex(h) for h in (
    "0f0b cc cd80 cd0e cd08 cd03 f1 f4 fa fb fbf4 0f30 0f32 0fa2 48cf cf 0f05 480f07 0f34 e6f4 e6e9 ee ef "
    "ec e460 0f22d8 0f22c0 0f22e0 0f20d0 0f20d8 8ed8 8ed0 8ee0 0f0118 0f0110 0f00d8 9d 9c 0f31 0f01f9 "
    "480fc7f0 480fc7f8 0f01f8 f348ab f3a4 0f01c1 0f01d9 0f01c8 0f01c9 0f01d0 0f01d1 0f09 0f08 0f0138 "
    "480fc708 f090 0fa1 48cb ca0800 ff18 ff28 0fff 0f37 c4e279 62 0fae28 0f1f00 66900f0b "
    "b9024d564b0f30 b9064d564b0f30 b9074d564b0f30 b91b0000000f30 b9300800000f30 b9380800000f30 "
    "b9800000c00f30 b9820000c00f30 b9840000c00f30 b9010100c00f30 31c00f30 48c7c0ffffffff0f30 "
    "48c7c4000000000f0b 48c7c400000100cc 48bc00000000000080006a00 0f0110c3 "
).split())


@lru_cache(maxsize=None)
def guests() -> tuple:
    """(name, image, scenario) of every bundled guest: the machine test guests, the reference kernel
    under the pressure of tests/gdb/apf_small.toml, the demo guest under its default scenario."""
    from apfdbg.machine.image import load_image
    from apfdbg.scenario import load_scenario
    out = []
    for p in sorted((GUESTS / "machine").glob("*.elf")):
        out.append((f"machine/{p.name}", load_image(p), None))
    out.append(("refkernel.elf", load_image(GUESTS / "refkernel" / "refkernel.elf"),
                load_scenario(GUESTS.parent / "tests" / "gdb" / "apf_small.toml")))
    out.append(("apfdemo.elf", load_image(GUESTS / "apfdemo" / "apfdemo.elf"),
                load_scenario(GUESTS.parent / "apfdbg" / "scenarios" / "default.toml")))
    return tuple(out)


def make_input(rng: random.Random):
    """(image, scenario, words): one guest, its code or data changed."""
    from apfdbg.scenario import Scenario
    name, img, sc = rng.choice(guests())
    segs = list(img.segments)
    if rng.random() < 0.35:
        if rng.random() < 0.5:
            code = rng.randbytes(rng.randint(1, 512))
            what = f"{name}: {len(code)} random bytes at the entry"
        else:
            code = b"".join(rng.choice(OPCODES) + rng.randbytes(rng.randrange(4)) for _ in range(rng.randint(1, 24)))
            what = f"{name}: {len(code)} bytes of system instructions at the entry"
        k = next(j for j, s in enumerate(segs) if s.paddr <= img.entry < s.paddr + len(s.data))
        seg = segs[k]
        data = bytearray(seg.data)
        off = img.entry - seg.paddr
        data[off:off + len(code)] = code[:len(data) - off]
        segs[k] = dataclasses.replace(seg, data=bytes(data))
    else:
        code_segs = [j for j, s in enumerate(segs) if s.data and s.executable]
        any_segs = [j for j, s in enumerate(segs) if s.data]
        k = rng.choice(code_segs if code_segs and rng.random() < 0.85 else any_segs)
        seg = segs[k]
        data = bytearray(seg.data)
        lo, hi = 0, len(data)
        funcs = [s for s in img.symbols if s.kind == "func" and seg.paddr <= s.addr < seg.paddr + len(data)]
        if funcs and rng.random() < 0.6:  # near the start of a function: code that surely runs
            lo = rng.choice(funcs).addr - seg.paddr
            hi = min(len(data), lo + 256)
        done = mutate_bytes(rng, data, rng.randint(1, 12), lo, hi, OPCODES)
        segs[k] = dataclasses.replace(seg, data=bytes(data))
        what = f"{name} segment {seg.paddr:#x}: " + ", ".join(done[:8]) + (" ..." if len(done) > 8 else "")
    if sc is None:
        sc = Scenario()
        if rng.random() < 0.5:  # host pressure on the guest's own pages: swapped code and data
            sc = Scenario.model_validate({"host": {"profile": rng.choice(["seed", "2.6.38"])}, "pager": {
                "latency": {"kind": "random", "min": 0, "max": 20_000},
                "auto": {"frames": "0x100-0x11f", "budget": rng.randint(0, 8), "period": rng.choice([500, 5000])}}})
    return dataclasses.replace(img, segments=segs), sc, what


def run_once(image, scenario, vcpus: int, cap: int, fmt: str) -> tuple[str, int, str]:
    """Run to the end or the cap; (outcome, lines lost, what was lost)."""
    from apfdbg.engine import Engine
    from apfdbg.machine.config import MachineConfig
    machine = MachineConfig(**{**scenario.machine.model_dump(), "vcpus": vcpus, "max_insns": cap})
    eng = Engine(image, scenario.model_copy(update={"machine": machine}))
    Progress.machine = eng.machine
    try:
        trace = TraceCheck(eng.machine, fmt)
        res = eng.run()
        lost, text = trace.lost()
        return outcome(res.reason), lost, text
    finally:
        eng.machine.close()


def outcome(reason: str) -> str:
    for key, words in (("limit", "instruction limit"), ("triple fault", "triple fault"),
                       ("guest exit", "to port 0xf4"), ("not guest RAM", "which is not guest RAM"),
                       ("all stopped", "every vCPU is stopped")):
        if words in reason:
            return key
    return "other: " + reason.split(":")[-1].strip()[:60]


def run(report: Report, seed: int, start: int, stop: int, opts: dict) -> None:
    cap = opts["insns"]
    bound = 5.0 + SECONDS_PER_MILLION * cap / 1e6
    for i in range(start, stop):
        rng = input_rng(seed, NAME, i)
        report.begin(i, 2 * bound + 5)
        try:
            image, scenario, what = make_input(rng)
        except Exception as e:  # the harness's own failure: say so, never count it as the machine's
            raise RuntimeError(f"guest input {i}: {e}") from e
        for vcpus in (1, 4):
            fmt = "text" if rng.random() < 0.25 else "jsonl"
            try:
                with watchdog(bound):
                    result, lost, text = run_once(image, scenario, vcpus, cap, fmt)
            except TooSlow:
                report.note("time budget reached, still running")
                continue
            except (Exception, Hang) as e:
                report.exception(i, f"{what} ({vcpus} vCPUs)", e)
                continue
            report.note(result)
            if lost:
                report.fail("lost", i, f"{what} ({vcpus} vCPUs, {fmt} trace)", text, lost)
