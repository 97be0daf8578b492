"""Guest images: static ELF64 executables and flat binaries.

Loading only describes *what* goes where; the machine copies it into RAM. Symbols are kept so the
UI and debugger can name addresses.
"""
from __future__ import annotations

import bisect
import io
import struct
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from .boot import BOOT_AREA_END, boot_structures


class ImageError(ValueError):
    """The image cannot be run; the message says why, for the user."""


@dataclass(frozen=True)
class Segment:
    paddr: int
    data: bytes
    memsz: int
    executable: bool
    #: False for a segment that holds no section (ld's read-only segment of the ELF and program
    #: headers, just below the text since binutils 2.31): nothing in the program needs it loaded.
    has_sections: bool = True

    @property
    def end(self) -> int:
        return self.paddr + max(self.memsz, len(self.data))


@dataclass(frozen=True)
class Symbol:
    name: str
    addr: int
    size: int
    kind: str  # "func", "object", "notype"


@dataclass
class Image:
    path: str
    entry: int
    segments: list[Segment]
    symbols: list[Symbol] = field(default_factory=list)
    elf: bytes | None = None  # the whole file, for DWARF readers later

    def __post_init__(self) -> None:
        # At one address, a label (size 0, no type) sorts before a sized function, so lookup()
        # (which takes the last symbol at or below an address) names the function.
        rank = {"notype": 0, "object": 1, "func": 2}
        self.symbols.sort(key=lambda s: (s.addr, s.size > 0, rank.get(s.kind, 0)))
        self._addrs = [s.addr for s in self.symbols]
        self._by_name = {s.name: s for s in self.symbols}

    def symbol(self, name: str) -> Symbol | None:
        return self._by_name.get(name)

    def lookup(self, addr: int) -> tuple[Symbol, int] | None:
        """The symbol covering `addr` and the offset into it (nearest preceding function if sizeless)."""
        i = bisect.bisect_right(self._addrs, addr) - 1
        while i >= 0:
            sym = self.symbols[i]
            if sym.size == 0 or addr < sym.addr + sym.size:
                if sym.size or sym.kind == "func" or addr - sym.addr < 0x1000:
                    return sym, addr - sym.addr
                return None
            if sym.kind == "func":
                return None
            i -= 1
        return None

    def describe(self, addr: int) -> str:
        hit = self.lookup(addr)
        if hit is None:
            return f"{addr:#x}"
        sym, off = hit
        return f"{sym.name}+{off:#x}" if off else sym.name

    def placed(self, ram_size: int, vcpus: int) -> list[Segment]:
        """The segments to write into RAM, or ImageError if the image cannot run there. A segment
        may use the boot area where no boot structure is (QEMU's loaders allow the same); one
        that holds no section is left out where it would clash."""
        structures = boot_structures(vcpus)
        out = []
        for seg in self.segments:
            if seg.end > ram_size:
                raise ImageError(
                    f"{self.path}: segment {seg.paddr:#x}-{seg.end:#x} does not fit in "
                    f"{ram_size // (1 << 20)} MiB of guest RAM (raise --ram)")
            hit = next(((n, a, b) for n, a, b in structures if seg.paddr < b and a < seg.end), None)
            if hit is None:
                out.append(seg)
            elif seg.has_sections:
                name, a, b = hit
                raise ImageError(
                    f"{self.path}: segment {seg.paddr:#x}-{seg.end:#x} overlaps {name} "
                    f"({a:#x}-{b:#x}) in the boot area (docs/guest-abi.md); link the guest elsewhere, "
                    "e.g. at 1 MiB")
        if not any(s.paddr <= self.entry < s.end for s in out):
            raise ImageError(f"{self.path}: entry point {self.entry:#x} is outside every loaded segment")
        return out


def load_image(path: str | Path, *, load_addr: int | None = None, entry: int | None = None) -> Image:
    """Load an ELF64 x86-64 executable, or a flat binary when `load_addr` is given or the file is not ELF."""
    p = Path(path)
    try:
        blob = p.read_bytes()
    except OSError as e:
        raise ImageError(f"{p}: cannot read image: {e.strerror or e}") from None
    if blob[:4] == b"\x7fELF":
        if load_addr is not None:
            raise ImageError(f"{p}: is an ELF file; --load-addr is only for flat binaries")
        return _load_elf(str(p), blob)
    if not blob:
        raise ImageError(f"{p}: image is empty")
    base = BOOT_AREA_END if load_addr is None else load_addr
    ent = base if entry is None else entry
    for what, v in (("load address", base), ("entry point", ent)):
        if not 0 <= v < 1 << 64:  # a negative one would be a Python slice from the end of RAM
            raise ImageError(f"{p}: {what} {v:#x} is not a guest physical address (0 .. 2**64-1)")
    return Image(str(p), ent, [Segment(base, blob, len(blob), True)])


def _load_elf(name: str, blob: bytes) -> Image:
    if len(blob) < 64:
        raise ImageError(f"{name}: malformed ELF: truncated: an ELF64 header needs 64 bytes, the file has {len(blob)}")
    try:
        elf = ELFFile(io.BytesIO(blob))
        if elf.elfclass != 64 or elf["e_machine"] != "EM_X86_64":
            raise ImageError(f"{name}: not an x86-64 ELF64 image (class {elf.elfclass}, {elf['e_machine']})")
        if elf["e_type"] != "ET_EXEC":
            raise ImageError(f"{name}: ELF type {elf['e_type']}; apfdbg runs static executables (ET_EXEC)")
        _check_table(name, "program header", elf["e_phoff"], elf["e_phnum"], elf["e_phentsize"], 56, len(blob))
        _check_sections(name, blob, elf)
        segments = []
        for ph in elf.iter_segments():
            if ph["p_type"] != "PT_LOAD" or ph["p_memsz"] == 0:
                continue
            off, filesz = ph["p_offset"], ph["p_filesz"]
            if off + filesz > len(blob):
                raise ImageError(f"{name}: truncated: a segment needs bytes {off:#x}-{off + filesz:#x} "
                                 f"but the file has {len(blob):#x}")
            if filesz > ph["p_memsz"]:
                raise ImageError(f"{name}: segment file size exceeds its memory size")
            paddr = ph["p_paddr"] or ph["p_vaddr"]
            segments.append(Segment(paddr, blob[off:off + filesz], ph["p_memsz"], bool(ph["p_flags"] & 1),
                                    _holds_a_section(elf, ph)))
        if not segments:
            raise ImageError(f"{name}: no loadable (PT_LOAD) segment")
        symbols = _symbols(elf)
        entry = elf["e_entry"]
    except ImageError:
        raise
    except (ELFError, ValueError, KeyError, IndexError, OSError) as e:
        raise ImageError(f"{name}: malformed ELF: {e}") from None
    return Image(name, entry, segments, symbols, blob)


def _check_table(name: str, what: str, off: int, num: int, entsize: int, want: int, size: int) -> None:
    """A header table must lie in the file (pyelftools would seek anywhere, even past ssize_t)."""
    if num and entsize != want:
        raise ImageError(f"{name}: malformed ELF: {what} entries of {entsize} bytes (ELF64 has {want})")
    if num and off + num * entsize > size:
        raise ImageError(f"{name}: malformed ELF: the {what} table at {off:#x} ({num} entries) is beyond "
                         f"the end of the file ({size:#x} bytes)")


def _check_sections(name: str, blob: bytes, elf: ELFFile) -> None:
    """The section header table, and the contents of every section that has some, lie in the file."""
    off, num = elf["e_shoff"], elf["e_shnum"]
    if num == 0 and off:  # more than 0xff00 sections: section 0 holds the count
        _check_table(name, "section header", off, 1, elf["e_shentsize"], 64, len(blob))
        num = elf.num_sections()
    _check_table(name, "section header", off, num, elf["e_shentsize"], 64, len(blob))
    for i in range(num):
        sh_type, = struct.unpack_from("<I", blob, off + 64 * i + 4)
        sh_offset, sh_size = struct.unpack_from("<QQ", blob, off + 64 * i + 24)
        if sh_type != 8 and sh_offset + sh_size > len(blob):  # 8: SHT_NOBITS (.bss) has no contents
            raise ImageError(f"{name}: malformed ELF: section {i} at {sh_offset:#x} ({sh_size:#x} bytes) is "
                             f"beyond the end of the file ({len(blob):#x} bytes)")
    strndx = elf["e_shstrndx"]
    if num and strndx != 0 and strndx != 0xFFFF:  # SHN_UNDEF, SHN_XINDEX
        sh_type, = struct.unpack_from("<I", blob, off + 64 * strndx + 4) if strndx < num else (None,)
        if sh_type != 3:  # SHT_STRTAB
            raise ImageError(f"{name}: malformed ELF: the section name table (e_shstrndx {strndx}) is not a "
                             f"string table section ({num} sections)")


def _holds_a_section(elf: ELFFile, ph) -> bool:
    """Whether an allocated, non-empty section lies in the segment (by virtual address). An image
    without section headers is taken to need every segment."""
    if elf.num_sections() == 0:
        return True
    lo, hi = ph["p_vaddr"], ph["p_vaddr"] + ph["p_memsz"]
    return any(sec["sh_flags"] & 2 and sec["sh_size"] and lo <= sec["sh_addr"] < hi
               for sec in elf.iter_sections())


def _symbols(elf: ELFFile) -> list[Symbol]:
    tab = elf.get_section_by_name(".symtab")
    if tab is None or not hasattr(tab, "iter_symbols"):
        return []
    kinds = {"STT_FUNC": "func", "STT_OBJECT": "object", "STT_NOTYPE": "notype"}
    out = []
    for s in tab.iter_symbols():
        kind = kinds.get(s["st_info"]["type"])
        if kind and s.name and s["st_shndx"] != "SHN_UNDEF" and not s.name.startswith(".L"):
            out.append(Symbol(s.name, s["st_value"], s["st_size"], kind))
    return out
