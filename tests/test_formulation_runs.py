"""Every formulation through the whole stack: the config group picks its sampler, training and validation, the
checkpoint remembers it, evaluate.py, dequant-edit and dequant-export use it; mismatched samplers are one-line
errors with exit code 2; extra training photos leave the held-out split alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from dequant.config import conf_dir
from dequant.data.io import load_rgb
from dequant.edit import main as edit_main
from dequant.evaluation.runner import evaluate
from dequant.export import export
from dequant.models.module import load_model
from dequant.training import train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SAMPLERS = {"noise": "ddpm_super27", "residual": "ddim", "bridge": "bridge"}


def _cfg(name: str, *overrides: str, run_dir: Path | None = None):
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        extra = [f"paths.run_dir={run_dir}"] if run_dir else []
        return compose(name, overrides=[*extra, *overrides])


@pytest.mark.parametrize("formulation", ["noise", "residual", "bridge"])
def test_each_formulation_selects_its_own_default_sampler(formulation: str, tmp_path: Path) -> None:
    cfg = _cfg("train", "experiment=tiny", f"formulation={formulation}", run_dir=tmp_path)
    assert cfg.sampler.name == DEFAULT_SAMPLERS[formulation]
    assert cfg.module.formulation._target_.endswith(f"{formulation.capitalize()}Formulation")
    # An explicit sampler still wins.
    assert _cfg("train", "experiment=tiny", "formulation=residual", "sampler=predictor",
                run_dir=tmp_path).sampler.name == "predictor"


@pytest.fixture(scope="module", params=["residual", "bridge"])
def trained(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A tiny model of each new formulation trained 2 steps (with a validation) through train()."""
    formulation = request.param
    run_dir = tmp_path_factory.mktemp(f"run_{formulation}")
    sampler = ["sampler.steps=2"] if formulation == "residual" else []
    cfg = _cfg("train", "experiment=tiny", f"formulation={formulation}", *sampler, "trainer.max_steps=2",
               "trainer.val_check_interval=2", "callbacks.model_checkpoint.every_n_train_steps=2", run_dir=run_dir)
    result = train(cfg)
    assert result["global_step"] == 2
    assert "val/psnr" in result["metrics"] and "val/psnr_input" in result["metrics"]
    return formulation, run_dir / "checkpoints" / "last.ckpt"


def test_the_checkpoint_remembers_its_formulation_and_sampler(trained) -> None:
    formulation, ckpt = trained
    module = load_model(ckpt)
    assert module.formulation.name == formulation
    assert module.sampler_spec.name == DEFAULT_SAMPLERS[formulation]


def test_evaluate_uses_the_checkpoints_formulation(trained, tiny_photos, tmp_path: Path) -> None:
    formulation, ckpt = trained
    paths = "[" + ",".join(str(p) for p in tiny_photos[:2]) + "]"
    out = evaluate(_cfg("evaluate", f"ckpt_path={ckpt}", "tests=r", "progress=false", "baselines=none",
                        f"data.paths={paths}", run_dir=tmp_path))
    text = Path(out["metrics_md"]).read_text()
    assert f"formulation: `{formulation}`" in text
    assert any(r["method"] == "model" and r["test"] == "r_tex" for r in out["rows"])


def test_dequant_edit_and_export_use_the_formulation(trained, tiny_photos, tmp_path: Path, capsys) -> None:
    formulation, ckpt = trained
    out = tmp_path / "t.png"
    code = edit_main(["transfer", str(tiny_photos[0]), "--ckpt", str(ckpt), "--colormap", "viridis", "-n", "4",
                      "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert load_rgb(out).shape == load_rgb(tiny_photos[0]).shape
    exported = load_model(export(ckpt, tmp_path / "export"))
    assert exported.formulation.name == formulation
    hint = torch.rand(1, 7, 32, 32)
    assert torch.allclose(exported.sample(hint), load_model(ckpt).sample(hint), atol=1e-5)


def test_dequant_edit_refuses_a_sampler_of_another_formulation(trained, tiny_photos, tmp_path: Path,
                                                               capsys) -> None:
    formulation, ckpt = trained
    wrong = "ddim" if formulation == "bridge" else "bridge"
    code = edit_main(["transfer", str(tiny_photos[0]), "--ckpt", str(ckpt), "--colormap", "viridis",
                      "--sampler", wrong, "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"'{wrong}' cannot sample a '{formulation}' model" in err and "choices" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("trained", ["bridge"], indirect=True)
def test_scripts_answer_a_mismatched_sampler_or_formulation_in_one_line(trained, tmp_path: Path, run_script) -> None:
    """train.py and evaluate.py as `python <script>` runs them, in this process (run_script); the last case, an
    unknown formulation, in a real process: Hydra's own composition error and exit status."""
    formulation, ckpt = trained
    cases = [
        (["train.py", "experiment=tiny", "formulation=residual", "sampler=bridge", f"hydra.run.dir={tmp_path / 'a'}"],
         "train.py: error: sampler.name: 'bridge' cannot sample a 'residual' model (formulation=residual); "
         "choices: ['predictor', 'ddpm_super27', 'ddpm', 'ddim', 'dpmsolver']"),
        (["evaluate.py", f"ckpt_path={ckpt}", "sampler=ddim", "tests=r", f"hydra.run.dir={tmp_path / 'b'}"],
         "evaluate.py: error: sampler.name: 'ddim' cannot sample a 'bridge' model (formulation=bridge); "
         "choices: ['bridge']"),
    ]
    for argv, expected in cases:
        code, _, err = run_script(*argv)
        assert code == 2, err[-2000:]
        assert err.strip().splitlines()[-1] == expected
        assert "Traceback" not in err
    proc = subprocess.run([sys.executable, "train.py", "formulation=diffusion", "--cfg", "job"], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0 and "formulation" in proc.stderr and "bridge" in proc.stderr


def test_train_only_photos_train_and_leave_the_split_alone(tiny_photos, tmp_path: Path) -> None:
    from dequant.data.datamodule import DequantDataModule
    from dequant.data.examples import ExampleMaker

    def dm(extra):
        return DequantDataModule(paths=[str(p) for p in tiny_photos], example=ExampleMaker(crop_size=16), n_val=1,
                                 n_test=1, num_workers=0, train_only_paths=extra)

    plain = dm(None)
    plain.setup()
    extra_dir = tmp_path / "extra"
    extra_dir.mkdir()
    for i, p in enumerate(tiny_photos):
        (extra_dir / f"x{i}{p.suffix}").write_bytes(p.read_bytes())
    # A held-out photo listed again as train-only stays held out.
    more = dm([str(extra_dir), str(plain.split["test"][0])])
    more.setup()
    assert more.split["val"] == plain.split["val"] and more.split["test"] == plain.split["test"]
    assert set(more.split["train"]) == set(plain.split["train"]) | set(extra_dir.iterdir())
    assert len(more._train) == len(plain._train) + len(tiny_photos)
    # The extra photos make examples like any other training photo.
    assert more._train[(0, 0, len(more._train) - 1)]["hint"].shape == (7, 16, 16)
