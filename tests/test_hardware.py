"""The precision a CPU recipe picks: bf16 autocast only where the CPU has native bf16."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from dequant.config import conf_dir, register_resolvers
from dequant.hardware import cpu_flags, cpu_precision, describe_cpu_precision, native_bf16_flags

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse avx2\n"
AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"


def _cpuinfo(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return path


def test_native_bf16_needs_avx512_bf16_or_amx_bf16(tmp_path: Path) -> None:
    assert native_bf16_flags(_cpuinfo(tmp_path, AVX2_ONLY)) == []
    assert native_bf16_flags(_cpuinfo(tmp_path, AMX)) == ["avx512_bf16", "amx_bf16"]
    only_avx512 = _cpuinfo(tmp_path, "flags\t: avx2 avx512f avx512bw\n")  # AVX512 without its bf16 extension
    assert cpu_precision(cpuinfo=only_avx512) == "32-true"


def test_cpu_precision_is_bf16_only_with_native_support(tmp_path: Path) -> None:
    assert cpu_precision(cpuinfo=_cpuinfo(tmp_path, AMX)) == "bf16-mixed"
    assert cpu_precision(cpuinfo=_cpuinfo(tmp_path, AVX2_ONLY)) == "32-true"
    assert cpu_precision(cpuinfo=tmp_path / "absent") == "32-true"  # no /proc/cpuinfo: nothing is assumed
    assert cpu_flags(tmp_path / "absent") == set()


def test_the_log_line_says_the_choice_and_why(tmp_path: Path) -> None:
    assert describe_cpu_precision("32-true", _cpuinfo(tmp_path, AVX2_ONLY)) == (
        "precision 32-true on the CPU: this CPU has no native bf16 (none of avx512_bf16, amx_bf16)")
    assert describe_cpu_precision("bf16-mixed", _cpuinfo(tmp_path, AMX)) == (
        "precision bf16-mixed on the CPU: this CPU has native bf16 (avx512_bf16, amx_bf16)")


@pytest.mark.parametrize("experiment", ["cpu_quality", "release_cpu"])
def test_cpu_recipes_take_this_cpus_precision(experiment: str) -> None:
    register_resolvers()
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        cfg = compose("train", overrides=[f"experiment={experiment}"])
    assert cfg.trainer.precision == cpu_precision()
