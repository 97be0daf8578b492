"""Images: the bundled guests' ELF files with mutated ELF, program and section headers (and bytes,
and truncated), and flat binaries at odd load addresses and entries.

load_image (and the machine it is given to) must accept the file or raise ImageError naming the file
and what is wrong; an image it accepts must build a machine and run (a short cap: running is the
guest target's job).
"""
from __future__ import annotations

import random
import re
import struct
import tempfile
from functools import lru_cache
from pathlib import Path

from .common import GUESTS, Hang, Progress, Report, TooSlow, input_rng, interesting, mutate_bytes, watchdog

NAME = "image"
DEFAULTS = {"insns": 20_000}
DESCRIBE = "mutated ELF/program/section headers of {n} guests, flat binaries; load, build, run {insns:,} insns"
BOUND = 30.0   # wall-time budget of an input (a hang is no progress for common.STALL s)

EHDR = {"ei_class": (4, 1), "ei_data": (5, 1), "ei_version": (6, 1), "e_type": (16, 2), "e_machine": (18, 2),
        "e_version": (20, 4), "e_entry": (24, 8), "e_phoff": (32, 8), "e_shoff": (40, 8), "e_flags": (48, 4),
        "e_ehsize": (52, 2), "e_phentsize": (54, 2), "e_phnum": (56, 2), "e_shentsize": (58, 2),
        "e_shnum": (60, 2), "e_shstrndx": (62, 2)}
PHDR = {"p_type": (0, 4), "p_flags": (4, 4), "p_offset": (8, 8), "p_vaddr": (16, 8), "p_paddr": (24, 8),
        "p_filesz": (32, 8), "p_memsz": (40, 8), "p_align": (48, 8)}
SHDR = {"sh_name": (0, 4), "sh_type": (4, 4), "sh_flags": (8, 8), "sh_addr": (16, 8), "sh_offset": (24, 8),
        "sh_size": (32, 8), "sh_link": (40, 4), "sh_info": (44, 4), "sh_addralign": (48, 8), "sh_entsize": (56, 8)}


@lru_cache(maxsize=None)
def elves() -> tuple[tuple[str, bytes], ...]:
    paths = sorted((GUESTS / "machine").glob("*.elf")) + [GUESTS / "refkernel" / "refkernel.elf",
                                                          GUESTS / "apfdemo" / "apfdemo.elf"]
    return tuple((p.name, p.read_bytes()) for p in paths)


def _field(rng: random.Random, blob: bytearray, base: int, fields: dict, label: str) -> str:
    name = rng.choice(sorted(fields))
    off, size = fields[name]
    at = base + off
    if at + size > len(blob):
        return ""
    old = int.from_bytes(blob[at:at + size], "little")
    r = rng.random()
    if r < 0.5:
        v = interesting(rng, 8 * size)
    elif r < 0.8:
        v = (old + rng.choice((-1, 1, -8, 8, 0x1000, -0x1000, len(blob)))) & ((1 << 8 * size) - 1)
    else:
        v = old ^ (1 << rng.randrange(8 * size))
    blob[at:at + size] = v.to_bytes(size, "little")
    return f"{label}.{name}={v:#x}"


def mutate_elf(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    b = bytearray(blob)
    done = []
    for _ in range(rng.randint(1, 4)):
        phoff, shoff = struct.unpack_from("<QQ", b, 32) if len(b) >= 48 else (0, 0)
        phnum, shnum = struct.unpack_from("<HxxH", b, 56) if len(b) >= 62 else (0, 0)
        r = rng.random()
        if r < 0.25:
            done.append(_field(rng, b, 0, EHDR, "ehdr"))
        elif r < 0.6 and phnum:
            k = rng.randrange(min(phnum, 16))
            done.append(_field(rng, b, phoff + 56 * k, PHDR, f"phdr[{k}]"))
        elif r < 0.8 and shnum:
            k = rng.randrange(min(shnum, 64))
            done.append(_field(rng, b, shoff + 64 * k, SHDR, f"shdr[{k}]"))
        elif r < 0.92:
            done += mutate_bytes(rng, b, rng.randint(1, 8), 0, min(len(b), rng.choice((64, 512, len(b)))))
        else:
            n = rng.choice((0, 1, 4, 16, 52, 63, 64, 100, 200, rng.randrange(len(b) + 1)))
            del b[n:]
            done.append(f"truncated to {n}")
    return bytes(b), ", ".join(d for d in done if d) or "unchanged"


def make_input(rng: random.Random) -> tuple[bytes, dict, str]:
    """(file contents, load_image keywords, words)."""
    name, blob = rng.choice(elves())
    if rng.random() < 0.8:
        data, what = mutate_elf(rng, blob)
        kw = {"load_addr": interesting(rng)} if rng.random() < 0.03 else {}
        return data, kw, f"{name}: {what}" + (f", load_addr {kw['load_addr']:#x}" if kw else "")
    r = rng.random()
    if r < 0.1:
        data = b""
    elif r < 0.6:
        data = rng.randbytes(rng.choice((1, 2, 16, 100, 4096, rng.randint(1, 70000))))
    else:  # code of a real guest, as a flat binary
        data = blob[rng.randrange(len(blob)):][:rng.randint(1, 8192)]
    kw = {}
    if rng.random() < 0.8:
        kw["load_addr"] = rng.choice((0x100000, 0x200000, 0, 0x1000, 0xFF000, 0xFFF000)) if rng.random() < 0.5 \
            else interesting(rng) - (rng.random() < 0.1) * (1 << 64)
    if rng.random() < 0.6:
        kw["entry"] = kw.get("load_addr", 0x100000) + rng.choice((0, 1, len(data), len(data) - 1)) \
            if rng.random() < 0.5 else interesting(rng)
    args = ", ".join(f"{k} {v:#x}" for k, v in kw.items())
    return data, kw, f"flat binary, {len(data)} bytes" + (f", {args}" if args else "")


def check(path: Path, kw: dict, vcpus: int, cap: int) -> str:
    """Load, build and run; the outcome, or ImageError out of it."""
    from apfdbg.machine.config import MachineConfig
    from apfdbg.machine.image import ImageError, load_image
    from apfdbg.machine.machine import Machine
    try:
        image = load_image(path, **kw)
        m = Machine(image, MachineConfig(vcpus=vcpus, max_insns=cap))
        Progress.machine = m
    except ImageError as e:
        msg = str(e)
        if not msg.startswith(str(path)) or "\n" in msg or "Traceback" in msg:
            raise AssertionError(f"ImageError without a clear message: {msg!r}") from e
        return "ImageError: " + re.sub(r"-?0x[0-9a-f]+|\d+", "N", msg[len(str(path)) + 2:])[:45]
    try:
        res = m.run()
    finally:
        m.close()
    from .guest import outcome
    return "ran: " + outcome(res.reason)


def run(report: Report, seed: int, start: int, stop: int, opts: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="apfdbg-fuzz-") as tmp:
        path = Path(tmp) / "image"
        for i in range(start, stop):
            rng = input_rng(seed, NAME, i)
            data, kw, what = make_input(rng)
            path.write_bytes(data)
            report.begin(i, 2 * BOUND)
            try:
                with watchdog(BOUND):
                    result = check(path, kw, rng.choice((1, 2)), opts["insns"])
            except TooSlow:
                report.note("time budget reached, still running")
                continue
            except (Exception, Hang) as e:
                report.exception(i, what, e)
                continue
            report.note(result)
