"""What the machine a run starts on can do: the CPU's native bf16 support, and the precision a CPU recipe picks."""

from __future__ import annotations

from pathlib import Path

# x86 flags of native bf16 arithmetic (AVX512-BF16 dot products, AMX tiles); without them PyTorch emulates bf16
# autocast on the CPU, ~15x slower per step than fp32 (measured: 12 s against 0.8 s on an AVX2-only CPU).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags from a Linux `/proc/cpuinfo`; empty where there is none (another OS)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def native_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The native bf16 flags this CPU has (none: bf16 autocast would be emulated)."""
    flags = cpu_flags(cpuinfo)
    return [f for f in NATIVE_BF16_FLAGS if f in flags]


def cpu_precision(mixed: str = "bf16-mixed", full: str = "32-true", cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """`mixed` where the CPU has native bf16, else `full`: a step budget then costs about the same wall time on any
    CPU (the `${dq.cpu_precision:}` resolver of the CPU recipes)."""
    return mixed if native_bf16_flags(cpuinfo) else full


def describe_cpu_precision(precision: str, cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """One log line: the precision a CPU run uses and why."""
    found = native_bf16_flags(cpuinfo)
    has = f"this CPU has native bf16 ({', '.join(found)})" if found else \
        f"this CPU has no native bf16 (none of {', '.join(NATIVE_BF16_FLAGS)})"
    return f"precision {precision} on the CPU: {has}"
