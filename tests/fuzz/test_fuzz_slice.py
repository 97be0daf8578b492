"""A small fixed-seed slice of every bench/fuzz.py target, so CI catches a regression the full run
would (see bench/README.md, "Fuzzing"), and fuzz.py's own counting of what goes wrong."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import fuzzing  # noqa: E402

SLICES = {"guest": (0, 8, {"insns": 200_000}), "image": (0, 60, None), "scenario": (0, 60, None),
          "gdb": (0, 40, None), "tui": (0, 25, None)}


@pytest.mark.parametrize("target", fuzzing.NAMES)
def test_fixed_seed_slice_finds_nothing(target):
    start, stop, opts = SLICES[target]
    tally = fuzzing.run_slice(target, 20261206, start, stop, opts)
    assert tally.inputs == stop - start
    assert tally.ok, "\n\n".join(f"{f.line()}\n{f.text}" for f in tally.failures)
    assert sum(tally.notes.values()) >= stop - start   # every input said what it did


def test_fuzz_py_counts_tracebacks_hangs_deaths_and_lost_lines():
    """The selftest target raises (1), hangs in Python (2) and where the watchdog cannot reach (3),
    kills its worker (4), loses a line (5): each counted once, and the slice goes on after each."""
    p = subprocess.run([sys.executable, str(BENCH / "fuzz.py"), "--inputs", "10", "--jobs", "1", "selftest"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    row = next(line.split() for line in p.stdout.splitlines() if line.startswith("selftest "))
    assert row[1:5] == ["10", "2", "2", "1"], p.stdout           # inputs, tracebacks, hangs, lost
    assert "selftest: ok 5" in p.stdout, p.stdout                  # 0, 6, 7, 8, 9 ran
    assert "the worker died" in p.stdout and "did not finish within its bound" in p.stdout
    assert "--replay selftest:3" in p.stdout


def test_fuzz_py_refuses_unknown_targets():
    p = subprocess.run([sys.executable, str(BENCH / "fuzz.py"), "nope"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "unknown target(s) nope" in p.stderr
