"""The TUI: random key sequences through Textual's Pilot (App.run_test) on the demo guest under its
default scenario, on a guest that triple-faults (guests/machine/triplefault.elf) and on the reference
kernel (source lines, a #PF handler); the app on a fixed-size terminal that sometimes changes size.

The engine runs on the app's thread (threaded=False, as tests/ui does), so a session replays exactly;
while the app says the guest runs, each input lets it run a slice, as the engine thread would. A
traceback is an exception the app stopped on (App._exception) or the engine's error; an input that
does not settle within the bound is a hang. Each session's JSONL trace is checked at its end.
"""
from __future__ import annotations

import asyncio
import random
import traceback

from .common import GUESTS, Report, TraceCheck, input_rng

NAME = "tui"
DEFAULTS = {"insns": 20_000}
DESCRIBE = "1-6 keys per input through Pilot, sessions of {session} inputs on 3 guests; {insns:,} insns a slice"
SESSION_EVERY = 200   # a new app every N inputs (and after the app quits or fails)
SYNC_LIMIT = 300_000  # what a synchronous step (n, ., u, j ...) may run at most (the engine's default: 20M)
BOUND = 20.0
SIZES = ((200, 60), (160, 50), (120, 40), (100, 30), (80, 24))

NAV = ("tab", "shift+tab", "up", "down", "left", "right", "pageup", "pagedown", "home", "end", "escape",
       "enter", "backspace", "delete", "ctrl+p", "space")
TEXT = tuple("0123456789abcdefx+-*/() _:.,=") + tuple(f"text:{t}" for t in (
    "pf_handler", "catch apf ready", "watch apf_reason_area 4", "rsp", "0x1000", "u64(rsp)", "phys 0x1000",
    "*0xffffffffffffffff", "0xffffffffffffffff", "1/0", "2**4096", "apf.c:125 if cr2 == 1", "-1", "zz"))


def keys_alphabet() -> tuple[str, ...]:
    from apfdbg.ui.bindings import KEYS
    return tuple(sorted({n for k in KEYS for n in k.key.split(",") if n != "q"}))


def gen_keys(rng: random.Random, alphabet) -> list[str]:
    out = []
    for _ in range(rng.randint(1, 6)):
        r = rng.random()
        if r < 0.55:
            out.append(rng.choice(alphabet))
        elif r < 0.75:
            out.append(rng.choice(NAV))
        elif r < 0.97:
            out.append(rng.choice(TEXT))        # typed into a dialog, if one is open
        elif r < 0.995:
            out.append("resize")
        else:
            out.append("q")
    return out


def make_engine(kind: int):
    from apfdbg.engine import Engine
    from apfdbg.machine.image import load_image
    from apfdbg.scenario import Scenario, load_scenario
    k = kind % 3
    if k == 0:
        eng = Engine(load_image(GUESTS / "apfdemo" / "apfdemo.elf"),
                     load_scenario(GUESTS.parent / "apfdbg" / "scenarios" / "default.toml"))
    elif k == 1:
        eng = Engine(load_image(GUESTS / "machine" / "triplefault.elf"), Scenario())
    else:
        eng = Engine(load_image(GUESTS / "refkernel" / "refkernel.elf"),
                     load_scenario(GUESTS.parent / "tests" / "gdb" / "apf_small.toml"))
    eng.SYNC_LIMIT = SYNC_LIMIT
    return eng, ("apfdemo", "triplefault", "refkernel")[k]


def key_event(app, key: str):
    """The Key event Pilot.press would send for `key` (App._press_keys)."""
    import unicodedata
    from textual import events
    from textual.keys import REPLACED_KEYS, _character_to_key, _get_unicode_name_from_key
    if len(key) == 1 and not key.isalnum():
        key = _character_to_key(key)
    original = REPLACED_KEYS.get(key, key)
    try:
        char = unicodedata.lookup(_get_unicode_name_from_key(original))
    except KeyError:
        char = key if len(key) == 1 else None
    ev = events.Key(key, char)
    ev.set_sender(app)
    return ev


async def _press(app, pilot, rng: random.Random, keys: list[str]) -> None:
    """Keys as Pilot.press sends them, each processed before the next (without Pilot's waits for
    the process to go idle, 40 ms a key); "text:..." types its characters."""
    for key in keys:
        if key == "resize":
            await pilot.resize_terminal(*rng.choice(SIZES))
            continue
        for k in key[5:] if key.startswith("text:") else [key]:
            app._driver.send_message(key_event(app, k))
            await pilot.pause(0)
            if app.return_code is not None or app._exception is not None:
                return


async def _session(report: Report, seed: int, first: int, stop: int, cap: int) -> int:
    """Inputs first.. until `stop`, the session's end or the app's; returns the next input."""
    from apfdbg.ui.app import ApfApp
    srng = input_rng(seed, NAME + "-session", first)
    eng, guest = make_engine(first // SESSION_EVERY)
    trace = TraceCheck(eng.machine)
    app = ApfApp(eng, threaded=False, paused=srng.random() < 0.5, speed=srng.choice(("key", 4, 100, "full")))
    alphabet = keys_alphabet()
    history: list[str] = []
    i = first
    size = srng.choice(SIZES)
    ctx = app.run_test(size=size)
    pilot = await ctx.__aenter__()  # in this task: it sets the app's context variables
    failed = False
    try:
        end = min(stop, (first // SESSION_EVERY + 1) * SESSION_EVERY)
        while i < end:
            rng = input_rng(seed, NAME, i)
            keys = gen_keys(rng, alphabet)
            history += keys
            what = f"{guest} at {size[0]}x{size[1]}, inputs {first}..{i}: keys {history[-60:]}"
            report.begin(i, 3 * BOUND)
            try:
                await asyncio.wait_for(_step(app, pilot, rng, keys, eng, cap), BOUND)
            except asyncio.TimeoutError:
                report.fail("hang", i, what, f"the app did not settle within {BOUND:g} s")
                failed = True
                return i + 1
            i += 1
            if app._exception is not None or eng.error:
                exc = app._exception
                text = "".join(traceback.format_exception(exc)) if exc is not None else eng.error
                report.fail("traceback", i - 1, what, text)
                failed = True
                return i
            if app.return_code is not None:
                report.note("app quit")
                return i
            report.note("keys")
        return i
    finally:
        try:
            await ctx.__aexit__(None, None, None)  # in this task, as __aenter__ (the parent's backstop bounds it)
        except Exception as e:  # run_test re-raises what the app stopped on
            if not failed:
                report.fail("traceback", i - 1, f"{guest}, closing the app after keys {history[-60:]}",
                            "".join(traceback.format_exception(e)))
        lost, text = trace.lost()
        if lost:
            report.fail("lost", i - 1, f"{guest} session from input {first}", text, lost)
        eng.machine.close()


async def _step(app, pilot, rng, keys, eng, cap) -> None:
    await _press(app, pilot, rng, keys)
    if app.return_code is None and app._exception is None and eng._running.is_set() and not eng.machine.exit_requested:
        eng.pump(cap)   # the engine thread's slice
        await pilot.pause(0)


def run(report: Report, seed: int, start: int, stop: int, opts: dict) -> None:
    async def main() -> None:
        i = start
        while i < stop:
            i = await _session(report, seed, i, stop, opts["insns"])
    asyncio.run(main())


def replay_start(i: int) -> int:
    return i - i % SESSION_EVERY
