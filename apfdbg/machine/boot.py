"""The boot area apfdbg writes before the first instruction (see docs/guest-abi.md)."""
from __future__ import annotations

import struct

from .ram import GuestRAM

GDT_BASE = 0x1000
TSS_BASE = 0x2000
TSS_STRIDE = 0x80
TSS_SIZE = 104
STACK_BASE = 0x10000
STACK_SIZE = 0x1000

KERNEL_CS, KERNEL_DS, USER_DS, USER_CS = 0x08, 0x10, 0x18, 0x20
TSS_SEL0 = 0x28

# Raw descriptors (flat, 4 GiB limit, G=1); code descriptors have L=1 for 64-bit mode.
DESC_KERNEL_CODE = 0x00AF9A000000FFFF
DESC_KERNEL_DATA = 0x00CF92000000FFFF
DESC_USER_DATA = 0x00CFF2000000FFFF
DESC_USER_CODE = 0x00AFFA000000FFFF


def tss_base(i: int) -> int:
    return TSS_BASE + TSS_STRIDE * i


def stack_top(i: int) -> int:
    return STACK_BASE + STACK_SIZE * (i + 1)


def tss_selector(i: int) -> int:
    return TSS_SEL0 + 16 * i


def gdt_limit(vcpus: int) -> int:
    return TSS_SEL0 + 16 * vcpus - 1


def tss_descriptor(base: int, limit: int = TSS_SIZE - 1) -> tuple[int, int]:
    """A 16-byte available 64-bit TSS descriptor (type 9, present, DPL 0) as two qwords."""
    low = (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (0x89 << 40) \
        | (((limit >> 16) & 0xF) << 48) | (((base >> 24) & 0xFF) << 56)
    return low, base >> 32


BOOT_AREA_END = 0x100000
"""The first MiB is the boot area (docs/guest-abi.md); only its structures below are in use."""


def boot_structures(vcpus: int) -> list[tuple[str, int, int]]:
    """(name, start, end) of every structure write_boot_area puts in the boot area for `vcpus`:
    an image may load anywhere else below 1 MiB."""
    out = [("the GDT", GDT_BASE, GDT_BASE + gdt_limit(vcpus) + 1)]
    out += [(f"the TSS of vCPU {i}", tss_base(i), tss_base(i) + TSS_SIZE) for i in range(vcpus)]
    out += [(f"the boot stack of vCPU {i}", stack_top(i) - STACK_SIZE, stack_top(i)) for i in range(vcpus)]
    return out


def write_boot_area(ram: GuestRAM, vcpus: int) -> None:
    ram.write(0, bytes(BOOT_AREA_END))
    gdt = [0, DESC_KERNEL_CODE, DESC_KERNEL_DATA, DESC_USER_DATA, DESC_USER_CODE]
    for i in range(vcpus):
        gdt.extend(tss_descriptor(tss_base(i)))
        tss = bytearray(TSS_SIZE)
        struct.pack_into("<Q", tss, 4, stack_top(i))   # RSP0
        struct.pack_into("<H", tss, 102, TSS_SIZE)      # I/O map base: none
        ram.write(tss_base(i), bytes(tss))
    ram.write(GDT_BASE, struct.pack(f"<{len(gdt)}Q", *gdt))
