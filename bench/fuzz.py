"""Fuzz apfdbg and print, per target, the inputs tried, the Python tracebacks, the hangs and the
trace lines lost (see bench/README.md, "Fuzzing"). Seeded and bounded: the same seed tries the same
inputs, and input `i` of a target is replayed from its index alone.

    python bench/fuzz.py                          10,000 inputs per target, seed 1, all cores
    python bench/fuzz.py --inputs 500 guest gdb   fewer inputs, some targets
    python bench/fuzz.py --replay guest:1234      one input again, in this process, with its traceback

Targets: guest, image, scenario, gdb, tui. Each slice of a target runs in a worker process; the
worker says what every input did on its stdout, one JSON object a line. A worker that says nothing
within an input's bound is killed (a hang, even one stuck in C) and one that dies (a signal, a
Python error outside the targets' own catch) counts a traceback; either way the rest of its slice
goes on in a new worker. Exit status 0 if every count is 0, 1 if not, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import fuzzing  # noqa: E402  (after the path)
from fuzzing.common import Failure, Report, Tally  # noqa: E402

SLICE = 200          # inputs a worker runs (the tui's sessions and the gdb stubs' lives fit in it)
START_BOUND = 60.0   # a worker's imports and first machine


# ---- the worker ----------------------------------------------------------------------------------
class PipeReport(Report):
    """Report whose every call is also a line on stdout, for the parent."""

    def __init__(self, target: str, out) -> None:
        super().__init__(target)
        self.out = out

    def _say(self, **msg) -> None:
        self.out.write(json.dumps(msg) + "\n")
        self.out.flush()

    def begin(self, i: int, bound: float) -> None:
        super().begin(i, bound)
        self._say(begin=i, bound=bound)

    def note(self, key: str) -> None:
        super().note(key)
        self._say(note=key)

    def fail(self, kind: str, i: int, what: str, text: str, count: int = 1) -> None:
        super().fail(kind, i, what, text, count)
        self._say(fail=kind, i=i, what=what[:500], text=text[-6000:], count=count)


def worker(target: str, seed: int, start: int, stop: int, opts: dict) -> int:
    out = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout = sys.stderr          # whatever the code under test prints stays out of the pipe
    report = PipeReport(target, out)
    fuzzing.run_slice(target, seed, start, stop, opts, report)
    report._say(done=True)
    return 0


# ---- the parent ----------------------------------------------------------------------------------
@dataclass
class Job:
    target: str
    start: int
    stop: int
    proc: subprocess.Popen | None = None
    stderr: object = None
    buf: bytes = b""
    current: int | None = None
    deadline: float = 0.0
    done: bool = False


@dataclass
class Pool:
    seed: int
    opts: dict
    jobs: int
    tallies: dict[str, Tally] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)

    def command(self, job: Job) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--worker", job.target, str(self.seed),
                str(job.start), str(job.stop), json.dumps(fuzzing.options(job.target, self.opts))]

    def launch(self, job: Job) -> None:
        job.stderr = tempfile.TemporaryFile()
        job.proc = subprocess.Popen(self.command(job), stdout=subprocess.PIPE, stderr=job.stderr,
                                    stdin=subprocess.DEVNULL)
        os.set_blocking(job.proc.stdout.fileno(), False)
        job.current, job.deadline = None, time.monotonic() + START_BOUND

    def handle(self, job: Job, msg: dict) -> None:
        t = self.tallies[job.target]
        if "begin" in msg:
            job.current = msg["begin"]
            job.deadline = time.monotonic() + msg["bound"]
            t.inputs += 1
        elif "note" in msg:
            t.notes[msg["note"]] = t.notes.get(msg["note"], 0) + 1
        elif "fail" in msg:
            kind, n = msg["fail"], msg["count"]
            setattr(t, {"traceback": "tracebacks", "hang": "hangs"}.get(kind, "lost"),
                    getattr(t, {"traceback": "tracebacks", "hang": "hangs"}.get(kind, "lost")) + n)
            if len(t.failures) < Report.KEEP:
                t.failures.append(Failure(job.target, msg["i"], kind, msg["what"], msg["text"]))
        elif msg.get("done"):
            job.done = True

    def read(self, job: Job) -> None:
        try:
            chunk = job.proc.stdout.read()
        except BlockingIOError:
            return
        if chunk:
            job.buf += chunk
            *lines, job.buf = job.buf.split(b"\n")
            for line in lines:
                self.handle(job, json.loads(line))

    def stderr_tail(self, job: Job) -> str:
        job.stderr.seek(0)
        return job.stderr.read().decode(errors="replace")[-4000:]

    def ended(self, job: Job, killed: str | None) -> Job | None:
        """The worker is gone: count what went wrong; the job for the rest of its slice, if any."""
        t = self.tallies[job.target]
        rc = job.proc.wait()
        text = self.stderr_tail(job)
        job.proc.stdout.close()
        job.stderr.close()
        if job.done and rc == 0:
            return None
        at = job.current if job.current is not None else job.start
        if killed:
            t.hangs += 1
            kind = "hang"
            text = killed + ("\n" + text if text else "")
        else:
            t.tracebacks += 1
            kind = "traceback"
            text = f"the worker died (exit status {rc})\n{text}"
        if len(t.failures) < Report.KEEP:
            t.failures.append(Failure(job.target, at, kind, f"worker at input {at}", text))
        if job.current is None:   # it never began an input: the harness itself is broken
            return None
        return Job(job.target, at + 1, job.stop) if at + 1 < job.stop else None

    def run(self, queue: deque[Job]) -> None:
        sel = selectors.DefaultSelector()
        running: list[Job] = []
        while queue or running:
            while queue and len(running) < self.jobs:
                job = queue.popleft()
                self.started.setdefault(job.target, time.monotonic())
                self.launch(job)
                sel.register(job.proc.stdout, selectors.EVENT_READ, job)
                running.append(job)
            for key, _ in sel.select(timeout=0.5):
                self.read(key.data)
            now = time.monotonic()
            for job in list(running):
                self.read(job)
                killed = None
                if job.proc.poll() is None:
                    if now < job.deadline:
                        continue
                    what = f"input {job.current}" if job.current is not None else "the worker's start"
                    killed = f"{what} did not finish within its bound: the worker was killed"
                    job.proc.kill()
                self.read(job)
                sel.unregister(job.proc.stdout)
                running.remove(job)
                rest = self.ended(job, killed)
                if rest is None and not any(j.target == job.target for j in running + list(queue)):
                    self.tallies[job.target].seconds = time.monotonic() - self.started[job.target]
                if rest is not None:
                    queue.appendleft(rest)


def slices(target: str, n: int) -> list[Job]:
    return [Job(target, a, min(n, a + SLICE)) for a in range(0, n, SLICE)]


def table(tallies: dict[str, Tally], opts: dict) -> str:
    rows = [("target", "inputs", "tracebacks", "hangs", "lost lines", "seconds", "inputs/s", "what")]
    for name, t in tallies.items():
        mod = fuzzing.target(name)
        corpus = next((getattr(mod, f) for f in ("guests", "elves", "corpus") if hasattr(mod, f)), tuple)
        desc = mod.DESCRIBE.format(**fuzzing.options(name, opts), n=len(corpus()),
                                   session=getattr(mod, "SESSION_EVERY", ""))
        rate = t.inputs / t.seconds if t.seconds else 0.0
        rows.append((name, f"{t.inputs:,}", str(t.tracebacks), str(t.hangs), str(t.lost),
                     f"{t.seconds:.0f}", f"{rate:.1f}", desc))
    w = [max(len(r[k]) for r in rows) for k in range(len(rows[0]) - 1)]
    out = []
    for j, r in enumerate(rows):
        cells = [r[0].ljust(w[0])] + [c.rjust(w[k]) for k, c in enumerate(r[1:-1], 1)] + [r[-1]]
        out.append("  ".join(cells))
        if j == 0:
            out.append("  ".join("-" * x for x in w) + "  ----")
    return "\n".join(out)


def outcomes(t: Tally, top: int = 8) -> str:
    items = sorted(t.notes.items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{k} {v:,}" for k, v in items[:top])
    return f"  {t.target}: {shown}" + (f", {len(items) - top} more kinds" if len(items) > top else "")


def replay(spec: str, seed: int, opts: dict) -> int:
    name, _, index = spec.partition(":")
    i = int(index)
    mod = fuzzing.target(name)
    start = mod.replay_start(i) if hasattr(mod, "replay_start") else i
    tally = fuzzing.run_slice(name, seed, start, i + 1, opts)
    for f in tally.failures:
        print(f.line())
        print(f.text)
    print(f"{name}:{i} (from {start}): {tally.inputs} inputs, {tally.tracebacks} tracebacks, "
          f"{tally.hangs} hangs, {tally.lost} lost lines; outcomes {tally.notes}")
    return 0 if tally.ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        target, seed, start, stop, opts = argv[1:6]
        return worker(target, int(seed), int(start), int(stop), json.loads(opts))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", help=f"some of {', '.join(fuzzing.NAMES)} (default: all)")
    ap.add_argument("--inputs", type=int, default=10_000, help="inputs per target (default 10,000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: cores)")
    ap.add_argument("--insns", type=int, help="instruction cap of a guest run (targets' own default otherwise)")
    ap.add_argument("--replay", metavar="TARGET:I", help="run one input in this process and show what it did")
    ap.add_argument("--json", metavar="FILE", help="also write the tallies and failures as JSON")
    args = ap.parse_args(argv)
    names = args.targets or list(fuzzing.NAMES)
    bad = [n for n in names if n not in fuzzing.NAMES + fuzzing.HIDDEN]
    if bad or args.inputs < 0 or args.jobs < 1:
        ap.error(f"unknown target(s) {', '.join(bad)}" if bad else "--inputs >= 0 and --jobs >= 1")
    opts = {"insns": args.insns} if args.insns else {}
    if args.replay:
        if args.replay.partition(":")[0] not in fuzzing.NAMES + fuzzing.HIDDEN or not args.replay.partition(":")[2].isdigit():
            ap.error("--replay TARGET:I, e.g. guest:1234")
        return replay(args.replay, args.seed, opts)
    pool = Pool(args.seed, opts, args.jobs, {n: Tally(n) for n in names})
    t0 = time.monotonic()
    print(f"fuzzing {', '.join(names)}: {args.inputs:,} inputs each, seed {args.seed}, {args.jobs} workers",
          flush=True)
    try:
        pool.run(deque(j for n in names for j in slices(n, args.inputs)))
    except KeyboardInterrupt:
        print("interrupted: the counts so far", file=sys.stderr)
    print(table(pool.tallies, opts))
    print(f"total {time.monotonic() - t0:.0f} s. What the inputs did:")
    for t in pool.tallies.values():
        print(outcomes(t))
    failures = [f for t in pool.tallies.values() for f in t.failures]
    for f in failures:
        print(f"\n{f.line()}\n  replay: python bench/fuzz.py --seed {args.seed} --replay {f.target}:{f.index}")
        print("  " + f.text.strip().replace("\n", "\n  ")[-3000:])
    if args.json:
        Path(args.json).write_text(json.dumps({n: {**{k: v for k, v in vars(t).items() if k != "failures"},
                                                   "failures": [vars(f) for f in t.failures]}
                                               for n, t in pool.tallies.items()}, indent=1))
    return 0 if all(t.ok for t in pool.tallies.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
