"""A scenario's expectations: event counts checked at a time or at the end of the run."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ExpectResult:
    description: str
    observed: int
    ok: bool



class Expectations:
    def __init__(self, scenario, machine, log) -> None:
        self.scenario, self.log = scenario, log
        self._counts: dict[int, int] = {}
        for i, ex in enumerate(scenario.expect):
            if ex.by is not None:
                machine.timeline.schedule(ex.by, lambda i=i, ex=ex: self._counts.__setitem__(
                    i, log.count(ex.event, ex.vcpu)))

    def results(self) -> list[ExpectResult]:
        out = []
        for i, ex in enumerate(self.scenario.expect):
            n = self._counts.get(i, self.log.count(ex.event, ex.vcpu)) if ex.by is not None \
                else self.log.count(ex.event, ex.vcpu)
            out.append(ExpectResult(ex.describe(), n, ex.check(n)))
        return out
