"""Scenarios: mutated TOML of the bundled scenarios (and of the examples in docs/scenarios.md), and
valid TOML whose values are out of range: actions at huge times, unknown vCPUs, gfns outside RAM,
odd pokes, points and expectations.

load_scenario must refuse a bad one with ScenarioError; one it accepts must build an engine (or
refuse with ScenarioError / ImageError) and run to the cap, its trace complete.
"""
from __future__ import annotations

import json
import random
import re
import tempfile
from functools import lru_cache
from pathlib import Path

from .common import GUESTS, ROOT, Hang, Progress, Report, TooSlow, TraceCheck, input_rng, interesting, watchdog

NAME = "scenario"
DEFAULTS = {"insns": 50_000}
DESCRIBE = "mutated TOML of {n} scenarios, valid TOML out of range; load, build, run {insns:,} insns"
BOUND = 60.0   # wall-time budget of an input (a hang is no progress for common.STALL s)

IMAGES = {"apfdemo": GUESTS / "apfdemo" / "apfdemo.elf", "refkernel": GUESTS / "refkernel" / "refkernel.elf",
          "hello": GUESTS / "machine" / "hello.elf"}


@lru_cache(maxsize=None)
def corpus() -> tuple[str, ...]:
    texts = [p.read_text() for p in (ROOT / "apfdbg" / "scenarios").glob("*.toml")]
    texts.append((ROOT / "tests" / "gdb" / "apf_small.toml").read_text())
    doc = (ROOT / "docs" / "scenarios.md").read_text()
    texts += re.findall(r"```toml\n(.*?)```", doc, re.S)
    # images relative to the scenario files: make them absolute (the mutants live in a temp dir)
    return tuple(re.sub(r'image = "(\.\./)+(data/)?guests', f'image = "{GUESTS}', t) for t in texts)


# ---- mutated TOML ----------------------------------------------------------------------------------
TOKENS = ("[", "]", "[[", "]]", "=", '"', "'", "\n", ",", "{", "}", "0x", "-", "_", ".", "#", "\\", "1e309",
          "inf", "nan", "-1", "99999999999999999999", "0xffffffffffffffff", "true", "[]", "{}", '""',
          "\x00", "\u00e9", "[machine]", "[[actions]]", "do = ", "vcpu = ", "at = ", "gfns = ")


def mutate_text(rng: random.Random, text: str) -> tuple[str, str]:
    done = []
    for _ in range(rng.randint(1, 4)):
        lines = text.split("\n")
        r = rng.random()
        if r < 0.3:  # a number -> an interesting number
            nums = list(re.finditer(r"-?\b(0x[0-9a-fA-F_]+|\d[\d_]*)\b", text))
            if nums:
                m = rng.choice(nums)
                v = interesting(rng) * rng.choice((1, 1, -1))
                rep = hex(v) if rng.random() < 0.5 else str(v)
                text = text[:m.start()] + rep + text[m.end():]
                done.append(f"number {m.group()} -> {rep}")
                continue
        if r < 0.45:  # a string value -> another
            strs = list(re.finditer(r'"([^"\n]*)"', text))
            if strs:
                m = rng.choice(strs)
                rep = json.dumps(rng.choice(("", "x", "0x1-0x0", "0-0xffffffff", "seed", "fifo", "key", "pf_handler",
                                             "catch apf ready", "watch 0 4", "rsp", "u64(rsp)", "phys 0x1000",
                                             "\u00e9", "a" * 300, "../nope.elf", "0x800-0x7ff")))
                text = text[:m.start()] + rep + text[m.end():]
                done.append(f"string {m.group()[:20]} -> {rep[:20]}")
                continue
        if r < 0.6 and len(lines) > 1:  # line edits
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            op = rng.randrange(3)
            if op == 0:
                lines.insert(j, lines[i])
                done.append(f"dup line {i + 1}")
            elif op == 1:
                done.append(f"del line {i + 1}: {lines[i][:30]!r}")
                del lines[i]
            else:
                lines[i], lines[j] = lines[j], lines[i]
                done.append(f"swap lines {i + 1},{j + 1}")
            text = "\n".join(lines)
            continue
        at = rng.randrange(len(text) + 1)
        op = rng.randrange(3)
        if op == 0:
            tok = rng.choice(TOKENS)
            text = text[:at] + tok + text[at:]
            done.append(f"insert {tok!r}@{at}")
        elif op == 1:
            k = rng.randint(1, 8)
            done.append(f"delete {text[at:at + k]!r}@{at}")
            text = text[:at] + text[at + k:]
        else:
            c = chr(rng.randrange(32, 127))
            text = text[:at] + c + text[at + 1:]
            done.append(f"char {c!r}@{at}")
    return text, "; ".join(done)


# ---- valid TOML, values out of range -----------------------------------------------------------------
def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(v, repr(v)) if v == v else "nan"
    if isinstance(v, str):
        return json.dumps(v).replace("\x7f", "\\u007f")
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"


def toml_dumps(doc: dict) -> str:
    """Just enough TOML for what gen_scenario makes: top keys, tables, arrays of tables."""
    out = [f"{k} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, (dict, list)) or
           (isinstance(v, list) and not (v and isinstance(v[0], dict)))]
    for k, v in doc.items():
        if isinstance(v, dict):
            out.append(f"\n[{k}]")
            out += [f"{kk} = {toml_value(vv)}" for kk, vv in v.items()]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                out.append(f"\n[[{k}]]")
                out += [f"{kk} = {toml_value(vv)}" for kk, vv in item.items()]
    return "\n".join(out) + "\n"


KINDS = ("page_out", "page_out_random", "complete", "complete_oldest", "complete_all", "wake_all", "reset_vcpu",
         "page_in", "page_out_working")
EVENTS = ("async_pf_not_present", "async_pf_ready", "inject", "inject:#PF", "msr_write", "page_out", "exit",
          "swapped_fault", "console", "hlt", "no_such_event", "")
POINTS = ("pf_handler", "pf_handler vcpu 1", "catch apf ready", "catch apf ready token=0x1", "catch msr",
          "catch gp", "catch halt", "catch triple-fault", "watch apf_reason_area 4", "watch 0x1000 8",
          "rwatch 0x400000 4096", "awatch 0xffffffffffffffff 8", "watch 0 0", "apf.c:125 if cr2 == 1",
          "main.c:1", "*0x100000", "*0xffffffffffffffff", "_start if rax ==", "pf_handler vcpu 99",
          "catch apf", "catch nothing", "watch rsp 4", "", "  ", "break", "0x100000 if 1/0")
MEMS = ("reason", "rsp", "rip", "cr2", "u64(rsp)", "phys 0x1000", "apf_reason_area + 64", "phys 0xffffffffffff",
        "1/0", "2**4096", "nope", "", "u64(u64(u64(0)))", "-1", "phys -1", "rsp - 0x100000000000")


def _gfns(rng: random.Random):
    r = rng.random()
    if r < 0.3:
        return rng.choice(("0x400-0x417", "0x800-0x8ff", "0x100-0x10f", "0x100"))
    if r < 0.5:
        return rng.choice(("0x1000-0x1010", "0xffffff", "0x4000-0x4000", "0-0x3fff", "0x3ff0-0x4010"))
    if r < 0.6:
        return rng.choice(("0-0xffffffffffff", "0x100-0xffffffff", "5-3", "-1", "x", "0x10,0x20-0x21", ""))
    if r < 0.8:
        return interesting(rng, rng.choice((16, 32, 64)))
    return [_gfns(rng) for _ in range(rng.randint(0, 3))]


def _pick(rng: random.Random, sane, wild):
    return rng.choice(wild) if rng.random() < rng.wildness else rng.choice(sane)


def gen_scenario(rng: random.Random) -> tuple[dict, str]:
    big = (0, 1, 2**31, 2**32 + 7, 2**62, 2**63 - 1, 2**63, 2**64, 10**30)
    rng.wildness = rng.choice((0.0, 0.03, 0.1, 0.3))  # how often a field is out of its range: most runs
    doc: dict = {"name": "fuzz"}
    words = []
    if rng.random() < 0.8:
        doc["machine"] = {"vcpus": _pick(rng, (1, 2, 4), (0, 3, 8, 64, 65, -1)),
                          "ram_mib": _pick(rng, (16, 4, 64), (1, 2, 3, 4097, 17))}
        if rng.random() < 0.3:
            doc["machine"]["quantum"] = _pick(rng, (1, 100, 10_000), (0, 10**7, 10**8))
    if rng.random() < 0.7:
        doc["host"] = {"profile": _pick(rng, ("seed", "2.6.38"), ("kvm", "")), "seed": _pick(rng, big, (-1, 2**64))}
    if rng.random() < 0.7:
        lo = rng.choice(big)
        lat = _pick(rng, ({"kind": "fixed", "instructions": rng.choice(big + (0, 5000))},
                          {"kind": "random", "min": lo, "max": lo + rng.choice(big)},
                          {"kind": "manual"}, {"kind": "fixed"}),
                    ({"kind": "nope"}, {"kind": "random", "min": 5, "max": 1}, {"kind": "fixed", "instructions": -1}))
        doc["pager"] = {"latency": lat}
        if rng.random() < 0.7:
            doc["pager"]["auto"] = {"frames": _gfns(rng), "budget": _pick(rng, (0, 4, 12), (-1, 2**40)),
                                    "period": _pick(rng, (1, 1000, 20_000), (0, 2**63)),
                                    "policy": _pick(rng, ("lru", "fifo", "random"), ("mru",))}
            if rng.random() < 0.3:
                doc["pager"]["auto"]["until"] = rng.choice(big)
    if rng.random() < 0.3:
        doc["poke"] = [_poke(rng) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.8:
        doc["actions"] = []
        for _ in range(rng.randint(1, 6)):
            a = {"at": rng.choice((0, 100, 5000, 30_000) + big), "do": _pick(rng, KINDS, ("explode", ""))}
            for key, gen, p in (("vcpu", lambda: _pick(rng, (0, 1, 3), (4, 64, 99, -1, 2**64)), 0.8),
                                ("gfns", lambda: _gfns(rng), 0.6), ("token", lambda: interesting(rng, 32), 0.3),
                                ("count", lambda: _pick(rng, (1, 8, 10**9), (0, -1)), 0.3),
                                ("every", lambda: _pick(rng, (1, 100, 5000, 10**6, 2**63), (0, -1)), 0.3)):
                if rng.random() < p:
                    a[key] = gen()
            doc["actions"].append(a)
            words.append(f"{a['do']}@{a['at']:#x}" if isinstance(a["at"], int) else a["do"])
    if rng.random() < 0.3:
        doc["expect"] = [{"event": rng.choice(EVENTS), **{k: rng.choice(big + (5,)) for k in ("by", "vcpu", "min", "max",
                                                                                          "count") if rng.random() < 0.3}}
                         for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.3:
        doc["debug"] = {"points": [rng.choice(POINTS) for _ in range(rng.randint(0, 3))],
                        "memory": rng.choice(MEMS), "lock": rng.random() < 0.5}
        words.append(f"points {doc['debug']['points']} memory {doc['debug']['memory']!r}")
    if rng.random() < 0.2:
        doc["ui"] = {"speed": rng.choice((4, 0, -1, 1e309, "full", "key", "slow")), "vcpu": rng.choice((0, 1, 99, -1)),
                     "hide": rng.sample(["vcpus", "msr", "hash", "nope", "timeline"], rng.randint(0, 2)),
                     "focus": rng.choice(("timeline", "code", "nope"))}
    if rng.random() < 0.15:
        doc["tour"] = [{"title": "t", "text": "x", "until": {"kind": rng.choice(EVENTS), "vcpu": rng.choice((0, 99)),
                                                              "where": {"gfn": rng.choice(("*", 0, -1))}}}]
    if rng.random() < 0.1:
        doc["image"] = rng.choice(("nope.elf", str(IMAGES["hello"]), "", "/dev/null", str(GUESTS)))
    return doc, ", ".join(words)[:200]


def _poke(rng: random.Random) -> dict:
    at = _pick(rng, (0x50000, 0x400000, "apf_reason_area", "_start"), (0, -1, 2**64, 0xFFFFFF, 0x1000000, "nope"))
    r = rng.random()
    if r < 0.4:
        return {"at": at, "u32": [rng.choice((0x314B4652, 2, 3, 8, 2**32, -1)) for _ in range(rng.randint(0, 8))]}
    if r < 0.7:
        return {"at": at, "u64": [interesting(rng) for _ in range(rng.randint(0, 4))]}
    return {"at": at, "hex": rng.choice(("deadbeef", "", "abc", "zz", "00" * 5000))}


# ---- running ---------------------------------------------------------------------------------------------
def check(path: Path, default_image: Path, cap: int) -> str:
    from apfdbg.engine import Engine
    from apfdbg.machine.config import MachineConfig
    from apfdbg.machine.image import ImageError, load_image
    from apfdbg.scenario import ScenarioError, load_scenario
    try:
        sc = load_scenario(path)
        image = load_image(Path(sc.base_dir) / sc.image if sc.image else default_image)
        limit = min(sc.machine.max_insns or cap, cap)
        sc = sc.model_copy(update={"machine": MachineConfig(**{**sc.machine.model_dump(), "max_insns": limit})})
        eng = Engine(image, sc)
        Progress.machine = eng.machine
    except (ScenarioError, ImageError) as e:
        msg = str(e)
        if not msg.strip() or "Traceback" in msg:
            raise AssertionError(f"{type(e).__name__} without a clear message: {msg!r}") from e
        return f"{type(e).__name__}: " + _shape(msg.split("\n")[0].split(": ", 1)[-1])
    try:
        trace = TraceCheck(eng.machine)
        res = eng.run()
        eng.expectations()
        eng.snapshot()
        lost, text = trace.lost()
    finally:
        eng.machine.close()
    if lost:
        raise _Lost(lost, text)
    from .guest import outcome
    return "ran: " + outcome(res.reason)


def _shape(msg: str) -> str:
    return re.sub(r"-?0x[0-9a-f]+|\d+", "N", msg)[:50]


class _Lost(Exception):
    def __init__(self, n: int, text: str) -> None:
        super().__init__(text)
        self.n = n


def run(report: Report, seed: int, start: int, stop: int, opts: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="apfdbg-fuzz-") as tmp:
        path = Path(tmp) / "scenario.toml"
        for i in range(start, stop):
            rng = input_rng(seed, NAME, i)
            if rng.random() < 0.5:
                base = rng.choice(corpus())
                text, what = mutate_text(rng, base)
                what = f"mutated {base.splitlines()[0][:40]!r}: {what}"
            else:
                doc, what = gen_scenario(rng)
                text, what = toml_dumps(doc), f"generated: {what}"
            path.write_text(text, encoding="utf-8", errors="surrogateescape")
            report.begin(i, 2 * BOUND)
            try:
                with watchdog(BOUND):
                    result = check(path, IMAGES[rng.choice(sorted(IMAGES))], opts["insns"])
            except TooSlow:
                report.note("time budget reached, still running")
                continue
            except _Lost as e:
                report.fail("lost", i, what, str(e), e.n)
                continue
            except (Exception, Hang) as e:
                report.exception(i, what, e)
                continue
            report.note(result)
