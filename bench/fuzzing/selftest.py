"""A target that goes wrong on purpose, to test fuzz.py's own counting (tests/fuzz): input 1 raises,
2 hangs in Python, 3 hangs where the watchdog cannot reach (SIGALRM blocked), 4 kills its worker,
5 loses a trace line; the others pass."""
from __future__ import annotations

import os
import signal
import time

from .common import Hang, Report, watchdog

NAME = "selftest"
DEFAULTS: dict = {}
DESCRIBE = "fuzz.py's own check"


def one(i: int) -> None:
    k = i % 10
    if k == 1:
        raise ValueError("input 1 raises")
    if k == 2:
        time.sleep(30)
    if k == 3:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(30)
    if k == 4:
        os.abort()


def run(report: Report, seed: int, start: int, stop: int, opts: dict) -> None:
    for i in range(start, stop):
        report.begin(i, 2.0)
        try:
            with watchdog(0.5):
                one(i)
        except (Exception, Hang) as e:
            report.exception(i, f"selftest {i}", e)
            continue
        if i % 10 == 5:
            report.fail("lost", i, f"selftest {i}", "1 line lost on purpose")
            continue
        report.note("ok")
