"""Trace files: one event per line, flushed as it goes, so a crash or Ctrl-C loses nothing written."""
from __future__ import annotations

from typing import IO

from .machine.events import Event


def text_line(e: Event) -> str:
    """trace-cmd-like: `  time  vcpu  kind: field=value ...`."""
    fields = e.model_dump(exclude={"kind", "time", "vcpu"})
    parts = []
    for k, v in fields.items():
        if isinstance(v, int) and not isinstance(v, bool) and k not in ("status", "size", "vector"):
            parts.append(f"{k}={v:#x}")
        else:
            parts.append(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}")
    cpu = "   -" if e.vcpu is None else f"{e.vcpu:4d}"
    return f"{e.time:>14d} {cpu}  {e.kind}: {' '.join(parts)}"


class TraceWriter:
    def __init__(self, stream: IO[str], fmt: str = "jsonl") -> None:
        self.stream = stream
        self.fmt = fmt

    def __call__(self, e: Event) -> None:
        line = e.model_dump_json() if self.fmt == "jsonl" else text_line(e)
        self.stream.write(line + "\n")
        self.stream.flush()
