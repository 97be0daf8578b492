"""Crashes bench/fuzz.py found, each as the minimized input that crashed (see bench/README.md,
"Fuzzing"): the input now gives a clear error (or runs), never a traceback."""
from __future__ import annotations

import struct

import pytest

from apfdbg.machine.config import MachineConfig
from apfdbg.machine.image import ImageError, load_image
from apfdbg.machine.machine import Machine


def _elf(guest, tmp_path, **fields) -> str:
    """hello.elf with ELF header fields (e_phoff, e_shoff: u64 at 32, 40) replaced."""
    blob = bytearray(guest("machine/hello").read_bytes())
    offsets = {"e_phoff": 32, "e_shoff": 40}
    for name, value in fields.items():
        struct.pack_into("<Q", blob, offsets[name], value)
    p = tmp_path / "mutated.elf"
    p.write_bytes(bytes(blob))
    return str(p)


@pytest.mark.parametrize("phoff", [1 << 63, (1 << 64) - 1, 0x5EB4, 1 << 62])
def test_program_headers_beyond_the_file(guest, tmp_path, phoff):
    """fuzz image: e_phoff = 2**63 made pyelftools raise OverflowError (a seek past ssize_t), and
    a smaller one past the end 'malformed ELF: expected 4, found 0'."""
    path = _elf(guest, tmp_path, e_phoff=phoff)
    with pytest.raises(ImageError, match=r"program header table .* beyond the end of the file"):
        load_image(path)


@pytest.mark.parametrize("load_addr", [-(1 << 63), -4096, 1 << 64])
def test_flat_binary_load_address_out_of_range(tmp_path, load_addr):
    """fuzz image: a flat binary at load_addr -2**63 raised ValueError from the RAM copy, and at
    -4096 was silently copied to the top of RAM (a negative slice)."""
    p = tmp_path / "flat.bin"
    p.write_bytes(b"\xf4" * 744)
    with pytest.raises(ImageError, match="load address"):
        Machine(load_image(p, load_addr=load_addr), MachineConfig(vcpus=1))


@pytest.mark.parametrize("entry", [-1, 1 << 64])
def test_flat_binary_entry_out_of_range(tmp_path, entry):
    p = tmp_path / "flat.bin"
    p.write_bytes(b"\xf4" * 16)
    with pytest.raises(ImageError, match="entry"):
        Machine(load_image(p, load_addr=0x100000, entry=entry), MachineConfig(vcpus=1))
