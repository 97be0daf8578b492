"""`python -m apfdbg.gdbstub IMAGE --listen 127.0.0.1:1234 [--vcpus N] [--scenario FILE]`

Loads the guest (and the scenario's host, pager and actions), then waits for gdb with the machine
stopped before its first instruction. Exits with the run's status once the run has ended and gdb
has gone (12 after gdb's `kill`).
"""
from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from ..machine.image import ImageError
from ..machine.machine import EXIT_BAD_INPUT
from .server import parse_listen


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m apfdbg.gdbstub",
                                description="Run a guest under apfdbg's machine and serve it to gdb "
                                "(target remote HOST:PORT). Every vCPU is a gdb thread.")
    p.add_argument("image", nargs="?", help="guest image (default: the scenario's)")
    p.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 1234), metavar="HOST:PORT",
                   help="address to listen on (default 127.0.0.1:1234; only the address given)")
    p.add_argument("--scenario", default=None, metavar="FILE", help="TOML scenario (docs/scenarios.md)")
    p.add_argument("--vcpus", type=int, default=None)
    p.add_argument("--ram", type=int, default=None, metavar="MIB")
    p.add_argument("--quantum", type=int, default=None)
    p.add_argument("--max-insns", type=lambda s: int(s, 0), default=None)
    p.add_argument("--load-addr", type=lambda s: int(s, 0), default=None, help="flat binary: where to load it")
    p.add_argument("--entry", type=lambda s: int(s, 0), default=None, help="flat binary: where to start")
    p.add_argument("--verbose", "-v", action="count", default=0, help="log packets (-vv) to stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else
                        logging.WARNING, format="%(name)s: %(message)s")
    from ..cli import _load
    from ..scenario import ScenarioError
    from .server import serve
    try:
        engine, _scenario = _load(args, None)
    except (ImageError, ScenarioError) as e:
        print(f"apfdbg: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValidationError as e:
        for err in e.errors():
            print(f"apfdbg: --{err['loc'][0]}: {err['msg']}", file=sys.stderr)
        return EXIT_BAD_INPUT
    host, port = args.listen
    try:
        status = serve(engine, host, port)
    except OSError as e:
        print(f"apfdbg: cannot listen on {host}:{port}: {e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if status is None:
        return 130  # interrupted (Ctrl-C in this terminal)
    return status


if __name__ == "__main__":
    sys.exit(main())
