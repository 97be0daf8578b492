"""Run every apfdbg benchmark and print one compact table (see bench/README.md).

    python bench/run_all.py                 all of them (about 1 minute on 2 cores)
    python bench/run_all.py exits paging    only these

Each benchmark runs in its own subprocess (`bench_<name>.py --json`). Exit status 0 if every
target was met, 1 if one was missed, 2 if a benchmark failed to run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
NAMES = ("freerun", "exits", "events", "paging", "memory", "apf", "debug")


def fmt(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:#.3g}"


def main() -> int:
    names = sys.argv[1:] or list(NAMES)
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    rows, failed, t_all = [], [], time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, str(BENCH / f"bench_{name}.py"), "--json"],
                           capture_output=True, text=True, cwd=BENCH)
        dt = time.perf_counter() - t0
        try:
            results = json.loads(p.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            failed.append(name)
            print(f"{name}: failed (exit {p.returncode})\n{p.stderr.strip()}", file=sys.stderr)
            continue
        for r in results:
            status = "info" if r["ok"] is None else "OK" if r["ok"] else "MISS"
            rows.append((name, r["name"], fmt(r["value"]), r["unit"], r["target"], status))
        rows.append((name, f"(wall time of bench_{name}.py)", f"{dt:.1f}", "s", "", ""))
    head = ("bench", "measure", "value", "unit", "target", "")
    widths = [max(len(str(row[i])) for row in rows + [head]) for i in range(len(head))]
    line = "  ".join(f"{{:{'>' if i == 2 else '<'}{w}}}" for i, w in enumerate(widths))
    print(line.format(*head).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line.format(*row).rstrip())
    misses = [r for r in rows if r[5] == "MISS"]
    print(f"\n{len(rows) - len(names)} numbers, {sum(r[5] == 'OK' for r in rows)} target(s) met, "
          f"{len(misses)} missed, {len(failed)} benchmark(s) failed; "
          f"{time.perf_counter() - t_all:.0f} s in all; load average {load:.2f} at the start "
          f"({os.cpu_count()} cores)")
    if failed:
        return 2
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
