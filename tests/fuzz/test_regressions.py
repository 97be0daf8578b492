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


# ---- scenarios -------------------------------------------------------------------------------------
def _scenario(tmp_path, text: str):
    from apfdbg.scenario import load_scenario
    p = tmp_path / "s.toml"
    p.write_text(text)
    return load_scenario(p)


@pytest.mark.parametrize("spec", ['"0-0xffffffffffff"', '"0x100-0xffffffff"', '["0-0x100000", "0x200000-0x300000"]'])
def test_huge_gfn_range_is_refused(tmp_path, spec):
    """fuzz scenario: pager.auto.frames = "0-0xffffffffffff" built a list of 2**48 gfns (MemoryError,
    after eating the host's memory)."""
    from apfdbg.scenario import ScenarioError
    with pytest.raises(ScenarioError, match=r"pager\.auto\.frames: .*more than 1,048,576 frames"):
        _scenario(tmp_path, f"[pager.auto]\nframes = {spec}\nbudget = 1\n")


@pytest.mark.parametrize("spec", ['"-1"', "-5", '["0x10", -1]'])
def test_negative_gfn_is_refused(tmp_path, spec):
    from apfdbg.scenario import ScenarioError
    with pytest.raises(ScenarioError, match=r"actions\[0\]: .*gfn -0x[15] is negative"):
        _scenario(tmp_path, f'[[actions]]\nat = 0\ndo = "page_in"\ngfns = {spec}\n')


def test_page_in_outside_ram_runs(tmp_path, guest):
    """fuzz scenario: a page_in action of a gfn outside RAM raised IndexError out of the run (page_out
    of the same gfn was ignored)."""
    from apfdbg.engine import Engine
    sc = _scenario(tmp_path, '[machine]\nvcpus = 1\nmax_insns = 20000\n'
                   '[[actions]]\nat = 100\ndo = "page_in"\ngfns = "0x3fff-0x4001"\n'
                   '[[actions]]\nat = 200\ndo = "page_out"\ngfns = 0x1000000\n')
    eng = Engine(load_image(guest("machine/hello")), sc)
    assert eng.run().reason


@pytest.mark.parametrize("do", ["wake_all", "reset_vcpu", "complete_oldest", "page_out_working", "complete_all"])
@pytest.mark.parametrize("vcpu", [-1, 2, 99])
def test_action_on_an_unknown_vcpu(tmp_path, guest, do, vcpu):
    """fuzz scenario: wake_all on vCPU -1 raised KeyError out of the run, at the action's time."""
    from apfdbg.engine import Engine
    from apfdbg.scenario import ScenarioError
    text = f'[machine]\nvcpus = 2\n[[actions]]\nat = 100\ndo = "{do}"\nvcpu = {vcpu}\n'
    with pytest.raises(ScenarioError, match=rf"actions\[0\]\.vcpu: .*{vcpu}"):
        Engine(load_image(guest("machine/hello")), _scenario(tmp_path, text))


def test_breakpoint_at_the_top_of_the_address_space(tmp_path, guest):
    """fuzz scenario: debug.points = ["*0xffffffffffffffff"] raised UcError(UC_ERR_ARG) out of
    Engine(): the translation cache was cleared up to 2**64."""
    from apfdbg.engine import Engine
    sc = _scenario(tmp_path, '[machine]\nmax_insns = 20000\n[debug]\npoints = ["*0xffffffffffffffff"]\n')
    eng = Engine(load_image(guest("machine/hello")), sc)
    assert [b.addr for b in eng.debugger.breakpoints.values()] == [2**64 - 1]
    assert eng.run().reason


@pytest.mark.parametrize("text", ["watch 0xfffffffffffffff0 4096", "awatch 0xffffffffffffffff 8"])
def test_watch_range_past_the_top_is_refused(guest, text):
    """A watch range that wraps past 2**64 became a Unicorn hook with end < begin, which Unicorn
    takes as every address."""
    from apfdbg.debug.points import PointError, parse_point
    with pytest.raises(PointError, match="past the top of the address space"):
        parse_point(text, load_image(guest("machine/hello")), 2)


def test_an_unfinished_console_line_keeps_the_time_it_was_written(tmp_path):
    """fuzz guest:2455, 5995: a console line without its newline is flushed when the run ends,
    outside any turn, and was stamped with a time computed for a turn: -1 (the text trace's line
    did not parse). It now carries the time of its last byte."""
    from apfdbg.trace import TraceWriter
    import io
    p = tmp_path / "flat.bin"
    # mov al,'x'; out 0xe9,al; mov rsi,-1; mov eax,[rsi]: not RAM, the run ends in the middle of a turn
    p.write_bytes(bytes.fromhex("b078 e6e9 48c7c6ffffffff 8b06"))
    m = Machine(load_image(p, load_addr=0x100000), MachineConfig(vcpus=1))
    out = io.StringIO()
    m.sinks.append(TraceWriter(out, "text"))
    events = []
    m.sinks.append(events.append)
    m.run()
    console = [e for e in events if e.kind == "console"]
    assert [e.text for e in console] == ["x"]
    assert 0 < console[0].time <= events[-1].time
    assert all(not line.lstrip().startswith("-") for line in out.getvalue().splitlines())
