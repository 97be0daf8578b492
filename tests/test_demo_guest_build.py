"""The bundled demo guest (what `apfdbg` opens) rebuilds from source to the committed bytes."""
import shutil
import subprocess
from pathlib import Path

import pytest

GUESTS = Path(__file__).resolve().parent.parent / "guests"


@pytest.mark.skipif(not (shutil.which("as") and shutil.which("ld") and shutil.which("make")),
                    reason="GNU as/ld and make are needed to rebuild guests")
def test_apfdemo_rebuilds_identically(tmp_path):
    subprocess.run(["make", "-s", "-C", str(GUESTS / "apfdemo"), f"OUT={tmp_path}"], check=True,
                   capture_output=True)
    for name in ("apfdemo.elf", "apfdemo-bench.elf"):
        assert (tmp_path / name).read_bytes() == (GUESTS / "apfdemo" / name).read_bytes(), name
