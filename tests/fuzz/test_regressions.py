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


def _shdr_field(blob: bytearray, index: int, off: int, value: int) -> None:
    shoff, = struct.unpack_from("<Q", blob, 40)
    struct.pack_into("<Q", blob, shoff + 64 * index + off, value)


@pytest.mark.parametrize("offset", [1 << 63, 0x7FFFFFFF])
def test_section_beyond_the_file(guest, tmp_path, offset):
    """fuzz image: the section-name string table's sh_offset = 2**63 made pyelftools raise
    OverflowError; a smaller one past the end, 'String Table not found' or 'expected 4, found 0'."""
    blob = bytearray(guest("machine/hello").read_bytes())
    shstrndx, = struct.unpack_from("<H", blob, 62)
    _shdr_field(blob, shstrndx, 24, offset)          # sh_offset
    p = tmp_path / "mutated.elf"
    p.write_bytes(bytes(blob))
    with pytest.raises(ImageError, match=rf"section {shstrndx} .* beyond the end of the file"):
        load_image(p)


def test_section_headers_beyond_the_file(guest, tmp_path):
    path = _elf(guest, tmp_path, e_shoff=1 << 40)
    with pytest.raises(ImageError, match=r"section header table .* beyond the end of the file"):
        load_image(path)


def test_truncated_elf_header(guest, tmp_path):
    """fuzz image: a 16-byte ELF said 'malformed ELF: expected 2, found 0'."""
    p = tmp_path / "short.elf"
    p.write_bytes(guest("machine/hello").read_bytes()[:16])
    with pytest.raises(ImageError, match="truncated: an ELF64 header needs 64 bytes, the file has 16"):
        load_image(p)


@pytest.mark.parametrize("strndx", [0x100, 1])
def test_section_name_table_not_a_string_table(guest, tmp_path, strndx):
    """fuzz image: e_shstrndx out of range or at a non-string-table section said 'String Table not found'."""
    blob = bytearray(guest("machine/hello").read_bytes())
    struct.pack_into("<H", blob, 62, strndx)
    p = tmp_path / "mutated.elf"
    p.write_bytes(bytes(blob))
    with pytest.raises(ImageError, match=rf"the section name table \(e_shstrndx {strndx}\) is not a string table"):
        load_image(p)
