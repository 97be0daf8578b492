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
