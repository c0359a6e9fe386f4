"""dequant-app without a browser: the editor's logic, the page's handlers (bad input -> a message, the page keeps
working), the time limit, bounded memory over many uploads, the console script's errors and host warning."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dequant.app import editor as ed
from dequant.color.matching import colormap_palette
from dequant.data.io import load_rgb

gr = pytest.importorskip("gradio")

from dequant.app.page import KEEP_RESULTS, Page, _guarded, _u8  # noqa: E402 - needs gradio


@pytest.fixture(scope="module")
def renderer(tiny_ckpt: Path) -> ed.Renderer:
    return ed.Renderer(tiny_ckpt, time_limit=120)


@pytest.fixture
def page(renderer: ed.Renderer) -> Page:
    return Page(renderer, max_side=128, store_capacity=3)


def _loaded(page: Page, photo: Path, n: int = 6) -> dict:
    out = page.load_upload(str(photo), n, "median cut", {})
    assert "colors" in out[0]
    return out[1]


def test_read_photo_refuses_oversized_uploads_from_the_header(tmp_path: Path, monkeypatch) -> None:
    big = tmp_path / "big.png"
    Image.new("1", (5000, 4200)).save(big)  # 21 megapixels, a few kB on disk
    decoded = []
    monkeypatch.setattr("dequant.data.io.load_rgb", lambda p: decoded.append(p))
    with pytest.raises(ed.AppError, match=r"21\.0 megapixels, over the limit of 20"):
        ed.read_photo(big)
    assert not decoded, "an oversized upload must not be decoded"


def test_read_photo_names_unreadable_files(tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ed.AppError, match="upload notes.png: not a readable image"):
        ed.read_photo(bad)
    truncated = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "ok.png")
    truncated.write_bytes((tmp_path / "ok.png").read_bytes()[:60])
    with pytest.raises(ed.AppError, match="not a readable image"):
        ed.read_photo(truncated)


@pytest.mark.parametrize("value", [1, 65, 2.5, "abc", None, ""])
def test_n_out_of_range_is_refused(value) -> None:
    with pytest.raises(ed.AppError, match="N must be a whole number from 2 to 64"):
        ed.parse_n(value)


def test_n_and_colors_parse() -> None:
    assert ed.parse_n(2) == 2 and ed.parse_n(64.0) == 64 and ed.parse_n("16") == 16
    assert ed.to_hex(ed.parse_color("#c0392b")) == "#c0392b"
    assert ed.to_hex(ed.parse_color("rgb(192, 57, 43)")) == "#c0392b"
    assert ed.to_hex(ed.parse_color("rgba(192, 57, 43, 1)")) == "#c0392b"
    for bad in ("#zz0000", "c0392", "#c0392b,#ffffff", "rgb(300, 0, 0)", ""):
        with pytest.raises(ed.AppError, match="is not a color"):
            ed.parse_color(bad)


def test_sample_photos_are_the_shipped_ones() -> None:
    samples = ed.sample_photos()
    assert {"chelsea.jpg", "coffee.jpg", "mate_orange_flower.jpg", "scipy_raccoon_face.jpg"} <= set(samples)
    assert all(p.is_file() for p in samples.values())


def test_store_keeps_memory_bounded_over_many_uploads(page: Page, tiny_photos: list[Path]) -> None:
    states = [_loaded(page, tiny_photos[i % 3]) for i in range(12)]
    assert len(page.store) == 3
    for photo in page.store._photos.values():
        assert len(photo.quantized) <= 1
    msg, *rest = _guarded(page.reset, 8)(states[0])
    assert "no photo loaded" in msg and all(r == gr.update() for r in rest)
    assert "palette reset" in page.reset(states[-1])[0]


def test_palette_edits_update_the_color_input_without_the_model(page: Page, tiny_photos: list[Path],
                                                                 monkeypatch) -> None:
    monkeypatch.setattr(ed.Renderer, "run", lambda *a, **k: pytest.fail("palette edits must not run the model"))
    state = _loaded(page, tiny_photos[0])
    _, state, quantized, recolored, swatches, *_ = page.requantize(6, "k-means (Lab)", state)
    assert np.array_equal(quantized, recolored)
    assert "%" in swatches and swatches.count("<div style=") == 6
    msg, state, _, recolored2, swatches, chooser, picker, hex_box = page.set_swatch("2. #000000", "#00ff00", state)
    assert msg == "swatch 2 is now #00ff00" and picker == hex_box == "#00ff00" and state["target"][1] == "#00ff00"
    assert "#00ff00" in swatches and chooser["value"].startswith("2.")
    changed = np.any(recolored2 != recolored, axis=-1)
    assert changed.any() and (recolored2[changed] == [0, 255, 0]).all()

    other = str(tiny_photos[1])
    for score in ed.PHOTO_SCORES:
        msg, moved, *_ = page.from_photo(other, score, state)
        assert score in msg and len(moved["target"]) == 6
    msg, cm, *_ = page.from_colormap("viridis", state)
    viridis = {ed.to_hex(c) for c in colormap_palette("viridis", 6)}
    assert set(cm["target"]) <= viridis and "cmap" in msg
    _, shifted, *_ = page.shift(0.0, 0.0, 1.0, state)  # saturation 0: every swatch gray
    for hexcode in shifted["target"]:
        r, g, b = ed.parse_color(hexcode)
        assert abs(float(r) - float(g)) < 0.01 and abs(float(g) - float(b)) < 0.01


def test_bad_input_shows_a_message_and_changes_nothing(page: Page, tiny_photos: list[Path],
                                                       tmp_path: Path) -> None:
    state = _loaded(page, tiny_photos[0])
    bad_file = tmp_path / "bad.jpg"
    bad_file.write_bytes(b"\x00" * 100)
    cases = {
        "not a readable image": (page.load_upload, 14, (str(bad_file), 6, "median cut", state)),
        "N must be": (page.requantize, 8, (80, "median cut", state)),
        "is not a color": (page.set_swatch, 8, ("1. #000000", "#12345g", state)),
        "no swatch": (page.set_swatch, 8, ("9. #000000", "#123456", state)),
        "score must be": (page.from_photo, 8, (str(tiny_photos[1]), "bogus", state)),
        "click a point": (page.region, 3, ("palette color", 0, 10, "#ff0000", state)),
        "steps must be at least 1": (page.render, 6, (True, "checkpoint's", 0, 0, None, None, False, state, None)),
        "sampler settings": (page.render, 6, (True, "ddim", 2, 0, 5, None, False, state, None)),
    }
    for expected, (fn, n_out, args) in cases.items():
        out = _guarded(fn, n_out)(*args)
        assert expected in out[0], (expected, out[0])
        assert len(out) == n_out and all(o == gr.update() for o in out[1:])
    state = page.set_swatch("1. #000000", "#123456", state)[1]
    assert page.requantize(6, "median cut", state)[1]["target"][0] == "#123456", "same N: the edits stay"
    assert page.requantize(7, "median cut", state)[1]["target"][0] != "#123456", "new N: a new palette"


def test_render_is_the_models_output_at_the_photos_own_size(renderer: ed.Renderer, tiny_photos: list[Path],
                                                             monkeypatch) -> None:
    """A photo larger than max_side: the model gets the edited palette's color input at the working size, and the
    page shows and saves exactly the model's output resized back to the photo's own size."""
    from dequant.color.hint import COLOR
    from dequant.edit import resize

    page = Page(renderer, max_side=48)  # the 72x48 photo is edited at 48x32
    state = _loaded(page, tiny_photos[0])
    msg, state, _, recolored_view, *_ = page.set_swatch("1. x", "#ff00ff", state)
    seen = []
    real_run = ed.Renderer.run
    monkeypatch.setattr(ed.Renderer, "run", lambda self, h, *a, **k: seen.append((h, real_run(self, h, *a, **k)))
                        or seen[-1][1])
    calls = []
    msg, before, after, path, classical, table = page.render(True, "checkpoint's", None, 3, None, None, False,
                                                             state, progress=lambda f, desc=None: calls.append(f))
    photo = load_rgb(tiny_photos[0])
    assert msg == "rendered at 72x48" and after.shape == before.shape == (48, 72, 3)
    assert calls and all(0 < f < 1 for f in calls)
    (hint, output), = seen
    assert hint.shape == (7, 32, 48) and output.shape == (3, 32, 48)
    # The color input is the recolored image the page shows (swatch 1 now #ff00ff) ...
    assert np.array_equal(_u8(hint[COLOR]), recolored_view)
    assert (recolored_view == [255, 0, 255]).all(axis=-1).any()
    # ... and the result is the model's output resized back, on the page and in the downloaded PNG.
    expected = resize(output, 48, 72)
    assert np.array_equal(after, _u8(expected))
    assert torch.equal(load_rgb(path), torch.from_numpy(_u8(expected)).permute(2, 0, 1).float() / 255)
    assert np.array_equal(before, _u8(photo))
    again = page.render(True, "checkpoint's", None, 3, None, None, False, state, progress=None)[2]
    assert np.array_equal(after, again), "a render is seeded"
    # Beside it the classical transfer of the same request, also at the photo's own size.
    assert classical.shape == after.shape and not np.array_equal(classical, after)
    assert "the model" in table and "classical (Reinhard, Lab)" in table


def test_the_classical_transfer_is_reinhards_of_the_request_at_the_photos_size(renderer: ed.Renderer,
                                                                                tiny_photos: list[Path]) -> None:
    """The comparison beside the model's render: Reinhard's transfer in CIELab of the photo at its own size to the
    statistics of the requested (recolored quantized) image, as the evaluation runs that baseline, and both
    results' palette obedience and kept texture measured at the working size."""
    from dequant.evaluation.baselines import reinhard_transfer

    page = Page(renderer, max_side=48)  # the 72x48 photo is edited at 48x32
    state = _loaded(page, tiny_photos[0])
    for i, color in enumerate(("#ff00ff", "#00c0ff", "#f0e020")):
        state = page.set_swatch(f"{i + 1}. x", color, state)[1]
    msg, before, after, path, classical, table = page.render(True, "checkpoint's", None, 0, None, None, False,
                                                             state, progress=None)
    photo = page.store.get(state["photo"])
    q = ed.quantize_photo(photo, state["n"], state["quantizer"])
    target = page._target(state)
    requested = ed.recolored(q, target)
    assert requested.shape[-2:] == (32, 48)
    expected = reinhard_transfer(load_rgb(tiny_photos[0]), requested, space="lab")
    assert expected.shape[-2:] == (48, 72) and classical.shape == after.shape == (48, 72, 3)
    assert np.abs(classical.astype(int) - _u8(expected).astype(int)).max() <= 1
    assert np.abs(classical.astype(int) - after.astype(int)).mean() > 1, "the classical image is the model's"
    assert classical.dtype == np.uint8
    # The table holds both results' scores, those of editor.scores.
    model_scores = ed.scores(photo, q, target, torch.from_numpy(after).permute(2, 0, 1).float() / 255)
    classical_scores = ed.scores(photo, q, target, expected)
    rows = {line.split("|")[1].strip(): [float(v) for v in line.split("|")[2:4]]
            for line in table.splitlines()[2:]}
    assert set(rows) == {"the model", "classical (Reinhard, Lab)"}
    assert rows["the model"] == pytest.approx([model_scores["palette_de2000"], model_scores["texture_corr"]],
                                              abs=0.01)
    assert rows["classical (Reinhard, Lab)"] == pytest.approx(
        [classical_scores["palette_de2000"], classical_scores["texture_corr"]], abs=0.01)
    # A new photo clears the comparison.
    loaded = page.load_upload(str(tiny_photos[1]), 6, "median cut", state)
    assert loaded[-2] is None and loaded[-1] == ""


def test_scores_measure_palette_obedience_and_kept_texture(renderer: ed.Renderer, tiny_photos: list[Path]) -> None:
    page = Page(renderer, max_side=128)  # edited at the photo's own size
    state = _loaded(page, tiny_photos[0])
    state = page.set_swatch("1. x", "#ff00ff", state)[1]
    photo = page.store.get(state["photo"])
    q = ed.quantize_photo(photo, state["n"], state["quantizer"])
    target = page._target(state)
    asked = ed.scores(photo, q, target, ed.recolored(q, target))
    assert asked["palette_de2000"] < 0.01, "the requested image itself follows the palette exactly"
    unchanged = ed.scores(photo, q, target, photo.full_float)
    assert unchanged["texture_corr"] > 0.999 and unchanged["palette_de2000"] > 5
    ot = ed.classical_transfer(photo, q, target, "ot")
    assert ot.shape == photo.full_float.shape and not torch.equal(ot, ed.classical_transfer(photo, q, target))
    with pytest.raises(ed.AppError, match="classical transfer must be one of"):
        ed.classical_transfer(photo, q, target, "bogus")
    with pytest.raises(ValueError, match="classical must be one of"):
        Page(renderer, classical="bogus")


def test_the_page_keeps_the_last_16_results(page: Page, tiny_photos: list[Path], monkeypatch) -> None:
    monkeypatch.setattr(ed.Renderer, "transfer", lambda self, photo, *a, **k: photo.full_float)
    state = _loaded(page, tiny_photos[0])
    paths = [Path(page.render(True, "checkpoint's", None, 0, None, None, False, state, progress=None)[3])
             for _ in range(KEEP_RESULTS + 3)]
    kept = sorted(page.results_dir.rglob("*.png"))
    assert KEEP_RESULTS == 16 and kept == sorted(paths[3:])
    assert not any(p.exists() or p.parent.exists() for p in paths[:3])


def test_the_model_renders_one_request_at_a_time(renderer: ed.Renderer, tiny_photos: list[Path],
                                                 monkeypatch) -> None:
    """A photo render and a region render asked for at once (two sessions): the model runs them one after the
    other (the page's queue also runs each kind one at a time: tests/test_app_browser.py)."""
    import threading
    import time

    page = Page(renderer, max_side=128)
    state = _loaded(page, tiny_photos[0])
    state = page.click("palette color", 0, 0, "#00ff00", state, types.SimpleNamespace(index=[36, 24]))[1]
    spans = []
    real = renderer.model.render

    def slow(*args, **kwargs):
        start = time.monotonic()
        time.sleep(0.3)
        try:
            return real(*args, **kwargs)
        finally:
            spans.append((start, time.monotonic()))

    monkeypatch.setattr(renderer.model, "render", slow)
    jobs = [threading.Thread(target=page.render, args=(True, "checkpoint's", None, 0, None, None, False, state),
                             kwargs={"progress": None}),
            threading.Thread(target=page.render_region, args=("palette color", 0, 0, "#00ff00", True,
                                                              "checkpoint's", None, 0, None, None, False, state),
                             kwargs={"progress": None})]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=120)
    (a_start, a_end), (b_start, b_end) = sorted(spans)
    assert a_end <= b_start, f"two renders ran at once: {spans}"


def test_region_follows_the_clicked_color_and_is_pasted_back(page: Page, tiny_photos: list[Path],
                                                            monkeypatch) -> None:
    state = _loaded(page, tiny_photos[0])
    click = types.SimpleNamespace(index=[36, 24])
    msg, state, overlay = page.click("palette color", 0, 0, "#00ff00", state, click)
    assert msg.startswith("region at (36, 24)") and overlay.shape == (48, 72, 3)
    small = float(page.region("palette color", 0, 0, "#00ff00", state)[0].split(": ")[1].split("%")[0])
    big = float(page.region("palette color", 3, 0, "#00ff00", state)[0].split(": ")[1].split("%")[0])
    assert small < big
    photo_state = page.store.get(state["photo"])
    q = ed.quantize_photo(photo_state, state["n"], state["quantizer"])
    mask = ed.region_mask(photo_state, q, 36, 24, "palette color", 0, 0)
    seen = []
    real_run = ed.Renderer.run
    monkeypatch.setattr(ed.Renderer, "run", lambda self, h, *a, **k: seen.append((h, real_run(self, h, *a, **k)))
                        or seen[-1][1])
    out = page.render_region("palette color", 0, 0, "#00ff00", True, "checkpoint's", None, 0, None, None, False,
                             state, progress=None)
    assert out[0] == "region rendered at 72x48"
    assert out[4] is None and "not of a region" in out[5], "no classical comparison for a region render"
    result, photo = load_rgb(out[3]), load_rgb(tiny_photos[0])
    from scipy import ndimage

    from dequant.color.hint import COLOR

    (hint, output), = seen
    # The model got the region filled with the chosen color; the photo's own colors elsewhere.
    assert (hint[COLOR][:, mask] == torch.tensor([0.0, 1.0, 0.0])[:, None]).all()
    assert torch.equal(hint[COLOR][:, ~mask], photo[:, ~mask])
    outside = ~torch.from_numpy(ndimage.binary_dilation(mask.numpy(), iterations=3))
    assert torch.equal(result[:, outside], photo[:, outside]), "outside the region the photo is kept"
    # Everywhere the result is the model's output over the region and the photo elsewhere, blended over a Gaussian
    # edge (std half a pixel of the working image, which is the photo's size here), to the PNG's 8 bits.
    import cv2

    alpha = torch.from_numpy(cv2.GaussianBlur(mask.numpy().astype(np.float32), (0, 0), sigmaX=0.5,
                                              borderType=cv2.BORDER_REPLICATE))[None]
    assert bool((alpha[:, mask] > 0.5).all())
    expected = (alpha * output + (1 - alpha) * photo).clamp(0, 1)
    assert float((result - expected).abs().max()) <= 0.5 / 255 + 1e-6


def test_every_render_has_a_time_limit(tiny_ckpt: Path, tiny_photos: list[Path]) -> None:
    slow = Page(ed.Renderer(tiny_ckpt, time_limit=1e-9), max_side=128)
    state = _loaded(slow, tiny_photos[0])
    out = _guarded(slow.render, 6)(True, "checkpoint's", None, 0, None, None, False, state, None)
    assert "time limit" in out[0]
    slow.renderer.time_limit = 120.0  # the page keeps working after a stopped render
    assert slow.render(True, "checkpoint's", None, 0, None, None, False, state, progress=None)[0].startswith(
        "rendered")


def test_cli_bad_checkpoint_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    from dequant.app.cli import main

    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a checkpoint")
    for ckpt in (bad, tmp_path / "missing.ckpt"):
        assert main(["--ckpt", str(ckpt)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("dequant-app: error: --ckpt")
    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt", str(bad), "--port", "0"])
    assert exit_info.value.code == 2 and "--port" in capsys.readouterr().err


def test_cli_listens_locally_unless_told_and_warns(monkeypatch, capsys) -> None:
    from dequant.app import cli

    launched = []
    demo = types.SimpleNamespace(queue=lambda **k: None, launch=lambda **k: launched.append(k))
    monkeypatch.setattr(cli, "make_page", lambda args: (None, demo))
    assert cli.main(["--ckpt", "x.ckpt"]) == 0
    assert launched[-1]["server_name"] == "127.0.0.1" and "warning" not in capsys.readouterr().err
    assert cli.main(["--ckpt", "x.ckpt", "--host", "0.0.0.0", "--port", "8000"]) == 0
    assert launched[-1]["server_name"] == "0.0.0.0" and launched[-1]["server_port"] == 8000
    err = capsys.readouterr().err
    assert "warning" in err and "anyone" in err


def test_dequant_edit_recolor_takes_the_same_region_choice(tiny_ckpt: Path, tiny_photos: list[Path],
                                                           tmp_path: Path, capsys) -> None:
    from dequant.edit import main

    photo = load_rgb(tiny_photos[2])  # astronaut, 40x40
    common = ["recolor", str(tiny_photos[2]), "--ckpt", str(tiny_ckpt), "--point", "20,20", "--color", "#00ff00"]
    changed = {}
    for name, extra in (("superpixel", []), ("color", ["--region", "color", "--tolerance", "10"]),
                        ("grown", ["--region", "color", "--tolerance", "10", "--grow", "2"])):
        out = tmp_path / f"{name}.png"
        assert main([*common, *extra, "-o", str(out)]) == 0, capsys.readouterr().err
        changed[name] = int(((load_rgb(out) - photo).abs().amax(dim=0) > 0).sum())
    assert 0 < changed["color"] < changed["grown"]
    capsys.readouterr()
    for bad, expected in ((["--region", "color", "--grow", "-40"], "leaves nothing"),
                          (["--grow", "2"], "only applies to --region color"),
                          (["--region", "color", "--tolerance", "-1"], "--tolerance must be")):
        assert main([*common, *bad, "-o", str(tmp_path / "bad.png")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err
    assert main(["recolor", str(tiny_photos[2]), "--ckpt", str(tiny_ckpt), "--mask", str(tiny_photos[2]),
                 "--region", "color", "--color", "#00ff00", "-o", str(tmp_path / "bad.png")]) == 2
    assert "applies to --point" in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()
