"""Machine configuration: one validated object, shared by the CLI, scenarios and tests."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

MIB = 1 << 20


class MachineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    vcpus: int = Field(2, ge=1, le=64, description="number of vCPUs")
    ram_mib: int = Field(16, ge=2, le=4096, description="guest RAM in MiB")
    quantum: int = Field(10_000, ge=1, le=10_000_000,
                         description="instructions a vCPU runs before the next one gets its turn")
    max_insns: int | None = Field(None, ge=1, description="stop the run after this many instructions")
    tcg_buffer_mib: int = Field(32, ge=4, le=1024, description="Unicorn code cache per vCPU")

    @field_validator("ram_mib")
    @classmethod
    def _whole_boot_area(cls, v: int) -> int:
        return v

    @property
    def ram_size(self) -> int:
        return self.ram_mib * MIB
