"""The shipped model (src/dequant/assets/pretrained) loads, is intact, and beats its input on held-out photos."""

from __future__ import annotations

import json

import torch

from dequant.data.io import load_split
from dequant.evaluation.runner import build_quantizer, checkpoint_cue, load_images
from dequant.evaluation.tests import build_case, image_rngs, settings
from dequant.metrics import compute_metrics
from dequant.models.exported import read_dequant_config
from dequant.models.module import load_model
from dequant.models.pretrained import MODEL_CARD, pretrained_dir, verify_pretrained


def test_the_shipped_model_is_intact_and_small() -> None:
    folder = verify_pretrained()
    weights = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    assert 0 < weights <= 20 * 1024 * 1024
    assert not list(folder.rglob("*.ckpt")) and not list(folder.rglob("*.bin"))  # safetensors only: no pickle
    card = (folder / MODEL_CARD).read_text()
    for part in ("experiment=release_cpu", "commit (of the checkout that exported it)", "LICENSES.md",
                 "network evaluations per image: 1", "per megapixel"):
        assert part in card, part


def test_nothing_shipped_names_a_machines_folders() -> None:
    for path in pretrained_dir().rglob("*"):
        if path.suffix in (".json", ".md"):
            text = path.read_text()
            for folder in ("/work/", "/tmp/", "/home/", "/root/"):
                assert folder not in text, (path.name, folder)


def test_the_shipped_split_names_the_packages_photos() -> None:
    split = load_split(pretrained_dir() / "split.json")
    names = {p.name for p in split["val"] + split["test"]}
    assert names == {"coffee.jpg", "flower.jpg", "china.jpg"}
    assert all(p.is_file() for part in split.values() for p in part)
    assert not names & {p.name for p in split["train"]}
    assert json.loads((pretrained_dir() / "dequant_config.json").read_text())["task_name"] == "release_cpu"


def test_the_shipped_model_beats_its_input_at_n4_on_two_held_out_photos() -> None:
    # The r test at N=4, texture given, at 64x64, on the shipped split's two test photos (flower, china): photos
    # the model never trained on. Its measured gain there is well above the margin asked here.
    module = load_model("pretrained")
    config = read_dequant_config(pretrained_dir())
    split = load_split(pretrained_dir() / "split.json")
    images = load_images(split["test"], 64)
    setting = next(s for s in settings("r") if s.n_colors == 4)
    ids = list(range(len(images)))
    case = build_case(setting, images, quantizer=build_quantizer(None, config), cue=checkpoint_cue(config),
                      rngs=image_rngs(0, setting, ids), seed=0)
    with torch.no_grad():
        out = module.sample(case.hints[True], sampler=module.sampler_spec, seed=0, image_ids=ids).float().clamp(0, 1)
    got = compute_metrics(out, case.target, source=case.source)
    given = compute_metrics(case.requested, case.target, source=case.source)
    gain = got["psnr"] - given["psnr"]
    assert (gain > 0.5).all(), gain
    assert (got["ssim"] > given["ssim"]).all(), (got["ssim"], given["ssim"])


def test_the_export_path_reads_the_shipped_model() -> None:
    # The shipped folder is a diffusers layout: diffusers' own loader reads the UNet it holds.
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(pretrained_dir() / "unet", local_files_only=True)
    shipped = load_model("pretrained").net.unet.state_dict()
    assert all(torch.equal(v, shipped[k]) for k, v in unet.state_dict().items())
