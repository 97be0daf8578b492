"""`apfdbg` command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from .machine.config import MachineConfig
from .machine.image import ImageError, load_image
from .machine.machine import EXIT_BAD_INPUT

DEFAULT_GUEST = Path(__file__).resolve().parent.parent / "guests" / "machine" / "hello.elf"


def _int(s: str) -> int:
    try:
        return int(s, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="apfdbg", description=__doc__)
    sub = p.add_subparsers(dest="cmd")
    r = sub.add_parser("run", help="run a guest image")
    r.add_argument("image", nargs="?", help="guest image (default: the scenario's, else the bundled guest)")
    r.add_argument("--scenario", default=None, metavar="FILE", help="TOML scenario (docs/scenarios.md)")
    r.add_argument("--headless", action="store_true", help="no UI: console and summary on stdout")
    r.add_argument("--vcpus", type=int, default=None)
    r.add_argument("--ram", type=int, default=None, metavar="MIB")
    r.add_argument("--quantum", type=int, default=None)
    r.add_argument("--max-insns", type=_int, default=None)
    r.add_argument("--load-addr", type=_int, default=None, help="flat binary: where to load it")
    r.add_argument("--entry", type=_int, default=None, help="flat binary: where to start")
    r.add_argument("--trace", default=None, metavar="FILE", help="write every event to FILE")
    r.add_argument("--trace-format", choices=("jsonl", "text"), default="jsonl")
    return p


EXIT_EXPECT_FAILED = 10


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd != "run":
        args = build_parser().parse_args(["run", "--headless"])
    from .engine import Engine
    from .scenario import Scenario, ScenarioError, load_scenario
    try:
        scenario = load_scenario(args.scenario) if args.scenario else Scenario()
        overrides = {k: v for k, v in (("vcpus", args.vcpus), ("ram_mib", args.ram),
                                        ("quantum", args.quantum), ("max_insns", args.max_insns))
                     if v is not None}
        if overrides:
            scenario = scenario.model_copy(update={"machine": MachineConfig(
                **{**scenario.machine.model_dump(), **overrides})})
        image_path = args.image
        if image_path is None and scenario.image:
            image_path = str(Path(scenario.base_dir) / scenario.image)
        image = load_image(image_path or DEFAULT_GUEST, load_addr=args.load_addr, entry=args.entry)
        engine = Engine(image, scenario)
    except (ImageError, ScenarioError) as e:
        print(f"apfdbg: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValidationError as e:
        for err in e.errors():
            print(f"apfdbg: --{err['loc'][0]}: {err['msg']}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from .headless import run_headless
    from .trace import TraceWriter
    trace_file = None
    try:
        if args.trace:
            trace_file = open(args.trace, "w", encoding="utf-8")
            engine.machine.sinks.insert(0, TraceWriter(trace_file, args.trace_format))
        res = run_headless(engine.machine)
    except KeyboardInterrupt:
        print("apfdbg: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141
    except OSError as e:
        print(f"apfdbg: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if trace_file:
            trace_file.close()
    failed = [r for r in engine.expectations() if not r.ok]
    for r in engine.expectations():
        print(f"expect {r.description}: observed {r.observed} {'ok' if r.ok else 'FAILED'}")
    return EXIT_EXPECT_FAILED if failed else res.status


if __name__ == "__main__":
    sys.exit(main())
