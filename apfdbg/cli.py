"""`apfdbg` command line.

  apfdbg                                  the TUI on the bundled default guest and scenario
  apfdbg IMAGE [--scenario FILE] [--theme NAME]   the TUI on any guest
  apfdbg --tour                           the guided tour
  apfdbg serve [--host H] [--port P] [--max-sessions N] [--idle-timeout T] [TUI options]
                                          the TUI in a browser (textual-serve)
  apfdbg run IMAGE --headless [...]       no UI: console and summary on stdout
  apfdbg run IMAGE --gdb [HOST:]PORT      no UI: serve gdb (target remote HOST:PORT), docs/gdb.md
  apfdbg [IMAGE] --gdb [HOST:]PORT        the TUI, showing what gdb does (also: run ... --gdb P --tui)
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from . import bundled
from .machine.config import MachineConfig
from .machine.image import ImageError, load_image
from .machine.machine import EXIT_BAD_INPUT

#: The guest `apfdbg` opens when neither the command line nor the scenario names one.  The demo guest
#: stands in for the reference guest kernel (guests/refkernel/refkernel.elf) until that is finished;
#: switching is this one line (and the pager frames in apfdbg/scenarios/default.toml and tour.toml).
DEFAULT_GUEST = bundled.DEFAULT_GUEST
SCENARIOS = bundled.SCENARIOS


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
    r.add_argument("--scenario", default=None, metavar="FILE",
                   help="TOML scenario file, or a bundled one by name: default, pressure, tour (docs/scenarios.md)")
    r.add_argument("--headless", action="store_true", help="no UI: console and summary on stdout")
    r.add_argument("--vcpus", type=int, default=None)
    r.add_argument("--ram", type=int, default=None, metavar="MIB")
    r.add_argument("--quantum", type=int, default=None)
    r.add_argument("--max-insns", type=_int, default=None)
    _profile_option(r)
    r.add_argument("--load-addr", type=_int, default=None, help="flat binary: where to load it")
    r.add_argument("--entry", type=_int, default=None, help="flat binary: where to start")
    r.add_argument("--trace", default=None, metavar="FILE", help="write every event to FILE")
    r.add_argument("--trace-format", choices=("jsonl", "text"), default="jsonl")
    r.add_argument("--gdb", default=None, metavar="[HOST:]PORT",
                   help="serve the GDB remote protocol (loopback unless HOST is given); implies --headless "
                   "unless --tui is given")
    r.add_argument("--tui", action="store_true", help="with --gdb: open the TUI too, showing what gdb does")
    return p


EXIT_EXPECT_FAILED = 10


def _profile_option(p: argparse.ArgumentParser) -> None:
    from .kvm.profiles import PROFILES
    p.add_argument("--profile", choices=sorted(PROFILES), default=None,
                   help="the KVM host to model (default: the scenario's, else seed): seed and 2.6.38 "
                   "(2010, page-ready as #PF), 6.18 (today's: page-ready as an interrupt); docs/kvm-model.md")


def _machine_options(p: argparse.ArgumentParser) -> None:
    _profile_option(p)
    p.add_argument("--vcpus", type=int, default=None)
    p.add_argument("--ram", type=int, default=None, metavar="MIB")
    p.add_argument("--quantum", type=int, default=None)
    p.add_argument("--load-addr", type=_int, default=None, help="flat binary: where to load it")
    p.add_argument("--entry", type=_int, default=None, help="flat binary: where to start")


def build_tui_parser(prog: str = "apfdbg") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Terminal debugger and visualiser for KVM's "
                                "paravirtual asynchronous page faults.",
                                epilog="Other commands: 'apfdbg serve ...' (the TUI in a browser), "
                                "'apfdbg run IMAGE --headless' (no UI).")
    p.add_argument("image", nargs="?", help="guest image (default: the scenario's, else the bundled demo guest)")
    p.add_argument("--scenario", default=None, metavar="FILE",
                   help="TOML scenario file, or a bundled one by name: default, pressure, tour "
                   "(default: the bundled default.toml when no IMAGE is given)")
    p.add_argument("--theme", default=None, metavar="NAME", help="UI theme (apf-night, apf-paper, apf-amber, "
                   "any Textual theme, or a theme .toml file)")
    p.add_argument("--tour", action="store_true", help="the guided tour")
    p.add_argument("--paused", action="store_true", help="start paused")
    p.add_argument("--speed", default=None, help="events per second, 'full' or 'key'")
    p.add_argument("--gdb", default=None, metavar="[HOST:]PORT", help="serve the GDB remote protocol "
                   "(loopback unless HOST is given): gdb drives the run, the TUI shows it (docs/gdb.md)")
    _machine_options(p)
    return p


def _speed(s: str | None):
    if s is None or s in ("full", "key"):
        return s
    try:
        v = float(s)
    except ValueError:
        raise SystemExit(f"apfdbg: --speed: not a number, 'full' or 'key': {s!r}") from None
    return int(v) if v == int(v) else v


def scenario_file(text: str) -> Path:
    """--scenario's file: a path, else the name of a bundled scenario (`pressure`, `tour` ...)."""
    p = Path(text)
    if p.exists():
        return p
    found = bundled.scenario(text)
    if found is not None:
        return found
    from .scenario import ScenarioError
    raise ScenarioError(f"{text}: no such file, nor a bundled scenario (bundled: "
                        f"{', '.join(bundled.scenario_names())})")


def _load(args, default_scenario: str | None):
    """(engine, scenario) from parsed arguments; raises ImageError / ScenarioError / ValidationError."""
    from .engine import Engine
    from .scenario import Scenario, load_scenario
    if args.scenario:
        scenario = load_scenario(scenario_file(args.scenario))
    elif default_scenario:
        scenario = load_scenario(SCENARIOS / default_scenario)
    else:
        scenario = Scenario()
    overrides = {k: v for k, v in (("vcpus", args.vcpus), ("ram_mib", args.ram), ("quantum", args.quantum),
                                    ("max_insns", getattr(args, "max_insns", None))) if v is not None}
    if overrides:
        scenario = scenario.model_copy(update={"machine": MachineConfig(
            **{**scenario.machine.model_dump(), **overrides})})
    if getattr(args, "profile", None):
        scenario = scenario.model_copy(update={"host": scenario.host.model_copy(update={"profile": args.profile})})
    image_path = args.image
    if image_path is None and scenario.image:
        image_path = str(Path(scenario.base_dir) / scenario.image)
    image = load_image(image_path or DEFAULT_GUEST, load_addr=args.load_addr, entry=args.entry)
    return Engine(image, scenario), scenario


def _load_or_report(args, default_scenario: str | None):
    """_load(), or EXIT_BAD_INPUT after saying on stderr what is wrong with the input."""
    from .scenario import ScenarioError
    try:
        return _load(args, default_scenario)
    except (ImageError, ScenarioError) as e:
        print(f"apfdbg: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValidationError as e:
        for err in e.errors():
            print(f"apfdbg: --{err['loc'][0]}: {err['msg']}", file=sys.stderr)
        return EXIT_BAD_INPUT


def tui_main(argv: list[str]) -> int:
    return _tui(build_tui_parser().parse_args(argv))


def _listen(text: str) -> tuple[str, int] | None:
    """--gdb's address, or None after saying on stderr what is wrong with it."""
    from .gdbstub.server import parse_listen
    try:
        return parse_listen(text)
    except (argparse.ArgumentTypeError, ValueError) as e:
        print(f"apfdbg: --gdb: {e}", file=sys.stderr)
        return None


def _gdb_server(engine, listen: tuple[str, int]):
    """A GdbServer bound to `listen`, or None after saying on stderr why it can not listen."""
    from .gdbstub.server import GdbServer
    host, port = listen
    try:
        return GdbServer(engine, host, port)
    except OSError as e:
        print(f"apfdbg: --gdb: cannot listen on {host}:{port}: {e.strerror or e}", file=sys.stderr)
        return None


def _tui(args) -> int:
    listen = None
    if getattr(args, "gdb", None):
        listen = _listen(args.gdb)
        if listen is None:
            return EXIT_BAD_INPUT
        if args.tour:
            print("apfdbg: --tour and --gdb do not go together: gdb drives the run", file=sys.stderr)
            return EXIT_BAD_INPUT
    default = "tour.toml" if args.tour else ("default.toml" if args.image is None else None)
    loaded = _load_or_report(args, default)
    if isinstance(loaded, int):
        return loaded
    engine, scenario = loaded
    if args.tour and not scenario.tour:
        print(f"apfdbg: --tour: scenario {args.scenario} has no [[tour]] steps", file=sys.stderr)
        return EXIT_BAD_INPUT
    from .ui.app import ApfApp
    from .ui.themes import ThemeError
    from .lifecycle import Ending, signals_call, terminal_gone
    trace_file = None
    if getattr(args, "trace", None):
        from .trace import TraceWriter
        try:
            trace_file = open(args.trace, "w", encoding="utf-8")
        except OSError as e:
            print(f"apfdbg: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        engine.machine.sinks.insert(0, TraceWriter(trace_file, args.trace_format))
    ending = Ending(engine, trace_file)
    app = None
    try:
        options = dict(theme=args.theme, speed=_speed(args.speed), paused=True if args.paused else None)
        try:
            if listen is not None:
                ending.server = _gdb_server(engine, listen)
                if ending.server is None:
                    return EXIT_BAD_INPUT
                from .gdbstub.tui import GdbApp
                app = GdbApp(engine, ending.server, **options)  # starts the stub on mount, stops it on unmount
            else:
                app = ApfApp(engine, tour=scenario.tour if args.tour else None, **options)
        except ThemeError as e:
            print(f"apfdbg: --theme: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT

        def on_signal(signum: int) -> None:
            if signum == signal.SIGHUP and terminal_gone():
                ending.hang_up(signum)
            else:
                app.stop_by_signal(signum)

        with signals_call(on_signal):
            app.run()
        return app.return_code or 0
    finally:
        ending.finish(app.signalled if app is not None else None)


def _follow_the_server() -> None:
    """A session of `apfdbg serve` ends when its server does, however the server ends."""
    import os

    from .lifecycle import SERVE_PARENT_ENV, die_with_parent
    parent = os.environ.pop(SERVE_PARENT_ENV, None)
    if parent and parent.isdigit():
        die_with_parent(int(parent))


def _duration(s: str) -> float:
    """--idle-timeout: 30 (minutes), 90s, 30m, 2h; 0 for never."""
    unit = {"s": 1, "m": 60, "h": 3600}.get(s[-1:].lower())
    try:
        v = float(s[:-1] if unit else s) * (unit or 60)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration (30, 90s, 30m, 2h): {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"negative: {s!r}")
    return v


def _positive(s: str) -> int:
    v = _int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"at least 1: {s!r}")
    return v


def serve_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="apfdbg serve", description="Serve the apfdbg TUI to web browsers "
                                "(textual-serve): every browser tab gets its own apfdbg process, which "
                                "ends with its tab.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--public-url", default=None, help="the URL browsers reach the server at, if not host:port")
    p.add_argument("--max-sessions", type=_positive, default=32, metavar="N",
                   help="at most N tabs at once; the page says when it is full (default 32)")
    p.add_argument("--idle-timeout", type=_duration, default=30 * 60, metavar="TIME",
                   help="end a session with no input for TIME: 30 (minutes), 90s, 30m, 2h; 0: never "
                   "(default 30m)")
    args, rest = p.parse_known_args(argv)
    if build_tui_parser("apfdbg serve").parse_args(rest).gdb:  # fail here, not in every browser tab
        print("apfdbg serve: --gdb is not supported (every browser tab runs its own apfdbg)", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        from .serve import serve
    except ImportError:
        print("apfdbg: serve needs the textual-serve package (pip install textual-serve)", file=sys.stderr)
        return EXIT_BAD_INPUT
    import shlex
    # exec: the session's process is the server's own child (its parent-death signal is the server's)
    command = "exec " + " ".join(shlex.quote(a) for a in [sys.executable, "-m", "apfdbg", *rest])
    serve(command, host=args.host, port=args.port, public_url=args.public_url,
          max_sessions=args.max_sessions, idle_timeout=args.idle_timeout)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    _follow_the_server()
    if argv[:1] == ["serve"]:
        return serve_main(argv[1:])
    if argv[:1] != ["run"]:
        return tui_main(argv)
    args = build_parser().parse_args(argv)
    if args.tui and args.headless:
        print("apfdbg: --tui and --headless exclude each other", file=sys.stderr)
        return EXIT_BAD_INPUT
    listen = None
    if args.gdb:
        listen = _listen(args.gdb)
        if listen is None:
            return EXIT_BAD_INPUT
        args.headless = not args.tui
    if not args.headless:  # `apfdbg run IMAGE` without --headless: the TUI
        args.theme, args.tour, args.paused, args.speed = None, False, False, None
        return _tui(args)
    loaded = _load_or_report(args, None)
    if isinstance(loaded, int):
        return loaded
    from .lifecycle import quiet_print, signal_name, signals_call
    engine = loaded[0]
    stopped: list[int] = []

    def stop(signum: int) -> None:   # in a signal handler: only ask
        stopped.append(signum)
        engine.machine.request_stop(128 + signum, f"stopped by signal {signal_name(signum)}")
        if server:
            server[0].stop(0)

    server: list = []
    with signals_call(stop):
        status = _headless(args, engine, listen, server)
    if stopped:
        name = signal_name(stopped[0])
        quiet_print(f"apfdbg: stopped by signal {name} after {engine.machine.now:,} instructions")
        return 128 + stopped[0]
    return status


def _headless(args, engine, listen, server: list) -> int:
    """The headless run (or the gdb stub's, whose GdbServer goes into `server` for a stop signal)."""
    from .headless import run_headless
    from .trace import TraceWriter
    trace_file = None
    try:
        if args.trace:
            trace_file = open(args.trace, "w", encoding="utf-8")
            engine.machine.sinks.insert(0, TraceWriter(trace_file, args.trace_format))
        if listen is not None:
            from .gdbstub.server import serve
            try:
                status = serve(engine, *listen, started=server.append)
            except OSError as e:
                print(f"apfdbg: --gdb: cannot listen on {listen[0]}:{listen[1]}: {e.strerror or e}",
                      file=sys.stderr)
                return EXIT_BAD_INPUT
            if engine.machine.stop_request is not None:   # a stop signal: say so in the trace
                engine.machine.request_exit(*engine.machine.stop_request)
                engine.machine.finish()
            return status
        res = run_headless(engine.machine)
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
