"""The package as a user installs it: the wheel holds every module, config and asset; its commands run from any folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
COMMANDS = ("dequant-train", "dequant-evaluate", "dequant-sweep", "dequant-sweep-report", "dequant-edit",
            "dequant-export")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from this checkout (no build isolation: setuptools is already installed, nothing is fetched)."""
    out, tree = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("tree")
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources.
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tree / name)
    for name in ("src", "conf", "sweeps"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(tree)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "BuildBackendWarning" not in proc.stderr, proc.stderr[-2000:]
    (path,) = out.glob("dequant-*.whl")
    return path


def test_every_command_is_installed() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    assert set(COMMANDS) <= set(scripts)
    assert scripts["dequant-train"] == "dequant.cli:train_main"


def test_license_is_spdx_and_torch_is_a_range() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "MIT" and (ROOT / project["license-files"][0]).is_file()
    (torch_req,) = [d for d in project["dependencies"] if re.match(r"torch\b", d)]
    assert "==" not in torch_req and ">=" in torch_req


def test_every_folder_is_a_listed_package() -> None:
    """setuptools cannot discover conf/ and sweeps/ mapped into dequant/, so pyproject.toml lists every folder."""
    src = ROOT / "src"
    folders = {".".join(p.relative_to(src).parts) for p in [src / "dequant", *(src / "dequant").rglob("*")]
               if p.is_dir() and "__pycache__" not in p.parts and not p.name.endswith(".egg-info")}
    # dequant's Hydra plugins, in the hydra_plugins namespace package (which has no __init__.py of its own).
    folders |= {".".join(p.relative_to(src).parts) for p in (src / "hydra_plugins").rglob("*")
                if p.is_dir() and "__pycache__" not in p.parts}
    for name in ("conf", "sweeps"):
        top = ROOT / name
        folders |= {".".join(["dequant", name, *p.relative_to(top).parts]) for p in [top, *top.rglob("*")]
                    if p.is_dir() and "__pycache__" not in p.parts}
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert not folders - listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(folders - listed)}"
    assert not listed - folders, f"no such folder, remove from pyproject.toml: {sorted(listed - folders)}"


def test_wheel_holds_every_module_config_and_asset(wheel: Path) -> None:
    """The package list in pyproject.toml is explicit (conf/ is mapped in): a new subpackage must be added there."""
    names = set(zipfile.ZipFile(wheel).namelist())
    src = ROOT / "src"
    expected = {p.relative_to(src).as_posix() for top in ("dequant", "hydra_plugins") for p in (src / top).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    for name in ("conf", "sweeps"):
        expected |= {f"dequant/{name}/{p.relative_to(ROOT / name).as_posix()}" for p in (ROOT / name).rglob("*.yaml")}
    missing = sorted(expected - names)
    assert not missing, f"not in the wheel (add the package to [tool.setuptools] packages): {missing[:10]}"


def test_wheel_ships_the_pretrained_model(wheel: Path) -> None:
    """The model dequant runs when no checkpoint is given travels in the wheel, every file intact (SHA256SUMS)."""
    import hashlib

    from dequant.models.pretrained import REQUIRED_FILES, SUMS_FILE, read_sha256sums

    folder = ROOT / "src" / "dequant" / "assets" / "pretrained"
    if not folder.is_dir():
        pytest.skip("this checkout has no src/dequant/assets/pretrained yet (experiments/release_model.py writes it)")
    inside = "dequant/assets/pretrained"
    for rel in (SUMS_FILE, *REQUIRED_FILES):
        assert (folder / rel).is_file(), f"the checkout's shipped model lacks {rel}"
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        assert f"{inside}/{SUMS_FILE}" in names and f"{inside}/unet/diffusion_pytorch_model.safetensors" in names
        for rel, expected in read_sha256sums(folder).items():
            assert f"{inside}/{rel}" in names, f"not in the wheel: {inside}/{rel}"
            digest = hashlib.sha256()
            with whl.open(f"{inside}/{rel}") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            assert digest.hexdigest() == expected, f"{inside}/{rel} in the wheel differs from SHA256SUMS"


@pytest.mark.slow
def test_installed_wheel_trains_from_an_empty_folder(wheel: Path, tmp_path: Path) -> None:
    """`dequant-train --cfg job` from an empty folder, the package installed from the wheel (not editable)."""
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    py = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, timeout=300)
    # The dependencies come from the already installed environment (appended after the new site-packages, whose
    # dequant therefore wins over this checkout's editable one).
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run([str(py), "-c", "import dequant, dequant.config as c; print(dequant.__file__); "
                            "print(c.conf_dir())"], cwd=empty, env=env, capture_output=True, text=True, timeout=120)
    package_file, config_dir = where.stdout.split()
    assert Path(package_file).is_relative_to(site) and Path(config_dir) == site / "dequant" / "conf", where.stdout
    # The shipped model is found inside the installed package, and intact when this checkout has it.
    shipped = subprocess.run([str(py), "-c", "from dequant.models.pretrained import pretrained_dir, "
                              "verify_pretrained; print(pretrained_dir()); pretrained_dir().is_dir() and "
                              "verify_pretrained()"],
                             cwd=empty, env=env, capture_output=True, text=True, timeout=300)
    assert shipped.returncode == 0, shipped.stderr[-2000:]
    assert Path(shipped.stdout.strip()) == site / "dequant" / "assets" / "pretrained", shipped.stdout
    train = env_dir / "bin" / "dequant-train"
    proc = subprocess.run([str(train), "--cfg", "job", "--resolve", "experiment=demo", "trainer.max_steps=3"],
                          cwd=empty, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "task_name: demo" in proc.stdout and "max_steps: 3" in proc.stdout
    assert str(site / "dequant" / "assets" / "images") in proc.stdout  # ${dq.assets:images} resolved in the wheel
    assert list(empty.iterdir()) == []  # --cfg job only prints
    for command in COMMANDS:
        assert (env_dir / "bin" / command).is_file(), command
    # The sweep files travel too: a sweep composes from an empty folder without --config-dir.
    sweep = subprocess.run([str(env_dir / "bin" / "dequant-sweep"), "--config-name", "cue_modes", "--cfg", "job",
                            "experiment=demo"], cwd=empty, env=env, capture_output=True, text=True, timeout=300)
    assert sweep.returncode == 0, sweep.stderr
    assert "task_name: demo" in sweep.stdout and "evaluate: true" in sweep.stdout
    assert list(empty.iterdir()) == []
    report = subprocess.run([str(env_dir / "bin" / "dequant-sweep-report"), "--help"], cwd=empty, env=env,
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0 and "sweep" in report.stdout


def _lock_pins() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    text = (ROOT / "requirements.lock").read_text()
    return {canonicalize_name(n): v for n, v in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", text, re.M)}


def test_lock_pins_every_dependency_within_the_ranges() -> None:
    """requirements.lock (pip-compile, README: Install) pins what pyproject.toml allows; torch is installed first."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = _lock_pins()
    project = PYPROJECT["project"]
    for line in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name == "torch":
            assert "torch" not in pins  # its build (CPU or CUDA) is the machine's choice: make install pins it
            continue
        assert name in pins, f"{req.name} is not in requirements.lock (regenerate it: README, Install)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is outside {req}"
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install -q -r requirements.lock" in makefile and "$(STAMP): pyproject.toml requirements.lock" in makefile


@pytest.mark.slow
def test_installed_commands_give_one_line_errors_named_after_themselves(tmp_path: Path) -> None:
    """The installed Hydra commands run from any folder and report bad input as `<command>: error: ...`, exit 2."""
    bin_dir = Path(sys.executable).parent
    cases = {"dequant-evaluate": ([f"hydra.run.dir={tmp_path / 'e'}"], "ckpt_path is required"),
             "dequant-train": (["experiment=tiny", "formulation=diffusion", f"hydra.run.dir={tmp_path / 't'}"],
                               "formulation: 'diffusion' is not an option")}
    for command, (args, message) in cases.items():
        proc = subprocess.run([str(bin_dir / command), *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1].startswith(f"{command}: error: {message}"), proc.stderr[-2000:]
