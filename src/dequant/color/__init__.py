"""The pure color core of dequant: quantizers, texture cues, hints, masks, palette matching and edits.

Depends on torch, numpy, scipy, kornia, Pillow, OpenCV, scikit-image and matplotlib only: never on Lightning, Hydra,
diffusers or wandb, so a notebook can import it alone.
"""

from dequant.color.colorspace import hsv_to_rgb, lab_to_rgb, rgb_to_gray255, rgb_to_hsv, rgb_to_lab
from dequant.color.cues import CUE_MODES, TextureCue, neutral_value, texture_cue
from dequant.color.edits import HSVShift, apply_hsv_shift, hsv_edit, hsv_params, post_l
from dequant.color.hint import COLOR, COLOR_IND, CUE, HINT_CHANNELS, TEX_IND, fill_mask, hint, split_hint
from dequant.color.masks import SEGMENTERS, mask_from_point, patch_mask, segment
from dequant.color.matching import (SCORES, colormap_palette, match_palettes, palette_from_hex, score_matrix,
                                    transfer)
from dequant.color.quantize import Quantized, Quantizer, quantize

__all__ = [
    "COLOR", "COLOR_IND", "CUE", "CUE_MODES", "HINT_CHANNELS", "SCORES", "SEGMENTERS", "TEX_IND", "HSVShift",
    "Quantized", "Quantizer", "TextureCue", "apply_hsv_shift", "colormap_palette", "fill_mask", "hint", "hsv_edit",
    "hsv_params", "hsv_to_rgb", "lab_to_rgb", "mask_from_point", "match_palettes", "neutral_value",
    "palette_from_hex", "patch_mask", "post_l", "quantize", "rgb_to_gray255", "rgb_to_hsv", "rgb_to_lab",
    "score_matrix", "segment", "split_hint", "texture_cue", "transfer",
]
