from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUESTS = ROOT / "guests"


@pytest.fixture
def guest():
    """Path of a prebuilt guest image, e.g. guest("machine/hello")."""
    def find(name: str) -> Path:
        p = GUESTS / f"{name}.elf"
        assert p.exists(), f"missing prebuilt guest {p} (make -C guests)"
        return p
    return find


def pytest_report_header(config):
    """Name the KVM quirks the cross-check runs with (tests/machine/test_guests.py)."""
    import sys
    sys.path.insert(0, str(GUESTS / "tools"))
    import kvmrun
    why = kvmrun.kvm_usable()
    if why:
        return f"KVM cross-check: skipped ({why})"
    try:
        q = kvmrun.probe_quirks()
    except (OSError, kvmrun.KvmError) as e:
        return f"KVM cross-check: the probe guest failed: {e}"
    return [f"KVM cross-check: quirks found by the probe guest: {q.describe()}"] + [f"  {s}" for s in q.seen]
