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


def test_image_must_fit_ram_and_avoid_boot_structures(tmp_path):
    flat = tmp_path / "flat.bin"
    flat.write_bytes(b"\xf4")
    with pytest.raises(ImageError, match=r"overlaps the boot stack of vCPU 0 \(0x10000-0x11000\) in the boot area"):
        Machine(load_image(flat, load_addr=0x10000), MachineConfig(vcpus=1))
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


# --- the boot area: only its structures are off limits (docs/guest-abi.md) -----------------------
TINY = """
    .globl _start
_start:
    movb $'k', %al
    outb %al, $0xe9
    movb $0, %al
    outb %al, $0xf4
"""


def _link(tmp_path, ttext: int):
    """A guest linked the way tutorials do it: `ld -Ttext=ADDR`, no linker script."""
    import shutil
    import subprocess
    if not (shutil.which("as") and shutil.which("ld")):
        pytest.skip("GNU as and ld are not installed (binutils)")
    src, obj, elf = tmp_path / "t.S", tmp_path / "t.o", tmp_path / f"t-{ttext:x}.elf"
    src.write_text(TINY)
    subprocess.run(["as", "--64", "-o", str(obj), str(src)], check=True)
    subprocess.run(["ld", f"-Ttext={ttext:#x}", "-o", str(elf), str(obj)], check=True)
    return load_image(elf)


def _console(m: Machine) -> bytes:
    res = m.run(max_insns=1000)
    assert res.status == 1, res.reason
    return bytes(m.vcpus[0].console)


def test_ld_ttext_1mib_loads_with_its_header_segment(tmp_path):
    """binutils >= 2.31 puts the ELF and program headers in a read-only segment just below the
    text (0xff000 here): it clashes with nothing and loads, as under QEMU."""
    img = _link(tmp_path, 0x100000)
    low = [s for s in img.segments if s.paddr < 0x100000]
    if not low:
        pytest.skip("this ld puts no header segment below the text")
    assert [s.paddr for s in low] == [0xff000] and not low[0].has_sections
    m = Machine(img, MachineConfig(vcpus=2))
    assert m.ram.read(0xff000, 4) == b"\x7fELF"
    assert _console(m) == b"k"


def test_free_boot_area_loads(tmp_path):
    """Below 1 MiB but clear of the GDT, the TSSs and the boot stacks: loads and runs."""
    flat = tmp_path / "flat.bin"
    flat.write_bytes(b"\xb0\x6b\xe6\xe9\xb0\x00\xe6\xf4")   # mov $'k', %al; out; mov $0; out 0xf4
    assert _console(Machine(load_image(flat, load_addr=0x8000), MachineConfig(vcpus=1))) == b"k"
    assert _console(Machine(load_image(flat, load_addr=0x50000), MachineConfig(vcpus=64))) == b"k"


def test_header_segment_over_a_boot_structure_is_left_out(tmp_path):
    """-Ttext=0x3000 puts the headers at 0x2000, on vCPU 0's TSS: that segment holds no section,
    so it is not loaded (the TSS stays intact) and the code runs."""
    img = _link(tmp_path, 0x3000)
    m = Machine(img, MachineConfig(vcpus=1))
    assert m.ram.read(0x2000, 4) != b"\x7fELF"
    assert m.ram.read(0x2004, 8) == (0x11000).to_bytes(8, "little")   # TSS.RSP0
    assert _console(m) == b"k"


@pytest.mark.parametrize("ttext, vcpus, hit", [
    (0x1010, 1, r"the GDT \(0x1000-0x1038\)"),
    (0x2080, 2, r"the TSS of vCPU 1 \(0x2080-0x20e8\)"),
    (0x13000, 4, r"the boot stack of vCPU 3 \(0x13000-0x14000\)"),
])
def test_code_over_a_boot_structure_is_refused_by_name(tmp_path, ttext, vcpus, hit):
    img = _link(tmp_path, ttext)
    with pytest.raises(ImageError, match=r"segment 0x[0-9a-f]+-0x[0-9a-f]+ overlaps " + hit):
        Machine(img, MachineConfig(vcpus=vcpus))
    if vcpus > 1:   # with fewer vCPUs that structure is not in use: the image loads
        Machine(img, MachineConfig(vcpus=1))
