"""The suite's own guarantees: a hanging test fails alone (pytest-timeout), and property tests take as many
examples as the chosen Hypothesis profile asks for."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HANGS = '''
import time

def test_hangs():
    time.sleep(120)

def test_after_the_hang():
    pass
'''


def test_a_hanging_test_fails_alone_under_the_configured_timeout(tmp_path: Path) -> None:
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert 60 <= int(options["timeout"]) <= 600  # pytest-timeout's key: a misspelt one would set no limit
    (tmp_path / "test_hang.py").write_text(HANGS)
    # The project's own pytest configuration, with only the limit shortened so that the check is quick. (The
    # generous wait is for a pytest starting on a busy machine.)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir",
                           str(tmp_path), "-p", "no:cacheprovider", "-p", "no:xdist", "-o", "timeout=2",
                           str(tmp_path / "test_hang.py")], capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert "timeout: 2.0s" in out, out[-3000:]  # pytest-timeout read the project's configuration
    assert proc.returncode == 1 and "1 failed, 1 passed" in out and "Timeout (>2.0s)" in out, out[-3000:]


def _pinned_examples(path: Path) -> list[str]:
    """`settings(max_examples=<a number>)` calls: a pinned count overrides every profile."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "settings":
            for kw in node.keywords:
                if kw.arg == "max_examples" and isinstance(kw.value, ast.Constant):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_no_property_test_pins_its_number_of_examples() -> None:
    pinned = [hit for path in sorted((ROOT / "tests").rglob("*.py")) if path.name != "conftest.py"
              for hit in _pinned_examples(path)]
    assert pinned == [], ("these ignore --hypothesis-profile=explore (1500 examples): write "
                          f"max(N, settings.default.max_examples) instead: {pinned}")


WANDB_TESTS = '''
def test_fails_while_its_run_is_open(wandb_offline):
    wandb_offline.init(project="suite-check")
    assert wandb_offline.run is not None
    raise AssertionError("a failure half-way, the run still open")

def test_the_next_test_finds_no_open_run(wandb_offline):
    assert wandb_offline.run is None
'''


def test_a_failing_wandb_test_leaves_no_open_run(tmp_path: Path) -> None:
    """The `wandb_offline` fixture (conftest.py) finishes what a failing test left open."""
    (tmp_path / "test_wandb_runs.py").write_text(WANDB_TESTS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir",
                           str(tmp_path), "-p", "no:cacheprovider", "-p", "no:xdist", "-p", "conftest",
                           str(tmp_path / "test_wandb_runs.py")], capture_output=True, text=True, timeout=240,
                          env=env, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert "1 failed, 1 passed" in out and "a failure half-way" in out, out[-3000:]
