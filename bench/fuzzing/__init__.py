"""The targets of bench/fuzz.py, one module each (see bench/README.md, "Fuzzing")."""
from __future__ import annotations

from importlib import import_module

from .common import Report, Tally

NAMES = ("guest", "image", "scenario", "gdb", "tui")
HIDDEN = ("selftest",)  # fuzz.py's own test target, run only when named


def target(name: str):
    """The module of target `name` (imported on demand: a worker loads only what it runs)."""
    if name not in NAMES + HIDDEN:
        raise KeyError(f"unknown target {name!r}: {', '.join(NAMES)}")
    return import_module(f".{name}", __name__)


def options(name: str, overrides: dict | None = None) -> dict:
    mod = target(name)
    return {**mod.DEFAULTS, **{k: v for k, v in (overrides or {}).items() if k in mod.DEFAULTS}}


def run_slice(name: str, seed: int, start: int, stop: int, opts: dict | None = None,
              report: Report | None = None) -> Tally:
    """Inputs start..stop-1 of a target, in this process."""
    report = report or Report(name)
    mod = target(name)
    mod.run(report, seed, start, stop, options(name, opts))
    return report.tally


__all__ = ["HIDDEN", "NAMES", "Report", "Tally", "options", "run_slice", "target"]
