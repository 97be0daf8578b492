"""Guest RAM: one host buffer that every vCPU engine maps, plus the host's per-frame swap state.

Guest RAM is read and written from Python through this buffer (never `uc.mem_read`): it is cheap,
works while an engine runs in another thread, and sees exactly what every vCPU sees.
"""
from __future__ import annotations

import ctypes
import mmap
import struct

PAGE = 4096


class GuestRAM:
    def __init__(self, size: int) -> None:
        if size % PAGE:
            raise ValueError("RAM size must be a whole number of pages")
        self.size = size
        self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.view = memoryview(self._map)
        self._cbuf = (ctypes.c_char * size).from_buffer(self._map)
        self.ptr = ctypes.addressof(self._cbuf)
        # One byte per frame, read by the C TLB-fill hook: non-zero = swapped out by the host.
        self.frames = size // PAGE
        self._state = (ctypes.c_uint8 * self.frames)()
        self.frame_state_ptr = ctypes.addressof(self._state)
        # One byte per frame set by the C TLB-fill hook when a vCPU maps the frame (host "accessed").
        self._access = (ctypes.c_uint8 * self.frames)()
        self.frame_access_ptr = ctypes.addressof(self._access)

    # --- host swap state -------------------------------------------------------------------
    def is_swapped(self, gfn: int) -> bool:
        return bool(self._state[gfn])

    def set_swapped(self, gfn: int, out: bool) -> None:
        self._state[gfn] = 1 if out else 0

    def swapped_gfns(self) -> list[int]:
        raw = bytes(self._state)
        return [i for i, b in enumerate(raw) if b]

    def swapped_count(self) -> int:
        return self.frames - bytes(self._state).count(0)

    def take_accessed(self) -> bytes:
        """The host's accessed bits since the last call (one byte per frame), cleared. The caller
        must flush the vCPUs' TLBs, or frames they still map are not marked again."""
        raw = bytes(self._access)
        ctypes.memset(self._access, 0, self.frames)
        return raw

    # --- access -------------------------------------------------------------------------------
    def contains(self, gpa: int, size: int = 1) -> bool:
        return 0 <= gpa and gpa + size <= self.size

    def read(self, gpa: int, size: int) -> bytes:
        return bytes(self.view[gpa:gpa + size])

    def write(self, gpa: int, data: bytes) -> None:
        self.view[gpa:gpa + len(data)] = data

    def read_u32(self, gpa: int) -> int:
        return struct.unpack_from("<I", self._map, gpa)[0]

    def write_u32(self, gpa: int, value: int) -> None:
        struct.pack_into("<I", self._map, gpa, value & 0xFFFFFFFF)

    def read_u64(self, gpa: int) -> int:
        return struct.unpack_from("<Q", self._map, gpa)[0]

    def write_u64(self, gpa: int, value: int) -> None:
        struct.pack_into("<Q", self._map, gpa, value & 0xFFFFFFFFFFFFFFFF)

    def is_ram(self, gpa: int, size: int) -> bool:
        return self.contains(gpa, size)

    def close(self) -> None:
        del self._cbuf
        self.view.release()
        self._map.close()
