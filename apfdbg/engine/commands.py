"""Host commands, the same from a scenario, the UI or a test: page out, page in, complete,
wake-all, reset; and the scenario's timed actions and pokes."""
from __future__ import annotations

from ..machine.faultaddr import candidates
from ..machine.faults import AccessFault, HostSwapped
from ..scenario import Action, ScenarioError, parse_gfns


class HostCommands:
    """Engine methods (a mixin): they act on the engine's machine and KVM model."""

    def _poke(self, poke) -> None:
        addr = poke.at
        if isinstance(addr, str):
            sym = self.image.symbol(addr)
            if sym is None:
                raise ScenarioError(f"poke: the image has no symbol {addr!r}")
            addr = sym.addr
        data = poke.data()
        if not self.machine.ram.contains(addr, len(data)):
            raise ScenarioError(f"poke: {addr:#x}+{len(data)} is outside guest RAM")
        self.machine.ram.write(addr, data)

    def _schedule(self, action: Action, at: int) -> None:
        def fire() -> None:
            self.apply(action)
            if action.every:  # on a fixed grid (at, at + every, ...): no drift from late firing
                self._schedule(action, at + action.every)
        self.machine.timeline.schedule(at, fire)

    def apply(self, a: Action) -> str:
        """Carry out one action now (engine thread); returns what it did, in words."""
        m = self.machine
        if a.do == "page_out":
            done = m.page_out(parse_gfns(a.gfns))
            return f"paged out {_gfns_text(done)}" if done else f"{_gfns_text(parse_gfns(a.gfns))} already out"
        elif a.do == "page_out_working":
            gfn = self.working_gfn(a.vcpu)
            if gfn is None:
                return f"vCPU {a.vcpu}: no working page (no memory operand at RIP, no fault yet)"
            done = m.page_out([gfn])
            return (f"paged out gfn {gfn:#x}, vCPU {a.vcpu}'s working page" if done
                    else f"gfn {gfn:#x} (vCPU {a.vcpu}'s working page) is already out")
        elif a.do == "page_in":
            gfns = parse_gfns(a.gfns)
            for g in gfns:
                m.page_in(g)
            return f"paged in {_gfns_text(gfns)}"
        elif a.do == "page_out_random":
            pool = parse_gfns(a.gfns) if a.gfns is not None else range(0x100, m.ram.frames)
            resident = [g for g in pool if g < m.ram.frames and not m.ram.is_swapped(g)]
            done = m.page_out(sorted(m.rng.sample(resident, min(a.count, len(resident)))))
            return f"paged out {len(done)} random frame(s): {_gfns_text(done)}"
        elif a.do == "complete":
            work = self.kvm.find_work(a.token, a.vcpu)
            if work is None:
                return f"no outstanding work with token {a.token:#x}"
            if self.kvm.complete(work):
                return f"completed work #{work.serial} (token {work.token:#x})"
            return f"work #{work.serial} is not paging in (it is {work.state.value})"
        elif a.do == "complete_oldest":
            w = self.kvm.complete_oldest(a.vcpu)
            return (f"completed work #{w.serial} (token {w.token:#x}), the oldest of vCPU {a.vcpu}" if w
                    else f"vCPU {a.vcpu} has no work paging in")
        elif a.do == "complete_all":
            flying = lambda: sum(len(self.kvm.state(i).in_flight) for i in self.kvm.vcpus)  # noqa: E731
            before = flying()
            self.kvm.complete_all(a.vcpu)
            where = f" of vCPU {a.vcpu}" if a.vcpu is not None else ""
            return f"completed {before - flying()} work(s){where}"
        elif a.do == "wake_all":
            w = self.kvm.wake_all(a.vcpu)
            return (f"queued wake-all work #{w.serial} on vCPU {a.vcpu}" if w else
                    f"vCPU {a.vcpu}: done list not empty, no wake-all queued (kvm_async_pf_wakeup_all)")
        elif a.do == "reset_vcpu":
            self.kvm.reset_vcpu(a.vcpu)
            return f"reset vCPU {a.vcpu}'s async-PF state"
        return ""

    def working_gfn(self, vcpu: int) -> int | None:
        """The page `vcpu` works on: the first data page its next instructions touch (up to 16
        instructions on from RIP, with the registers as they are now), else the page of its last
        swapped-frame fault (engine thread)."""
        v = self.machine.vcpus[vcpu]
        reg = getattr(v, "reg", None) or v.uc.reg_read
        try:
            import capstone
            rip = v.rip
            code = v.peek(rip, 96) or v.peek(rip, 16) or b""
            cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
            for n, (addr, _size, mnem, ops) in enumerate(cs.disasm_lite(code, rip)):
                if n >= 16:
                    break
                if "sp" in ops or mnem.startswith(("push", "pop", "call", "ret", "iret", "lea", "nop")):
                    continue  # the stack is everyone's working page; look for data
                for va, _sz in candidates(reg, code[addr - rip:], addr):
                    try:
                        return v.accel.translate(va, "read", False, False) >> 12
                    except HostSwapped as e:
                        return e.gfn
                    except AccessFault:
                        continue
        except Exception:  # an instruction the decoder does not know: fall back
            pass
        return self._last_fault_gfn.get(vcpu)



def _gfns_text(gfns) -> str:
    gfns = list(gfns)
    if not gfns:
        return "nothing"
    if len(gfns) <= 4:
        return "gfn " + ", ".join(f"{g:#x}" for g in gfns)
    return f"{len(gfns)} frames ({gfns[0]:#x}..{gfns[-1]:#x})"

