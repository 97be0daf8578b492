"""The host's automatic pager: budgets, policies (LRU by the host's accessed bits, FIFO, random),
seeded randomness, page-in latency, and the `until` switch."""
import pytest

from apfdbg.host.kvm import build_machine
from apfdbg.host.pager import AutoPagerConfig, FixedLatency, ManualLatency, RandomLatency
from apfdbg.machine.config import MachineConfig
from apfdbg.machine.image import load_image

HOT = (0x103, 0x202)    # memtouch's 1 MiB buffer: touched in every round
COLD = (0x300, 0x3FF)   # never touched by the guest


def _run(guest, policy, budget=260, seed=0, period=2_000_000, **kw):
    """memtouch makes 4 rounds over its buffer, ~1.5M instructions each: ticks between rounds."""
    cfg = AutoPagerConfig(frames=[HOT, COLD], budget=budget, period=period, policy=policy, **kw)
    m = build_machine(load_image(guest("machine/memtouch")), MachineConfig(vcpus=1), seed=seed,
                      latency=FixedLatency(instructions=2_000), auto_pager=cfg)
    events = []
    m.sinks.append(events.append)
    res = m.run(max_insns=30_000_000)
    return m, res, events


def _hot_faults(events):
    return [e for e in events if e.kind == "swapped_fault" and HOT[0] <= e.gfn <= HOT[1]]


def test_lru_evicts_what_the_guest_does_not_use(guest):
    m, res, events = _run(guest, "lru")
    assert res.status == 1
    outs = {e.gfn for e in events if e.kind == "page_out"}
    assert outs <= set(range(COLD[0], COLD[1] + 1)) and len(outs) == 512 - 260
    assert not _hot_faults(events)  # the hot set fits in the budget: LRU never touches it


def test_fifo_evicts_by_residence_not_by_use(guest):
    m, res, events = _run(guest, "fifo")
    assert res.status == 1          # the guest survives, its data intact
    assert _hot_faults(events)      # ... but FIFO took hot frames away


def test_random_is_seeded(guest):
    runs = [[(e.kind, e.time, getattr(e, "gfn", None)) for e in _run(guest, "random", seed=s)[2]
             if e.kind == "page_out"] for s in (1, 1, 2)]
    assert runs[0] == runs[1] != runs[2]


def test_budget_is_kept_and_until_stops_the_pager(guest):
    m, res, events = _run(guest, "lru", budget=100, period=20_000, until=3_000_000)
    assert res.status == 1
    late = [e for e in events if e.kind == "page_out" and e.time > 3_000_000 + 20_000]
    assert not late and any(e.kind == "page_out" for e in events)
    # right after each tick at most `budget` eligible frames are resident
    out = set()
    eligible = set(range(HOT[0], HOT[1] + 1)) | set(range(COLD[0], COLD[1] + 1))
    by_time = {}
    for e in events:
        if e.kind == "page_out":
            out.add(e.gfn)
            by_time[e.time] = len(eligible - out)
        elif e.kind == "page_in":
            out.discard(e.gfn)
    assert by_time and max(by_time.values()) <= 100


def test_latency_models(guest):
    img = load_image(guest("machine/hello"))
    for latency, check in [
        (FixedLatency(instructions=12_345), lambda d: d == [12_345]),
        (RandomLatency(kind="random", min=100, max=200), lambda d: all(100 <= x <= 200 for x in d)),
    ]:
        m = build_machine(img, MachineConfig(vcpus=1), latency=latency)
        ev = []
        m.sinks.append(ev.append)
        m.page_out(img.entry >> 12)
        assert m.run(max_insns=1_000_000).status == 1
        stall = next(e for e in ev if e.kind == "stall")
        pin = next(e for e in ev if e.kind == "page_in")
        assert check([pin.time - stall.time])
    # manual: nothing comes back until completed by hand
    m = build_machine(img, MachineConfig(vcpus=1), latency=ManualLatency(kind="manual"))
    m.page_out(img.entry >> 12)
    assert m.run(max_insns=1_000_000).status == 2  # deadlock: the only vCPU waits for ever


def test_bad_latency_range_is_refused():
    with pytest.raises(ValueError):
        RandomLatency(kind="random", min=10, max=5)
