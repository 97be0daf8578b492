"""Decoding the blocks Unicorn translates: instruction boundaries, and the instructions the
machine must intercept (Unicorn either has no hook for them or answers non-deterministically)."""
from __future__ import annotations

from dataclasses import dataclass

import capstone

SPECIAL = {
    "wrmsr": "wrmsr", "rdmsr": "rdmsr", "rdtsc": "rdtsc", "rdtscp": "rdtscp",
    "rdrand": "rdrand", "rdseed": "rdseed",
    "iretq": "iretq",  # not emulated: watched for RFLAGS.RF (vcpu._on_iretq)
}


@dataclass(frozen=True)
class BlockInfo:
    offsets: tuple[int, ...]          # offset of each instruction from the block start
    specials: tuple[tuple[int, str], ...]  # (offset, kind) of intercepted instructions

    @property
    def icount(self) -> int:
        return len(self.offsets)

    def retired_before(self, offset: int) -> int:
        """Instructions of this block that complete before the one at `offset` starts."""
        lo, hi = 0, len(self.offsets)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.offsets[mid] < offset:
                lo = mid + 1
            else:
                hi = mid
        return lo


class BlockDecoder:
    def __init__(self) -> None:
        self.cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self._cache: dict[bytes, BlockInfo] = {}

    def decode(self, code: bytes) -> BlockInfo:
        info = self._cache.get(code)
        if info is None:
            offsets, specials = [], []
            for addr, size, mnem, _ops in self.cs.disasm_lite(code, 0):
                offsets.append(addr)
                kind = SPECIAL.get(mnem)
                if kind:
                    specials.append((addr, kind))
            info = BlockInfo(tuple(offsets), tuple(specials))
            self._cache[code] = info
        return info
