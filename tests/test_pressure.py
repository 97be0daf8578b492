"""The reference kernel under an aggressive pager on 4 vCPUs (the bundled scenario `pressure`): no task loses
or corrupts data, every not-present is matched by a page-ready or a wake-all, and the same
scenario gives the same trace, byte for byte."""
from collections import Counter
from pathlib import Path

from apfdbg.cli import main
from apfdbg.engine import Engine
from apfdbg.machine.image import load_image
from apfdbg.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "apfdbg" / "scenarios" / "pressure.toml"


def _engine() -> Engine:
    sc = load_scenario(SCENARIO)
    return Engine(load_image(Path(sc.base_dir) / sc.image), sc)


def test_reference_kernel_survives_aggressive_paging_on_four_vcpus():
    e = _engine()
    res = e.run()
    console = "".join(v.console.decode() for v in e.machine.vcpus)
    assert res.status == 1, (res.reason, console[-2000:])
    assert res.instructions >= 10_000_000 and len(res.per_vcpu) == 4
    assert "CORRUPT" not in console and " 0 corrupt" in console
    events = list(e.log.events)
    np_ = [x for x in events if x.kind == "async_pf_not_present" and x.delivery == "pf"]
    ready = [x for x in events if x.kind == "async_pf_ready" and not x.wakeup_all]
    assert len(np_) >= 1000
    assert {x.vcpu for x in np_} == {0, 1, 2, 3}
    # every not-present gets at most one ready, on its own vCPU, after it ...
    seen = Counter((x.vcpu, x.token) for x in ready)
    assert max(seen.values()) == 1
    first_np = {(x.vcpu, x.token): x.time for x in np_}
    # ... and exactly one, unless a wake-all released it
    wakeall = {x.vcpu: x.time for x in events if x.kind == "async_pf_ready" and x.wakeup_all}
    for (vcpu, token), t in first_np.items():
        assert (vcpu, token) in seen or wakeall.get(vcpu, -1) > t, f"token {token:#x} never completed"
    for x in ready:
        if (x.vcpu, x.token) in first_np:
            assert x.time > first_np[(x.vcpu, x.token)]
    assert all(g.kind != "triple_fault" for g in events)


def test_same_scenario_twice_gives_identical_trace_files(tmp_path):
    traces = []
    for i in range(2):
        t = tmp_path / f"t{i}.jsonl"
        assert main(["run", "--scenario", str(SCENARIO), "--headless", "--trace", str(t)]) == 1
        traces.append(t.read_bytes())
    assert traces[0] == traces[1]
    assert traces[0].count(b'"async_pf_not_present"') >= 1000
