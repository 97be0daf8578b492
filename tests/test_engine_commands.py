"""Every host command the UI and scenarios use changes the model the guest sees (Engine.apply)."""
from pathlib import Path

from apfdbg.engine import Engine
from apfdbg.machine.image import load_image
from apfdbg.scenario import Action, Scenario

ROOT = Path(__file__).resolve().parent.parent
REFKERNEL = ROOT / "guests" / "refkernel" / "refkernel.elf"
TASK_PAGES = "0x800-0x8ff"  # the reference kernel's task pages with its defaults on 4 vCPUs


def _engine(**pager) -> Engine:
    sc = Scenario.model_validate({"machine": {"vcpus": 4},
                                  "pager": {"latency": {"kind": "manual"}, **pager}})
    return Engine(load_image(REFKERNEL), sc)


def _advance(e: Engine, n: int) -> None:
    m = e.machine
    m.pause_requested = False
    m.step(until=m.now + n)


def _outstanding(e: Engine) -> int:
    return sum(len(e.kvm.state(i).in_flight) for i in range(4))


def _engine_with_work() -> Engine:
    e = _engine()
    _advance(e, 400_000)  # every vCPU has enabled async PF
    e.apply(Action(at=0, do="page_out", gfns=TASK_PAGES))
    _advance(e, 400_000)
    assert _outstanding(e) >= 2, "user tasks fault on their pages: works wait for manual page-ins"
    return e


def test_page_out_and_page_in():
    e = _engine()
    e.apply(Action(at=0, do="page_out", gfns="0x800-0x803"))
    assert [g for g in range(0x800, 0x804) if e.machine.ram.is_swapped(g)] == [0x800, 0x801, 0x802, 0x803]
    e.apply(Action(at=0, do="page_in", gfns="0x801"))
    assert not e.machine.ram.is_swapped(0x801) and e.machine.ram.is_swapped(0x802)


def test_page_out_random_is_seeded_and_counts():
    picks = []
    for _ in range(2):
        e = _engine()
        e.apply(Action(at=0, do="page_out_random", count=7, gfns=TASK_PAGES))
        picks.append(e.machine.ram.swapped_gfns())
    assert picks[0] == picks[1] and len(picks[0]) == 7
    assert all(0x800 <= g <= 0x8FF for g in picks[0])


def test_complete_oldest_then_all():
    e = _engine_with_work()
    v = next(i for i in range(4) if e.kvm.state(i).in_flight)
    st = e.kvm.state(v)
    oldest = st.in_flight[0]
    before = len(st.in_flight)
    e.apply(Action(at=0, do="complete_oldest", vcpu=v))
    assert oldest not in st.in_flight and len(st.in_flight) == before - 1
    assert oldest in st.done or oldest not in st.queue  # done, or already delivered
    e.apply(Action(at=0, do="complete_all"))
    assert _outstanding(e) == 0


def test_complete_by_token():
    e = _engine_with_work()
    v = next(i for i in range(4) if e.kvm.state(i).in_flight)
    work = e.kvm.state(v).in_flight[-1]
    e.apply(Action(at=0, do="complete", token=work.token, vcpu=v))
    assert work not in e.kvm.state(v).in_flight
    assert not e.machine.ram.is_swapped(work.gfn)  # the page is back for the guest


def test_wake_all_and_reset_vcpu():
    e = _engine_with_work()
    ev = []
    e.machine.sinks.append(ev.append)
    e.apply(Action(at=0, do="wake_all", vcpu=1))
    assert [x for x in ev if x.kind == "wakeup_all" and x.vcpu == 1]
    e.apply(Action(at=0, do="reset_vcpu", vcpu=2))
    st = e.kvm.state(2)
    assert st.msr_val == 0 and st.queued == 0 and not st.in_flight and not st.done


def test_scenario_actions_fire_at_their_time_and_repeat():
    sc = Scenario.model_validate({
        "machine": {"vcpus": 2},
        "actions": [{"at": 50_000, "do": "page_out", "gfns": "0x800", "every": 100_000}],
    })
    e = Engine(load_image(REFKERNEL), sc)
    ev = []
    e.machine.sinks.append(ev.append)
    _advance(e, 400_000)
    outs = [x.time for x in ev if x.kind == "page_out" and x.gfn == 0x800]
    # timed host actions run between vCPU turns: at the first block boundary at or after their
    # time (a block is at most 512 instructions), on a fixed grid
    assert len(outs) >= 3 and outs[0] < 50_512  # (a frame still out is not paged out again)
    assert all(t >= 50_000 and (t - 50_000) % 100_000 < 512 for t in outs)
