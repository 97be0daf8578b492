"""Wiring: the KVM async-PF model (apfdbg.kvm) as the machine's host (apfdbg.machine.host.Host)."""
from __future__ import annotations

import random

from ..kvm.apf import AsyncPfHost, AsyncPfWork, Outcome
from ..machine.config import MachineConfig
from ..machine.image import Image
from ..machine.machine import Machine
from .pager import AutoPager, AutoPagerConfig, FixedLatency, latency_fn


class _Clock:
    def __init__(self, machine: Machine) -> None:
        self.m = machine

    def now(self) -> int:
        return self.m.now


class KvmHost:
    """Implements the machine's Host protocol with the KVM model, and the model's pager with the
    machine's host paging."""

    def __init__(self, profile: str = "seed") -> None:
        self.profile = profile
        self.kvm: AsyncPfHost | None = None
        self.m: Machine | None = None

    def attach(self, machine: Machine) -> None:
        self.m = machine
        self.kvm = AsyncPfHost(machine.ram, _Clock(machine), sink=machine.publish, pager=self,
                               profile=self.profile, vcpus=machine.vcpus)
        self._msrs = frozenset(self.kvm.msr_ids())

    # --- machine.host.Host --------------------------------------------------------------------
    def msr_ids(self) -> frozenset[int]:
        return self._msrs

    def rdmsr(self, vcpu, index: int) -> int | None:
        return self.kvm.rdmsr(vcpu.index, index)

    def wrmsr(self, vcpu, index: int, value: int) -> bool:
        return self.kvm.wrmsr(vcpu.index, index, value)

    def cpuid_features(self) -> int:
        return self.kvm.cpuid_features()

    def on_swapped_fault(self, vcpu, gfn: int, gva: int, access: str) -> bool:
        return self.kvm.on_swapped_fault(vcpu.index, gfn, gva) is not Outcome.SYNC

    def before_entry(self, vcpu) -> None:
        self.kvm.before_entry(vcpu.index)

    def wants_interrupt_window(self, vcpu) -> bool:
        """2010: a page-ready #PF waits for IF. Today's page-ready is an APIC interrupt: the APIC
        holds it, and the done list waits for the slot or the APIC, not for IF."""
        if self.kvm.profile.ready_delivery.value == "interrupt":
            return False
        st = self.kvm.state(vcpu.index)
        return bool(st.done) and not self.kvm.can_inject_page_ready(vcpu.index)

    def has_work(self, vcpu) -> bool:
        """The 2010 kvm_arch_vcpu_runnable: a non-empty done list wakes a halted vCPU, even one
        halted by the guest with IF=0 (it resumes after its hlt; the page-ready waits for IF)."""
        return bool(self.kvm.state(vcpu.index).done)

    def on_interrupt_wake(self, vcpu) -> None:
        self.kvm.on_interrupt_wake(vcpu.index)

    def on_apic_enabled(self, vcpu) -> None:
        self.kvm.on_apic_enabled(vcpu.index)

    # --- the model's pager ---------------------------------------------------------------------
    def request_page_in(self, vcpu_index: int, gfn: int, work: AsyncPfWork) -> None:
        self.m.request_page_in(gfn, lambda: self.kvm.page_in_done(work))

    def page_in_now(self, work: AsyncPfWork) -> None:
        if work.gfn is not None:
            self.m.page_in(work.gfn)


def build_machine(image: Image, config: MachineConfig | None = None, *, profile: str = "seed",
                  seed: int = 0, latency=None, auto_pager: AutoPagerConfig | None = None) -> Machine:
    """A machine with the KVM async-PF host attached, a page-in latency and an optional pager."""
    host = KvmHost(profile)
    m = Machine(image, config, host=host, seed=seed)
    host.attach(m)
    rng = random.Random(seed ^ 0x5EED)
    m.page_in_latency = latency_fn(latency or FixedLatency(), rng)
    if auto_pager is not None:
        m.auto_pager = AutoPager(m, auto_pager, rng)
    return m
