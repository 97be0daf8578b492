"""The per-vCPU table of gfns with an outstanding async page fault.

A model of ``vcpu->arch.apf.gfns[]`` in arch/x86/kvm/x86.c: 64 slots of open addressing
with linear probing, ``~0`` (all ones, the table holds u64 gfns) marking an empty slot,
a lookup bounded to one full turn of the table and deletion by backward shift, so there
are never tombstones.  See docs/kvm-model.md for the rules and where each comes from.

Everything a UI wants to draw is public: ``slots`` (the 64 raw values), ``home(gfn)`` (the
bucket the hash sends a gfn to), ``distance(slot)`` (how far an entry sits from its home)
and ``lookup(gfn)`` (the slot a search ends on and how many slots it looked at).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

__all__ = [
    "ASYNC_PF_PER_VCPU",
    "TABLE_SIZE",
    "EMPTY",
    "GOLDEN_RATIO_PRIME_32",
    "GOLDEN_RATIO_32",
    "hash_32",
    "GfnHash",
    "Lookup",
]

#: Works one vCPU may have outstanding (ASYNC_PF_PER_VCPU in kvm_host.h).
ASYNC_PF_PER_VCPU = 64
#: roundup_pow_of_two(ASYNC_PF_PER_VCPU).
TABLE_SIZE = 64
#: log2 of the table size: the number of hash bits kept (order_base_2(64)).
HASH_BITS = 6
#: ``~0`` for a u64 gfn_t: an empty slot.
EMPTY = (1 << 64) - 1
#: include/linux/hash.h before 4.7 (the 2010 kernels): GOLDEN_RATIO_PRIME_32.
GOLDEN_RATIO_PRIME_32 = 0x9E370001
#: include/linux/hash.h from 4.7 on: GOLDEN_RATIO_32.
GOLDEN_RATIO_32 = 0x61C88647

_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1
_MASK = TABLE_SIZE - 1


def hash_32(val: int, bits: int, multiplier: int = GOLDEN_RATIO_PRIME_32) -> int:
    """hash_32() of include/linux/hash.h: the top ``bits`` bits of the 32-bit product."""
    if not 0 < bits <= 32:
        raise ValueError(f"bits must be in 1..32, not {bits}")
    return (((val & _U32) * multiplier) & _U32) >> (32 - bits)


@dataclass(frozen=True, slots=True)
class Lookup:
    """Where a search for a gfn ended (kvm_async_pf_gfn_slot) and whether it hit."""

    gfn: int
    slot: int
    found: bool
    probes: int  # slots looked at before stopping (0 = stopped on the home bucket)


class GfnHash:
    """64-slot open-addressing set of gfns, as in arch/x86/kvm/x86.c.

    ``multiplier`` is the hash_32 constant of the kernel modelled.  ``stop_at_empty``
    selects the lookup loop: True is the merged/modern form (stop on the gfn or on an
    empty slot); False is the form in the series as posted in Oct 2010 (patch 01/11),
    whose loop condition only stopped on the gfn, so a miss always walks all 64 slots.
    Both return the same answer for every table the host can build; only the number
    of probes (and a delete of a gfn that is not there) differ.  ``guard_missing_delete``
    is the later WARN_ON_ONCE guard: without it, deleting a gfn that is absent clears
    whatever slot the lookup ended on, exactly like the 2010 code.
    """

    __slots__ = ("multiplier", "stop_at_empty", "guard_missing_delete", "_slots")

    def __init__(
        self,
        multiplier: int = GOLDEN_RATIO_PRIME_32,
        *,
        stop_at_empty: bool = True,
        guard_missing_delete: bool = False,
    ) -> None:
        self.multiplier = multiplier
        self.stop_at_empty = stop_at_empty
        self.guard_missing_delete = guard_missing_delete
        self._slots: list[int] = [EMPTY] * TABLE_SIZE

    # ---- the kernel's primitives -------------------------------------------------
    def home(self, gfn: int) -> int:
        """kvm_async_pf_hash_fn: the home bucket of ``gfn`` (only its low 32 bits count)."""
        return hash_32(gfn & _U32, HASH_BITS, self.multiplier)

    @staticmethod
    def next_probe(key: int) -> int:
        """kvm_async_pf_next_probe: linear probing with wrap-around 63 -> 0."""
        return (key + 1) & _MASK

    def reset(self) -> None:
        """kvm_async_pf_hash_reset: every slot empty."""
        self._slots = [EMPTY] * TABLE_SIZE

    def add(self, gfn: int) -> int:
        """kvm_add_async_pf_gfn: store at the first empty slot from the home bucket.

        Returns the slot used.  The kernel loops forever on a full table; the host can
        never get there (at most 64 works, each adding one gfn after checking room), so a
        full table raises here instead of hanging.
        """
        gfn = self._check_gfn(gfn)
        key = self.home(gfn)
        for _ in range(TABLE_SIZE):
            if self._slots[key] == EMPTY:
                self._slots[key] = gfn
                return key
            key = self.next_probe(key)
        raise OverflowError("async PF gfn table is full (the kernel would spin here)")

    def lookup(self, gfn: int) -> Lookup:
        """kvm_async_pf_gfn_slot: probe at most TABLE_SIZE slots from the home bucket."""
        gfn = self._check_gfn(gfn)
        key = self.home(gfn)
        probes = 0
        while probes < TABLE_SIZE:
            value = self._slots[key]
            if value == gfn and value != EMPTY:
                break
            if self.stop_at_empty and value == EMPTY:
                break
            key = self.next_probe(key)
            probes += 1
        return Lookup(gfn=gfn, slot=key, found=self._slots[key] == gfn, probes=probes)

    def find(self, gfn: int) -> bool:
        """kvm_find_async_pf_gfn."""
        return self.lookup(gfn).found

    def delete(self, gfn: int) -> list[tuple[int, int]]:
        """kvm_del_async_pf_gfn: empty the gfn's slot, then shift the run back.

        Walk forward from the emptied slot ``i``; an entry at ``j`` whose home ``k`` lies
        cyclically in (i, j] can stay; any other entry moves into ``i`` and ``j`` becomes
        the new hole.  Stops at the first empty slot.  Returns the moves made, as
        ``(from_slot, to_slot)`` pairs, for the UI.
        """
        look = self.lookup(gfn)
        if self.guard_missing_delete and not look.found:
            return []
        moves: list[tuple[int, int]] = []
        i = j = look.slot
        slots = self._slots
        while True:
            slots[i] = EMPTY
            while True:
                j = self.next_probe(j)
                if slots[j] == EMPTY:
                    return moves
                k = self.home(slots[j])
                stays = (i < k <= j) if i <= j else (i < k or k <= j)
                if not stays:
                    break
            slots[i] = slots[j]
            moves.append((j, i))
            i = j

    # ---- inspection --------------------------------------------------------------
    @property
    def slots(self) -> list[int]:
        """A copy of the 64 raw slot values (EMPTY = 2**64 - 1)."""
        return list(self._slots)

    def entries(self) -> list[int | None]:
        """The 64 slots with None for an empty one (for display)."""
        return [None if v == EMPTY else v for v in self._slots]

    def distance(self, slot: int) -> int | None:
        """Probe distance of the entry in ``slot`` from its home bucket (None if empty)."""
        value = self._slots[slot]
        if value == EMPTY:
            return None
        return (slot - self.home(value)) & _MASK

    def gfns(self) -> set[int]:
        return {v for v in self._slots if v != EMPTY}

    def __len__(self) -> int:
        return sum(1 for v in self._slots if v != EMPTY)

    def __contains__(self, gfn: object) -> bool:
        return isinstance(gfn, int) and self.find(gfn)

    def __iter__(self) -> Iterator[int]:
        return (v for v in self._slots if v != EMPTY)

    def __repr__(self) -> str:
        used = {i: hex(v) for i, v in enumerate(self._slots) if v != EMPTY}
        return f"GfnHash({used})"

    @staticmethod
    def _check_gfn(gfn: int) -> int:
        if not isinstance(gfn, int) or gfn < 0 or gfn >= EMPTY:
            raise ValueError(f"gfn must be a u64 other than ~0, not {gfn!r}")
        return gfn
