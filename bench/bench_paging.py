"""Benchmark 4: host paging round trips (page-out, guest access exits, page-in, restart).

A 64 MiB guest (`MachineConfig(ram_mib=64)`, 1 vCPU, no KVM host attached) runs one pass of the
`touch` loop: one byte read from every 4 KiB frame from the end of its image to the end of RAM.
The host pages frames out in RAM order from a `m.timeline.schedule` callback: the first 1,024
frames before the run, then 64 more every 128 instructions of virtual time -- twice the guest's
pace (4 instructions per frame), so the host stays ahead and every frame the guest touches is
out when it gets there. Every frame of the 64 MiB guest is paged out exactly once (16,384
page-outs, including the image's own code and data frames).

With no host attached, a swapped fault stalls the vCPU and the machine pages the frame back in
after `m.page_in_latency(gfn)` instructions (default 0), then restarts the access. A machine sink
records the wall time of each `swapped_fault` event; the cost of the first 1,000 round trips is
compared with that of the last 1,000 (target: no growth, last/first <= 1.25).

Best of 3 for each window (fresh machine per run).
"""
from __future__ import annotations

import time

import common as C

RAM_MIB = 64
FIRST_BATCH = 1024
BATCH = 64
EVERY = 128          # instructions between two page-out batches
WINDOW = 1000
REPS = 3
TARGET_GROWTH = 1.25
TARGET_ROUND_TRIP_US = 150.0


class Pager:
    """Pages out every frame of `m` once, in order, ahead of the guest."""

    def __init__(self, m) -> None:
        self.m = m
        self.frames = m.ram.frames
        self.next = 0
        self.outs = 0

    def batch(self, n: int) -> None:
        end = min(self.frames, self.next + n)
        self.outs += len(self.m.page_out(range(self.next, end)))
        self.next = end

    def tick(self) -> None:
        self.batch(BATCH)
        if self.next < self.frames:
            self.m.timeline.schedule(self.m.now + EVERY, self.tick)


def one_run() -> tuple[list[int], float, int, dict[str, int]]:
    m = C.machine("touch", vcpus=1, ram_mib=RAM_MIB)
    start = C.sym("guest_end")
    m.ram.write_u64(C.sym("touch_start"), start)
    m.ram.write_u64(C.sym("touch_end"), m.ram.size)
    stamps: list[int] = []
    clock = time.perf_counter_ns

    def sink(ev) -> None:
        if ev.kind == "swapped_fault":
            stamps.append(clock())

    m.sinks.append(sink)
    pager = Pager(m)
    pager.batch(FIRST_BATCH)
    m.timeline.schedule(EVERY, pager.tick)
    try:
        _, dt = C.timed_run(m)
        counts = dict(m.counts)
    finally:
        m.close()
    if pager.outs != pager.frames:
        raise RuntimeError(f"paged out {pager.outs} frames, not {pager.frames}")
    touched = (m.ram.size - start) // 4096
    if len(stamps) < touched:
        raise RuntimeError(f"only {len(stamps)} round trips for {touched} touched frames: "
                           "the pager fell behind the guest")
    return stamps, dt, pager.outs, counts


def main() -> None:
    a = C.args(__doc__.splitlines()[0])
    first, last, total = [], [], []
    for _ in range(REPS):
        stamps, dt, outs, counts = one_run()
        n = len(stamps)
        first.append((stamps[WINDOW] - stamps[0]) / WINDOW / 1e3)
        last.append((stamps[-1] - stamps[-1 - WINDOW]) / WINDOW / 1e3)
        total.append(dt / n * 1e6)
    f, l = min(first), min(last)
    results = [
        C.info("page-outs (every frame of 64 MiB once)", outs, "frames"),
        C.info("round trips (swapped faults)", n, ""),
        C.check("round trip, first 1000", f, "us", "<=", TARGET_ROUND_TRIP_US),
        C.check("round trip, last 1000", l, "us", "<=", TARGET_ROUND_TRIP_US),
        C.check("round trip growth last/first", l / f, "x", "<=", TARGET_GROWTH),
        C.info("whole run / round trips (incl. page-outs)", min(total), "us"),
    ]
    if a.profile:
        C.profiled(True, "one paging run", one_run)
    C.finish(results, a.json)


if __name__ == "__main__":
    main()
