"""Broken images are refused with a message that names the problem; good ones load."""
import struct

import pytest

from apfdbg.cli import main
from apfdbg.machine.config import MachineConfig
from apfdbg.machine.image import ImageError, load_image
from apfdbg.machine.machine import Machine


def test_elf_loads_segments_entry_and_symbols(guest):
    img = load_image(guest("machine/hello"))
    assert img.entry >= 0x100000
    assert img.segments and all(s.paddr >= 0x100000 for s in img.segments)
    start = img.symbol("_start")
    assert start is not None and start.addr == img.entry
    assert img.describe(img.entry) == "_start"
    assert img.describe(img.entry + 1).startswith("_start+0x1")


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b[:40], "malformed ELF"),                                  # truncated header
    (lambda b: b[:4] + b"\x01" + b[5:], "not an x86-64 ELF64"),          # ELFCLASS32
    (lambda b: b[:18] + struct.pack("<H", 0x28) + b[20:], "not an x86-64"),  # EM_ARM
    (lambda b: b[:16] + struct.pack("<H", 3) + b[18:], "ET_DYN"),         # shared object
])
def test_broken_elf_is_refused(tmp_path, guest, mutate, message):
    bad = tmp_path / "bad.elf"
    bad.write_bytes(mutate(guest("machine/hello").read_bytes()))
    with pytest.raises(ImageError, match=message):
        load_image(bad)


def test_truncated_segment_is_refused(tmp_path, guest):
    blob = guest("machine/hello").read_bytes()
    bad = tmp_path / "short.elf"
    bad.write_bytes(blob[: len(blob) // 3])
    with pytest.raises(ImageError):
        load_image(bad)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(tmp_path / "empty.bin")
    with pytest.raises(ImageError, match="cannot read"):
        load_image(tmp_path / "nope.elf")


def test_image_must_fit_ram_and_avoid_boot_area(tmp_path):
    flat = tmp_path / "flat.bin"
    flat.write_bytes(b"\xf4")
    with pytest.raises(ImageError, match="boot area"):
        Machine(load_image(flat, load_addr=0x8000), MachineConfig(vcpus=1))
    with pytest.raises(ImageError, match="does not fit"):
        Machine(load_image(flat, load_addr=3 << 20), MachineConfig(vcpus=1, ram_mib=2))


def test_flat_binary_runs(tmp_path):
    # mov al, 'x'; out 0xe9, al; mov al, 5; out 0xf4, al
    flat = tmp_path / "flat.bin"
    flat.write_bytes(bytes.fromhex("b078 e6e9 b005 e6f4"))
    m = Machine(load_image(flat, load_addr=0x200000), MachineConfig(vcpus=1))
    res = m.run(max_insns=1000)
    assert (res.status, bytes(m.vcpus[0].console)) == ((5 << 1) | 1, b"x")


def test_cli_refuses_broken_image_with_status_8(tmp_path, capsys):
    bad = tmp_path / "bad.elf"
    bad.write_bytes(b"\x7fELF" + b"\x00" * 10)
    assert main(["run", str(bad), "--headless"]) == 8
    err = capsys.readouterr().err
    assert "bad.elf" in err and "Traceback" not in err
