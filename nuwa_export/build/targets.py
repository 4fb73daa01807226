"""Build profiles for the devices our users deploy on: precisions each supports, workspace limits.

Jetson boards share one memory between CPU and GPU, so the workspace is a fraction of the
board's memory (8 GB Orin Nano … 64 GB AGX Orin; 128 GB Thor), read from /proc/meminfo where
the build runs (build on the device: engines are specific to the GPU they were built on).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nuwa_export.errors import NuwaError
from nuwa_export.precision import QUANTIZED

GIB = 1 << 30


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    precisions: tuple[str, ...]
    default_precision: str
    compute_capabilities: tuple[tuple[int, int], ...]  # the GPUs this profile is for
    workspace_fraction: float  # of system memory (Jetson) — see workspace_bytes
    workspace_min: int
    workspace_max: int
    optimization_level: int = 3
    #: nuwa-quantize precisions the device runs (fp8 needs Ada / Hopper / Blackwell).
    quantized: tuple[str, ...] = ("int8", "int4-awq", "int4-rtn")

    def workspace_bytes(self, system_memory: int | None = None) -> int:
        mem = system_memory if system_memory is not None else memory_bytes()
        return int(min(self.workspace_max, max(self.workspace_min, mem * self.workspace_fraction)))

    def check_precision(self, precision: str) -> str:
        if precision in self.quantized:
            return precision
        if precision in QUANTIZED:
            raise NuwaError(f"{precision} engines do not run on the {self.name} profile ({self.description}); it runs {', '.join(self.quantized)}")
        if precision not in self.precisions:
            raise NuwaError(f"--precision {precision} is not supported on the {self.name} profile ({', '.join(self.precisions)})")
        return precision


TARGETS = {
    "orin": Target(
        "orin", "Jetson Orin (Ampere, SM 8.7; Nano/NX/AGX, 8–64 GB shared memory, JetPack 6: TensorRT 10.3)",
        ("fp16", "bf16", "fp32"), "fp16", ((8, 7),), 1 / 8, 1 * GIB, 8 * GIB,
    ),
    "thor": Target(
        "thor", "Jetson Thor (Blackwell, SM 11.0, 128 GB shared memory, JetPack 7)",
        ("fp16", "bf16", "fp32"), "fp16", ((11, 0),), 1 / 8, 4 * GIB, 16 * GIB,
        quantized=("int8", "fp8", "int4-awq", "int4-rtn"),
    ),
    "datacenter": Target(
        "datacenter", "discrete GPUs: A100, A10, L4, L40S, H100, H200, B200 (SM 8.0+)",
        ("fp16", "bf16", "fp32"), "fp16", ((8, 0), (8, 6), (8, 9), (9, 0), (10, 0)), 1 / 4, 4 * GIB, 16 * GIB,
        quantized=("int8", "fp8", "int4-awq", "int4-rtn"),  # fp8: SM 8.9 and later (checked against the GPU built on)
    ),
}


def target(name: str) -> Target:
    if name not in TARGETS:
        raise NuwaError(f"unknown --profile '{name}' (choose from {', '.join(TARGETS)})")
    return TARGETS[name]


def memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Total system memory (on Jetson, what CPU and GPU share); 16 GiB when unknown."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 16 * GIB
