"""Today's async-PF protocol (Linux 5.8 and later) as this machine's real KVM gives it, for every
rule that needs no page-out: the guest guests/apf/modern_msrs.S run by guests/tools/kvmrun.py with
the host's paravirtual features offered. This pins down our reading of the kernel before apfdbg
models it; apfdbg's profile `6.18` passes the same guest (and the 2010 profiles fail it at its
first check: they offer no interrupt delivery).

The rules and where they come from (arch/x86/kvm/x86.c unless named):
- CPUID 0x40000001 offers KVM_FEATURE_ASYNC_PF_INT (bit 14): kvm_set_cpu_caps / cpuid.c;
- MSR_KVM_ASYNC_PF_INT: bits above 7 are #GP and nothing is stored (kvm_pv_enable_async_pf_int);
- MSR_KVM_ASYNC_PF_ACK reads 0; a write with bit 0 clears pageready_pending and runs the completion
  check at once (kvm_set_msr_common, kvm_check_async_pf_completion in virt/kvm/async_pf.c);
- MSR_KVM_ASYNC_PF_EN: bits 5:4 are #GP, nothing stored; "enabled" needs ENABLED and
  DELIVERY_AS_INT (kvm_pv_async_pf_enabled); an area outside RAM is #GP after the value is stored
  (kvm_pv_enable_async_pf); enabling queues a wake-all (kvm_async_pf_wakeup_all);
- page-ready: token ~0 for a wake-all, written at offset 4, flags untouched
  (kvm_arch_async_page_present, apf_put_user_ready), sent as a fixed interrupt on the vector, taken
  when IF = 1; none while the token word is not 0 (apf_pageready_slot_free,
  kvm_arch_can_dequeue_async_page_present).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "guests" / "tools"))
import kvmrun  # noqa: E402

GUEST = ROOT / "guests" / "apf" / "modern_msrs.elf"
KVM_FEATURE_ASYNC_PF_INT = 1 << 14


def test_modern_protocol_msr_rules_on_real_kvm():
    why = kvmrun.kvm_usable()
    if why:
        pytest.skip(f"no KVM here ({why})")
    offered = kvmrun.supported_pv_features()
    if not offered & KVM_FEATURE_ASYNC_PF_INT:
        pytest.skip(f"this host's KVM offers no async-PF interrupt delivery (CPUID 0x40000001 EAX "
                    f"{offered:#x})")
    res = kvmrun.run_guest(str(GUEST), 1, timeout=30.0, pv=True)
    console = res.consoles[0].decode("utf-8", "replace")
    assert res.status == 1, f"status {res.status}: {res.reason}\n{console}"


def test_without_the_features_the_guest_sees_none():
    """kvmrun offers no paravirtual features unless asked (as apfdbg's NullHost): the guest's
    first check, CPUID, fails."""
    why = kvmrun.kvm_usable()
    if why:
        pytest.skip(f"no KVM here ({why})")
    res = kvmrun.run_guest(str(GUEST), 1, timeout=30.0)
    assert res.status == (0x10 << 1) | 1, res.reason


def _apfdbg(profile: str):
    from apfdbg.host.kvm import build_machine
    from apfdbg.machine.config import MachineConfig
    from apfdbg.machine.image import load_image
    m = build_machine(load_image(GUEST), MachineConfig(vcpus=1), profile=profile)
    try:
        return m.run(5_000_000)
    finally:
        m.close()


def test_apfdbg_today_profile_passes_the_same_guest():
    res = _apfdbg("6.18")
    assert res.status == 1, res


@pytest.mark.parametrize("profile", ["seed", "2.6.38"])
def test_the_2010_profiles_offer_no_interrupt_delivery(profile):
    assert _apfdbg(profile).status == (0x11 << 1) | 1


def test_the_command_line_picks_the_profile():
    from apfdbg.cli import main
    assert main(["run", str(GUEST), "--profile", "6.18", "--headless", "--vcpus", "1"]) == 1
    assert main(["run", str(GUEST), "--profile", "2.6.38", "--headless", "--vcpus", "1"]) == (0x11 << 1) | 1
