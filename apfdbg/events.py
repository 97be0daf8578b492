"""The trace schema: every event kind any layer emits, as one discriminated union."""
from __future__ import annotations

import json
from typing import Annotated, Union

from pydantic import Field, TypeAdapter

from .kvm.events import KVM_EVENT_TYPES
from .machine.faults import vector_name  # noqa: F401  (re-exported for the UI)
from .machine.machine import MACHINE_EVENT_TYPES

ALL_EVENT_TYPES = tuple({c.model_fields["kind"].default: c
                         for c in (*MACHINE_EVENT_TYPES, *KVM_EVENT_TYPES)}.values())
TraceEvent = Annotated[Union[ALL_EVENT_TYPES], Field(discriminator="kind")]  # type: ignore[valid-type]
trace_adapter: TypeAdapter = TypeAdapter(TraceEvent)


_INJECT_KEYS = {v: f"inject:{vector_name(v)}" for v in range(32)}


def event_key(e) -> str:
    """The kind a filter and the per-kind counters use: `inject` is split by vector (`inject:#PF`,
    `inject:0x81`), every other event is its kind."""
    if e.kind == "inject":
        return _INJECT_KEYS.get(e.vector) or f"inject:{e.vector:#x}"
    return e.kind


def event_kinds() -> list[str]:
    return sorted(c.model_fields["kind"].default for c in ALL_EVENT_TYPES)


def parse_line(line: str):
    """One JSON Lines trace record -> its typed event (raises pydantic.ValidationError)."""
    return trace_adapter.validate_json(line)


def json_schema() -> str:
    return json.dumps(trace_adapter.json_schema(), indent=1, sort_keys=True)


def markdown_table() -> str:
    """One row per event kind: its fields and what it means (from the class docstrings)."""
    rows = ["| kind | fields | meaning |", "|---|---|---|"]
    for cls in sorted(ALL_EVENT_TYPES, key=lambda c: c.model_fields["kind"].default):
        fields = ", ".join(f"`{n}`" for n in cls.model_fields if n not in ("time", "vcpu", "kind"))
        doc = " ".join((cls.__doc__ or "").split())
        rows.append(f"| `{cls.model_fields['kind'].default}` | {fields} | {doc} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m apfdbg.events > docs/trace.md regenerates the doc
    print(__doc__ or "")
