"""What this machine's CPU can do, as far as INT8 serving cares: its instruction-set flags.

ONNX Runtime's INT8 matrix products multiply unsigned 8-bit activations by signed 8-bit weights.
With VNNI (AVX-512 VNNI, AVX-VNNI, or AMX) a CPU adds those products straight into 32-bit sums;
without it (AVX2 alone) products are added in pairs into 16-bit sums first, which 8-bit weights
can overflow, so graphs quantised for such CPUs keep their weights to 7 bits (``reduce_range``).
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
"""Linux /proc/cpuinfo flags of the instructions that add u8 x s8 products into 32-bit sums."""


@functools.cache
def _first_cpu(cpuinfo: Path) -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo; empty where there is no such file (not Linux)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() and fields:  # the blank line after the first processor
            break
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first CPU's flags (x86 "flags", Arm "Features"); empty where they are not known."""
    fields = _first_cpu(cpuinfo)
    return frozenset((fields.get("flags") or fields.get("Features") or "").split())


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (as lscpu prints it), or the platform's processor string."""
    return _first_cpu(cpuinfo).get("model name") or platform.processor() or platform.machine()


def has_vnni(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU (or the given flags) has an instruction of :data:`VNNI_FLAGS`."""
    return bool(VNNI_FLAGS & (cpu_flags() if flags is None else flags))
