"""The Gradio page of `dequant-app`: wiring of components to `dequant.app.editor` (no image logic here).

Every handler returns a status line (elem_id `status`) besides its outputs; bad input shows there and leaves the
other outputs as they were, so the page keeps working. The per-session state is a small dict (photo key, N,
quantizer, the edited palette as hex, the last click), never image data. A render shows, beside the model's
result, the classical color transfer of the same request (`editor.classical_transfer`) and a table of both
results' palette obedience and kept texture (`editor.scores`).
"""

from __future__ import annotations

import functools
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from torch import Tensor

from dequant.app import editor as ed

DEFAULT_N = 8
# Rendered PNGs kept on disk for download per server; older ones are deleted (Gradio serves its own copy).
KEEP_RESULTS = 16

IMAGE_HEIGHT = 300
# Inline styles: Gradio 6 takes page CSS only at launch(), and the swatches must look right however it is launched.
_SWATCHES = "display:flex;flex-wrap:wrap;gap:6px"
_SWATCH = "width:96px;font:12px monospace;text-align:center"
_CHIP = "height:36px;border:1px solid #8888;border-radius:4px;background:{}"


def _u8(image: Tensor) -> np.ndarray:
    """`(3, H, W)` in [0, 1] -> `(H, W, 3)` uint8 for Gradio."""
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def swatches_html(source: Tensor, target: Tensor, fractions: Tensor) -> str:
    """The palette as swatches: the edited color (hex) and, under it, the photo's own color and its area share."""
    cells = []
    for i, (s, t, f) in enumerate(zip(source, target, fractions)):
        th, sh = ed.to_hex(t), ed.to_hex(s)
        moved = "" if th == sh else f"<br><span style='opacity:.6'>was {sh}</span>"
        cells.append(f"<div class='swatch' style='{_SWATCH}' title='swatch {i + 1}'>"
                     f"<div style='{_CHIP.format(th)}'></div>{i + 1}. {th}<br>{100 * float(f):.1f}%{moved}</div>")
    return f"<div class='swatches' style='{_SWATCHES}'>{''.join(cells)}</div>"


def classical_label(method: str) -> str:
    """The caption of the classical result on the page."""
    return f"Classical ({ed.CLASSICAL[method]}) — for comparison"


def comparison_markdown(model: dict[str, float], classical: dict[str, float], method: str) -> str:
    """The two results' scores (`editor.scores`) as a small table, with what each column means."""
    rows = [("the model", model), (f"classical ({ed.CLASSICAL[method]})", classical)]
    lines = ["| result | palette ΔE00 to the asked colors (lower: follows the palette) | texture kept: gradient "
             "correlation with the photo (1: all of it) |", "|---|---|---|"]
    lines += [f"| {name} | {sc['palette_de2000']:.2f} | {sc['texture_corr']:.3f} |" for name, sc in rows]
    return "\n".join(lines)


# Shown instead of the table after a region render (the comparison is of whole-palette renders).
NO_COMPARISON = "*(The classical comparison is shown for renders of the whole palette, not of a region.)*"


class Page:
    """The editor behind one running page: a photo store, a renderer, a folder for downloads."""

    def __init__(self, renderer: ed.Renderer, *, max_side: int = 1024, max_pixels: int = ed.MAX_PIXELS,
                 store_capacity: int = 8, classical: str = "reinhard") -> None:
        if classical not in ed.CLASSICAL:
            raise ValueError(f"classical must be one of {list(ed.CLASSICAL)}, got {classical!r}")
        self.renderer = renderer
        self.classical = classical
        self.max_side = max_side
        self.max_pixels = max_pixels
        self.store = ed.PhotoStore(store_capacity)
        self.samples = ed.sample_photos()
        self._results_dir = tempfile.TemporaryDirectory(prefix="dequant_app_")
        self.results_dir = Path(self._results_dir.name)
        self._results: deque[Path] = deque()

    # ------------------------------------------------------------------------------------------ state helpers
    def _photo_q(self, state: dict) -> tuple[ed.Photo, ed.Quantized]:
        photo = self.store.get(state.get("photo"))
        return photo, ed.quantize_photo(photo, state["n"], state["quantizer"])

    @staticmethod
    def _target(state: dict) -> Tensor:
        return torch.stack([ed.parse_color(c) for c in state["target"]])

    def _view(self, state: dict, selected: int = 0) -> tuple:
        """(quantized image, recolored image, swatches, swatch chooser, picker, hex box) for the state, the
        chooser, picker and hex box on swatch `selected`."""
        _, q = self._photo_q(state)
        target = self._target(state)
        choices = [f"{i + 1}. {ed.to_hex(c)}" for i, c in enumerate(target)]
        chosen = state["target"][selected]
        return (_u8(q.image), _u8(ed.recolored(q, target)), swatches_html(q.palette, target, q.fractions),
                gr.update(choices=choices, value=choices[selected]), chosen, chosen)

    def _save_result(self, image: Tensor, stem: str) -> Path:
        from dequant.data.io import save_rgb

        # A folder per result keeps the download's file name plain (photo_dequant.png) and unique.
        folder = Path(tempfile.mkdtemp(dir=self.results_dir))
        path = save_rgb(image, folder / f"{stem}_dequant.png")
        self._results.append(path)
        while len(self._results) > KEEP_RESULTS:
            old = self._results.popleft()
            old.unlink(missing_ok=True)
            old.parent.rmdir()
        return path

    # ------------------------------------------------------------------------------------------ handlers
    def load_upload(self, path: str | None, n: Any, quantizer: str, state: dict) -> tuple:
        """An uploaded photo quantized to N colors."""
        return self.load(path, None, n, quantizer, state)

    def load_sample(self, sample: str | None, n: Any, quantizer: str, state: dict) -> tuple:
        """A shipped photo quantized to N colors."""
        return self.load(None, sample, n, quantizer, state)

    def load(self, path: str | None, sample: str | None, n: Any, quantizer: str, state: dict) -> tuple:
        """A new photo (upload, else the chosen sample) quantized to N colors."""
        if path is None and not sample:
            raise ed.AppError("upload a photo or pick a shipped one")
        if path is not None:
            photo = ed.load_photo(path, "upload", self.max_side, self.max_pixels)
        else:
            if sample not in self.samples:
                raise ed.AppError(f"no shipped photo named {sample!r}")
            photo = ed.load_photo(self.samples[sample], "sample", self.max_side, self.max_pixels)
        n = ed.parse_n(n)
        if quantizer not in ed.QUANTIZERS:
            raise ed.AppError(f"quantizer must be one of {list(ed.QUANTIZERS)}, got {quantizer!r}")
        key = self.store.add(photo)
        q = ed.quantize_photo(photo, n, quantizer)
        state = {"photo": key, "n": n, "quantizer": quantizer, "target": [ed.to_hex(c) for c in q.palette],
                 "click": None}
        h, w = photo.full.shape[-2:]
        msg = f"{photo.name}: {w}x{h}, {q.n_colors} colors"
        return (msg, state, _u8(photo.work), *self._view(state), None, None, None, None, "")

    def requantize(self, n: Any, quantizer: str, state: dict) -> tuple:
        """The same photo with another N or quantizer (the palette edits start over; kept when neither changed,
        as when the N box merely loses focus)."""
        n = ed.parse_n(n)
        photo = self.store.get(state.get("photo"))
        if quantizer not in ed.QUANTIZERS:
            raise ed.AppError(f"quantizer must be one of {list(ed.QUANTIZERS)}, got {quantizer!r}")
        if (state.get("n"), state.get("quantizer")) == (n, quantizer):
            return ("", state, *self._view(state))
        state = {**state, "n": n, "quantizer": quantizer, "click": None}
        q = ed.quantize_photo(photo, n, quantizer)
        state["target"] = [ed.to_hex(c) for c in q.palette]
        return (f"{q.n_colors} colors", state, *self._view(state))

    def pick_swatch(self, choice: str | None, state: dict) -> tuple:
        """The chosen swatch's color into the picker and hex box."""
        i = self._swatch_index(choice, state)
        color = state["target"][i]
        return ("", color, color)

    @staticmethod
    def _swatch_index(choice: str | None, state: dict) -> int:
        if not state.get("target"):
            raise ed.AppError("no photo loaded: upload or pick one")
        try:
            i = int(str(choice).split(".")[0]) - 1
        except ValueError:
            raise ed.AppError(f"no swatch {choice!r}") from None
        if not 0 <= i < len(state["target"]):
            raise ed.AppError(f"no swatch {choice!r}")
        return i

    def set_swatch(self, choice: str | None, color: str, state: dict) -> tuple:
        """Swatch `choice` takes `color` (hex or a picker's rgb())."""
        i = self._swatch_index(choice, state)
        new = ed.to_hex(ed.parse_color(color, "swatch color"))
        target = list(state["target"])
        target[i] = new
        state = {**state, "target": target}
        return (f"swatch {i + 1} is now {new}", state, *self._view(state, selected=i))

    def _set_target(self, state: dict, target: Tensor, msg: str) -> tuple:
        state = {**state, "target": [ed.to_hex(c) for c in target]}
        return (msg, state, *self._view(state))

    def from_photo(self, path: str | None, score: str, state: dict) -> tuple:
        """The palette of a second photo, matched by `score`."""
        if path is None:
            raise ed.AppError("upload the photo whose palette to take")
        _, q = self._photo_q(state)
        other = ed.load_photo(path, "palette photo", self.max_side, self.max_pixels)
        target = ed.palette_from_photo(q, other.work, state["quantizer"], score)
        return self._set_target(state, target, f"palette of {other.name} (score {score})")

    def from_colormap(self, name: str, state: dict) -> tuple:
        """The palette of a colormap (cmap score)."""
        _, q = self._photo_q(state)
        return self._set_target(state, ed.palette_from_colormap(q, name), f"colormap {name} (score cmap)")

    def shift(self, hue: float, sat: float, val: float, state: dict) -> tuple:
        """The whole edited palette shifted in H, S and V."""
        self._photo_q(state)
        target = ed.shift_palette(self._target(state), hue, sat, val)
        return self._set_target(state, target, f"palette shifted: hue {hue:+.2f}, saturation x{sat:.2f}, "
                                               f"value x{val:.2f}")

    def reset(self, state: dict) -> tuple:
        """Back to the photo's own palette."""
        _, q = self._photo_q(state)
        return self._set_target(state, q.palette, "palette reset to the photo's")

    def click(self, mode: str, grow: float, tolerance: float, color: str, state: dict,
              evt: gr.SelectData) -> tuple:
        """A click on the photo: the region it selects, shown over the photo."""
        x, y = (int(v) for v in evt.index[:2])
        state = {**state, "click": [x, y]}
        return self.region(mode, grow, tolerance, color, state)

    def region(self, mode: str, grow: float, tolerance: float, color: str, state: dict) -> tuple:
        """The region of the last click under the current region settings."""
        if not state.get("click"):
            raise ed.AppError("click a point on the photo first")
        photo, q = self._photo_q(state)
        mask = ed.region_mask(photo, q, *state["click"], mode, int(grow), float(tolerance))
        fill = ed.parse_color(color, "region color")
        shown = ed.mask_overlay(photo.work, mask, fill)
        x, y = state["click"]
        share = 100 * float(mask.float().mean())
        return (f"region at ({x}, {y}): {share:.1f}% of the photo", state, _u8(shown))

    def _options(self, cue: bool, sampler: str, steps: Any, seed: Any, start: Any, guidance: Any,
                 post_l: bool) -> ed.RenderOptions:
        def num(value: Any, name: str, kind: Callable = int) -> Any:
            if value is None or value == "":
                return None
            try:
                f = float(value)
            except (TypeError, ValueError):
                raise ed.AppError(f"{name} must be a number, got {value!r}") from None
            if kind is int and not f.is_integer():
                raise ed.AppError(f"{name} must be a whole number, got {value!r}")
            return kind(f)

        steps_v = num(steps, "steps")
        if steps_v is not None and steps_v < 1:
            raise ed.AppError(f"steps must be at least 1, got {steps_v}")
        start_v = num(start, "SDEdit start")
        if start_v is not None and start_v < 0:
            raise ed.AppError(f"SDEdit start must be at least 0, got {start_v}")
        return ed.RenderOptions(cue=bool(cue), sampler=None if sampler.startswith("checkpoint") else sampler,
                                steps=steps_v, seed=num(seed, "seed") or 0, start_step=start_v,
                                guidance=num(guidance, "guidance", float), post_l=bool(post_l))

    def render(self, cue: bool, sampler: str, steps: Any, seed: Any, start: Any, guidance: Any, post_l: bool,
               state: dict, progress: Any = gr.Progress()) -> tuple:  # noqa: B008 - Gradio injects it
        """The photo in the edited palette, rendered by the model at its own size; beside it the classical
        transfer of the same request at the same size, and both results' scores."""
        opts = self._options(cue, sampler, steps, seed, start, guidance, post_l)
        photo, q = self._photo_q(state)
        target = self._target(state)
        report = None if progress is None else (lambda f: progress(f, desc="sampling"))
        out = self.renderer.transfer(photo, q, target, state["n"], opts, report)
        path = self._save_result(out, Path(photo.name).stem)
        if progress is not None:
            progress(0.99, desc=f"classical transfer ({ed.CLASSICAL[self.classical]})")
        classical = ed.classical_transfer(photo, q, target, self.classical)
        table = comparison_markdown(ed.scores(photo, q, target, out), ed.scores(photo, q, target, classical),
                                    self.classical)
        h, w = out.shape[-2:]
        return (f"rendered at {w}x{h}", _u8(photo.full_float), _u8(out), str(path), _u8(classical), table)

    def render_region(self, mode: str, grow: float, tolerance: float, color: str, cue: bool, sampler: str,
                      steps: Any, seed: Any, start: Any, guidance: Any, post_l: bool, state: dict,
                      progress: Any = gr.Progress()) -> tuple:  # noqa: B008 - Gradio injects it
        """Only the clicked region recolored, rendered and pasted back into the photo."""
        opts = self._options(cue, sampler, steps, seed, start, guidance, post_l)
        if not state.get("click"):
            raise ed.AppError("click a point on the photo first")
        photo, q = self._photo_q(state)
        mask = ed.region_mask(photo, q, *state["click"], mode, int(grow), float(tolerance))
        fill = ed.parse_color(color, "region color")
        report = None if progress is None else (lambda f: progress(f, desc="sampling"))
        out = self.renderer.recolor(photo, mask, fill, opts, report)
        path = self._save_result(out, Path(photo.name).stem + "_region")
        h, w = out.shape[-2:]
        return (f"region rendered at {w}x{h}", _u8(photo.full_float), _u8(out), str(path), None, NO_COMPARISON)


def _guarded(fn: Callable[..., tuple], n_outputs: int) -> Callable[..., tuple]:
    """Run a handler; on AppError show its message and leave every other output as it was."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> tuple:
        try:
            return fn(*args, **kwargs)
        except ed.AppError as err:
            return (f"⚠ {err}", *[gr.update() for _ in range(n_outputs - 1)])

    return run


def _image(label: str, elem_id: str) -> gr.Image:
    """An output image, shown as PNG (exact palette colors) at a fixed height."""
    return gr.Image(label=label, type="numpy", format="png", interactive=False, height=IMAGE_HEIGHT,
                    elem_id=elem_id)


def build(page: Page) -> Any:
    """The gr.Blocks of the palette editor (analytics off; no external fonts or scripts needed)."""
    samplers = [f"checkpoint's ({page.renderer.default_sampler})", "ddpm_super27", "ddpm", "ddim", "dpmsolver",
                "predictor", "bridge"]
    cue_mode = page.renderer.cue_mode
    with gr.Blocks(title="dequant palette editor", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        state = gr.State({})
        gr.Markdown("## dequant palette editor\nUpload a photo (or pick a shipped one), edit its palette, and let "
                    f"the model render the photo in the new colors. Model cue: **{cue_mode}**.")
        status = gr.Markdown("", elem_id="status")
        with gr.Row():
            with gr.Column(scale=1, min_width=240):
                upload = gr.UploadButton("Upload a photo", file_types=["image"], type="filepath",
                                         variant="primary", elem_id="upload")
                sample = gr.Dropdown(choices=list(page.samples), value=None, label="or a shipped photo",
                                     elem_id="sample")
                n = gr.Number(value=DEFAULT_N, precision=None, label=f"N colors ({ed.N_MIN}-{ed.N_MAX})",
                              elem_id="n")
                quantizer = gr.Dropdown(choices=list(ed.QUANTIZERS), value="median cut", label="quantizer")
            with gr.Column(scale=4):
                with gr.Row():
                    source = _image("photo (click: select a region)", "source")
                    quantized = _image("quantized", "quantized")
                    recolor_img = _image("recolored: the model's color input", "recolored")
        swatches = gr.HTML("", elem_id="swatches")
        with gr.Tabs():
            with gr.Tab("Edit the palette"):
                with gr.Row():
                    swatch = gr.Dropdown(choices=[], label="swatch", elem_id="swatch")
                    picker = gr.ColorPicker(label="color picker", elem_id="picker")
                    hex_box = gr.Textbox(label="hex code", placeholder="#c0392b", elem_id="hex")
                    set_btn = gr.Button("Set swatch", elem_id="set-swatch")
                with gr.Row():
                    score = gr.Dropdown(choices=list(ed.PHOTO_SCORES), value="color", label="matching score")
                    other = gr.UploadButton("Take the palette of a second photo", file_types=["image"],
                                            type="filepath", elem_id="other")
                with gr.Row():
                    cmap = gr.Dropdown(choices=list(ed.COLORMAPS), value="viridis", label="colormap")
                    cmap_btn = gr.Button("Use the colormap (cmap score)")
                with gr.Row():
                    hue = gr.Slider(-0.5, 0.5, value=0.0, step=0.01, label="hue turn")
                    sat = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="saturation x")
                    val = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="value x")
                    shift_btn = gr.Button("Shift the palette")
                reset_btn = gr.Button("Reset to the photo's palette", size="sm")
            with gr.Tab("Recolor a region"):
                gr.Markdown("Click the photo above: the region follows the clicked palette color (connected "
                            "pixels of that color, holes filled), grown or shrunk by the slider; similar colors "
                            "join with a tolerance. Superpixel: the SLIC segment under the click.")
                with gr.Row():
                    mode = gr.Radio(choices=list(ed.REGION_MODES), value="palette color", label="region")
                    grow = gr.Slider(-20, 20, value=0, step=1, label="grow (+) / shrink (-), pixels")
                    tol = gr.Slider(0, 40, value=10, step=1, label="color tolerance (CIELab)")
                    region_color = gr.ColorPicker(value="#c0392b", label="new color", elem_id="region-color")
                region_img = _image("region", "region")
                region_btn = gr.Button("Render the region", variant="primary", elem_id="render-region")
        with gr.Accordion("Render settings", open=False):
            with gr.Row():
                cue = gr.Checkbox(value=cue_mode != "none", label=f"texture cue ({cue_mode})",
                                  interactive=cue_mode != "none")
                sampler = gr.Dropdown(choices=samplers, value=samplers[0], label="sampler")
                steps = gr.Number(value=None, precision=0, label="steps (blank: the sampler's)")
                seed = gr.Number(value=0, precision=0, label="seed")
                start = gr.Number(value=None, precision=0, label="SDEdit start step (blank: the checkpoint's)")
                guidance = gr.Number(value=None, label="guidance (blank: the checkpoint's)")
                post_l = gr.Checkbox(value=False, label="post-L (the photo's lightness)" if cue_mode == "L" else
                                     "post-L (needs a model trained with the L cue)", interactive=cue_mode == "L")
        render_btn = gr.Button("Render with the model", variant="primary", elem_id="render")
        with gr.Row():
            before = _image("source", "before")
            after = _image("result (the model)", "result")
            classical_img = _image(classical_label(page.classical), "classical")
        comparison = gr.Markdown("", elem_id="comparison")
        download = gr.File(label="download (the model's result, PNG at the photo's own size)", interactive=False,
                           elem_id="download")

        def on(event: Callable, fn: Callable, inputs: list, outputs: list, **kwargs: Any) -> None:
            event(_guarded(fn, len(outputs)), inputs, outputs, **kwargs)

        view = [quantized, recolor_img, swatches, swatch, picker, hex_box]
        load_out = [status, state, source, *view, before, after, region_img, classical_img, comparison]
        on(upload.upload, page.load_upload, [upload, n, quantizer, state], load_out)
        on(sample.input, page.load_sample, [sample, n, quantizer, state], load_out)
        palette_out = [status, state, *view]
        on(n.submit, page.requantize, [n, quantizer, state], palette_out)
        on(n.blur, page.requantize, [n, quantizer, state], palette_out)
        on(quantizer.input, page.requantize, [n, quantizer, state], palette_out)
        on(swatch.input, page.pick_swatch, [swatch, state], [status, picker, hex_box])
        on(picker.input, page.set_swatch, [swatch, picker, state], palette_out)
        on(set_btn.click, page.set_swatch, [swatch, hex_box, state], palette_out)
        on(hex_box.submit, page.set_swatch, [swatch, hex_box, state], palette_out)
        on(other.upload, page.from_photo, [other, score, state], palette_out)
        on(cmap_btn.click, page.from_colormap, [cmap, state], palette_out)
        on(shift_btn.click, page.shift, [hue, sat, val, state], palette_out)
        on(reset_btn.click, page.reset, [state], palette_out)

        region_in = [mode, grow, tol, region_color, state]
        on(source.select, page.click, region_in, [status, state, region_img])
        for control in (mode, grow, tol, region_color):
            on(control.input, page.region, region_in, [status, state, region_img])

        settings = [cue, sampler, steps, seed, start, guidance, post_l]
        results = [status, before, after, download, classical_img, comparison]
        on(render_btn.click, page.render, [*settings, state], results, concurrency_limit=1)
        on(region_btn.click, page.render_region, [*region_in[:4], *settings, state], results, concurrency_limit=1)
    return demo
