"""`apfdbg run --headless`: console, summary, exit status, traces, determinism."""
import json
import subprocess
import sys

from apfdbg.cli import main


def test_headless_prints_console_and_summary_and_returns_guest_status(guest, capsys):
    status = main(["run", str(guest("machine/hello")), "--headless", "--vcpus", "2"])
    out = capsys.readouterr().out
    assert status == 1
    assert "[vcpu0] hello from vCPU 0" in out and "[vcpu1] hello from vCPU 1" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("exit status 1 (guest wrote 0x0 to port 0xf4)") and "vCPU1" in last


def test_trace_is_json_lines_in_time_order(guest, tmp_path):
    t = tmp_path / "t.jsonl"
    main(["run", str(guest("machine/hello")), "--headless", "--trace", str(t)])
    events = [json.loads(line) for line in t.read_text().splitlines()]
    assert events[-1]["kind"] == "exit" and events[-1]["status"] == 1
    times = [e["time"] for e in events]
    assert times == sorted(times)
    assert {"console", "msr_write"} <= {e["kind"] for e in events}


def test_same_guest_same_scenario_gives_identical_traces(guest, tmp_path):
    sc = tmp_path / "s.toml"
    sc.write_text('[machine]\nvcpus = 3\nquantum = 777\n[pager]\nlatency = { kind = "random", min = 10, max = 5000 }\n'
                  '[[actions]]\nat = 500\ndo = "page_out_random"\ncount = 8\ngfns = "0x100-0x10f"\nevery = 3000\n')
    traces = []
    for i in range(2):
        t = tmp_path / f"t{i}.jsonl"
        main(["run", str(guest("machine/hello")), "--scenario", str(sc), "--headless", "--trace", str(t)])
        traces.append(t.read_bytes())
    assert traces[0] == traces[1]
    assert b'"page_out"' in traces[0] and b'"swapped_fault"' in traces[0]


def test_trace_survives_a_killed_run(guest, tmp_path):
    """Lines are flushed as they go: what was written before a hard kill is all there."""
    t = tmp_path / "t.jsonl"
    code = ("import os, apfdbg.cli as c, apfdbg.machine.machine as mm\n"
            "orig = mm.Machine.finish\n"
            "def die(self):\n    os._exit(9)\n"
            "mm.Machine.finish = die\n"
            f"c.main(['run', {str(guest('machine/hello'))!r}, '--headless', '--trace', {str(t)!r}])\n")
    rc = subprocess.run([sys.executable, "-c", code], capture_output=True).returncode
    assert rc == 9
    lines = t.read_text().splitlines()
    assert lines and all(json.loads(l)["kind"] for l in lines)
    assert any(json.loads(l)["kind"] == "console" for l in lines)


def test_text_trace_format(guest, tmp_path):
    t = tmp_path / "t.txt"
    main(["run", str(guest("machine/hello")), "--headless", "--trace", str(t), "--trace-format", "text"])
    last = t.read_text().splitlines()[-1]
    assert "exit: status=1" in last


def test_bad_scenario_names_line_and_field(guest, tmp_path, capsys):
    sc = tmp_path / "bad.toml"
    sc.write_text('name = "x"\n[machine]\nvcpus = 100\n')
    assert main(["run", str(guest("machine/hello")), "--scenario", str(sc), "--headless"]) == 8
    err = capsys.readouterr().err
    assert "bad.toml:3: machine.vcpus" in err


def test_pausing_does_not_change_the_run(guest):
    """Pauses land mid-turn; resuming continues that turn, so the event stream is the same."""
    from apfdbg.machine.config import MachineConfig
    from apfdbg.machine.image import load_image
    from apfdbg.machine.machine import Machine

    def run(pause_every):
        m = Machine(load_image(guest("machine/hello")), MachineConfig(vcpus=2, quantum=500))
        seen = []
        n = [0]

        def sink(e):
            seen.append(e.model_dump_json())
            n[0] += 1
            if pause_every and n[0] % pause_every == 0:
                m.pause_requested = True
        m.sinks.append(sink)
        while not m.exit_requested:
            m.pause_requested = False
            m.step()
        m.finish()
        return seen
    assert run(0) == run(1) == run(3)
