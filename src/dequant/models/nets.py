"""Denoising networks: `net(x_t, t, hint) -> eps or v`, every tensor in the model range [-1, 1].

Two architectures share this interface (SPEC 2): `ConcatUNet` (a diffusers UNet2DModel fed the noisy image
concatenated with the 7 hint channels, trained from scratch) and `ControlNetUNet` (a frozen pretrained diffusers
UNet2DConditionModel read from a local folder plus a trainable ControlNet that receives the hint at full resolution).
`trainable_module()` is what the optimizer and the EMA see.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import ControlNetModel, UNet2DConditionModel, UNet2DModel
from torch import Tensor, nn

from dequant.color._checks import check_choice
from dequant.color.hint import COLOR, HINT_CHANNELS

LOW_RES_INPUTS = ("color", "zeros")


def _int_tuple(values: Sequence[int], name: str) -> tuple[int, ...]:
    """Hydra hands over ListConfigs; diffusers configs must hold plain ints."""
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a sequence of ints, got {values!r}") from exc
    if not out or any(v < 1 for v in out):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {values!r}")
    return out


def _check_inputs(x_t: Tensor, t: Tensor, hint: Tensor, hint_channels: int) -> None:
    """Shape checks shared by both nets: catching a swapped argument here beats a cryptic conv error."""
    if x_t.ndim != 4 or x_t.shape[1] != 3:
        raise ValueError(f"x_t must have shape (B, 3, H, W), got {tuple(x_t.shape)}")
    if hint.ndim != 4 or hint.shape[1] != hint_channels or hint.shape[0] != x_t.shape[0]:
        raise ValueError(f"hint must have shape ({x_t.shape[0]}, {hint_channels}, H, W), got {tuple(hint.shape)}")
    if hint.shape[-2:] != x_t.shape[-2:]:
        raise ValueError(f"hint must match x_t's size {tuple(x_t.shape[-2:])}, got {tuple(hint.shape[-2:])}")
    if t.ndim != 1 or t.shape[0] != x_t.shape[0]:
        raise ValueError(f"t must have shape ({x_t.shape[0]},), got {tuple(t.shape)}")


class ConcatUNet(nn.Module):
    """A diffusers UNet2DModel whose input is the noisy image concatenated with the hint (3 + 7 channels)."""

    def __init__(
        self,
        sample_size: int = 64,
        block_out_channels: Sequence[int] = (32, 64, 128),
        layers_per_block: int = 1,
        attention_levels: Sequence[bool] = (False, False, True),
        norm_num_groups: int = 8,
        attention_head_dim: int = 8,
        hint_channels: int = HINT_CHANNELS,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels = _int_tuple(block_out_channels, "block_out_channels")
        attention = tuple(bool(a) for a in attention_levels)
        if len(attention) != len(channels):
            raise ValueError(
                f"attention_levels must have one entry per level ({len(channels)}), got {list(attention)}"
            )
        if norm_num_groups < 1 or any(c % norm_num_groups for c in channels):
            raise ValueError(f"norm_num_groups must divide every block_out_channels {channels}, got {norm_num_groups}")
        if attention_head_dim < 1 or any(c % attention_head_dim for c, a in zip(channels, attention) if a):
            raise ValueError(f"attention_head_dim must divide the attention levels' channels, got {attention_head_dim}")
        if layers_per_block < 1:
            raise ValueError(f"layers_per_block must be >= 1, got {layers_per_block}")
        if hint_channels < 1:
            raise ValueError(f"hint_channels must be >= 1, got {hint_channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.hint_channels = int(hint_channels)
        self._init_kwargs = {
            "sample_size": int(sample_size),
            "block_out_channels": list(channels),
            "layers_per_block": int(layers_per_block),
            "attention_levels": list(attention),
            "norm_num_groups": int(norm_num_groups),
            "attention_head_dim": int(attention_head_dim),
            "hint_channels": self.hint_channels,
            "dropout": float(dropout),
        }
        self.unet = UNet2DModel(
            sample_size=int(sample_size),
            in_channels=3 + self.hint_channels,
            out_channels=3,
            block_out_channels=channels,
            layers_per_block=int(layers_per_block),
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
            norm_num_groups=int(norm_num_groups),
            attention_head_dim=int(attention_head_dim),
            dropout=float(dropout),
        )

    def forward(self, x_t: Tensor, t: Tensor, hint: Tensor) -> Tensor:
        """Predict eps (or v) for `x_t (B,3,H,W)` at integer timesteps `t (B,)` given `hint (B,7,H,W)` in [-1, 1]."""
        _check_inputs(x_t, t, hint, self.hint_channels)
        return self.unet(torch.cat([x_t, hint.to(x_t.dtype)], dim=1), t).sample

    def trainable_module(self) -> nn.Module:
        """The parameters the optimizer and the EMA update: the whole UNet."""
        return self.unet

    def zero_output(self) -> None:
        """Zero the last conv, so the net outputs 0 until trained (residual and bridge formulations)."""
        nn.init.zeros_(self.unet.conv_out.weight)
        nn.init.zeros_(self.unet.conv_out.bias)

    def hydra_config(self) -> dict:
        """A Hydra node that rebuilds this net (used when no run config came with the module)."""
        return {"_target_": f"{type(self).__module__}.{type(self).__qualname__}", **self._init_kwargs}


class HintEmbedding(nn.Module):
    """The authors' hint stack at full resolution: 3x3 convs with SiLU, then a zero-initialised conv to the width.

    Same attribute names as diffusers' ControlNetConditioningEmbedding (conv_in, blocks, conv_out) so that its
    weights keep the diffusers layout, but every conv has stride 1: IF-II is a pixel-space UNet, diffusers' version
    downsamples 8x for latent models.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        ch = _int_tuple(channels, "conditioning_channels")
        self.conv_in = nn.Conv2d(in_channels, ch[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for a, b in zip(ch[:-1], ch[1:]):
            self.blocks.append(nn.Conv2d(a, a, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(a, b, kernel_size=3, padding=1))
        self.conv_out = nn.Conv2d(ch[-1], out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, hint: Tensor) -> Tensor:
        """Embed `hint (B,C,H,W)` to the UNet's first feature width at the same resolution."""
        x = nn.functional.silu(self.conv_in(hint))
        for block in self.blocks:
            x = nn.functional.silu(block(x))
        return self.conv_out(x)


class _RawTextInput:
    """Forward pre-hook: feed the ControlNet's text add-embedding the raw (unprojected) null embedding.

    diffusers' ControlNetModel does not apply `encoder_hid_proj`, so IF-style UNets (T5 width 4096 projected to the
    cross-attention width) need the projected embedding for cross-attention but the raw one for the "text"
    add-embedding. A weak reference keeps deep copies of the ControlNet from dragging the whole wrapper along.
    """

    def __init__(self, owner: ControlNetUNet) -> None:
        self._owner = weakref.ref(owner)

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        owner = self._owner()
        if owner is None:
            return args
        (ehs,) = args
        raw = owner.null_embedding.to(device=ehs.device, dtype=ehs.dtype)
        return (raw.expand(ehs.shape[0], -1, -1),)


def _has_cross_attention(unet: nn.Module) -> bool:
    """Whether any attention layer of `unet` attends to the text embedding."""
    return any(getattr(m, "is_cross_attention", False) for m in unet.modules())


def _load_null_embedding(path: str | Path, dim: int) -> Tensor:
    """Read a fixed text embedding (.pt tensor, .npy array, or .npz archive as the authors ship it: key `arr`) as
    `(1, seq, dim)`; arrays are read without pickle, tensors with `weights_only=True` (data, never code)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"null_embedding_path {str(path)!r} does not exist or is not a file")
    try:
        if path.suffix == ".npy":
            emb = torch.from_numpy(np.load(path, allow_pickle=False))
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                if "arr" not in keys and len(keys) != 1:
                    raise ValueError(f"expected one array or one named 'arr', found {keys}")
                emb = torch.from_numpy(archive["arr" if "arr" in keys else keys[0]])
        else:
            emb = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the file is unusable
        raise ValueError(f"null_embedding_path {str(path)!r} could not be read: {exc}") from exc
    if not isinstance(emb, Tensor):
        raise ValueError(f"null_embedding_path {str(path)!r} must hold a tensor, got {type(emb).__name__}")
    emb = emb.float()
    while emb.ndim < 3:
        emb = emb.unsqueeze(0)
    if emb.ndim != 3 or emb.shape[0] != 1 or emb.shape[-1] != dim:
        raise ValueError(
            f"null_embedding_path {str(path)!r} must hold a (seq, {dim}) or (1, seq, {dim}) tensor, "
            f"got {tuple(emb.shape)}"
        )
    return emb


class ControlNetUNet(nn.Module):
    """A frozen pretrained UNet2DConditionModel (local folder) steered by a trainable ControlNet fed the hint.

    The text input is a fixed embedding read from `null_embedding_path` (for IF-II: the empty prompt's T5 embedding,
    what the authors feed; docs/cluster.md says how to make the file). A UNet with cross-attention refuses to start
    without one: a zero embedding is an input it never saw in training. `null_embedding_path="zeros"` feeds zeros
    of length `null_seq_len` on purpose (toy UNets, tests). UNets with 6 input channels (IF-II: noisy image +
    upscaled low-resolution image) get the hint's color channels as the low-resolution image
    (`low_res_input="color"`, the authors' choice) or zeros; UNets with a class embedding (IF-II: the noise level of
    the low-resolution image, 0-999) get `class_label` for every image (the authors: `aug_level * 1000`, 0 by
    default). Only the first 3 output channels (eps or v) are used; docs/cluster.md compares each choice with the
    authors' code.
    """

    def __init__(
        self,
        pretrained_path: str | Path,
        conditioning_channels: Sequence[int] = (48, 64, 96, 128),
        null_embedding_path: str | Path | None = None,
        freeze_unet: bool = True,
        null_seq_len: int = 1,
        low_res_input: str = "color",
        class_label: int = 0,
        hint_channels: int = HINT_CHANNELS,
    ) -> None:
        super().__init__()
        path = Path(pretrained_path).expanduser()
        if not (path.is_dir() and (path / "config.json").is_file()):
            raise ValueError(
                f"pretrained_path {str(path)!r} must be a local diffusers UNet2DConditionModel folder with a "
                "config.json (nothing is downloaded)"
            )
        check_choice(low_res_input, LOW_RES_INPUTS, "low_res_input")
        if null_seq_len < 1:
            raise ValueError(f"null_seq_len must be >= 1, got {null_seq_len}")
        if isinstance(class_label, bool) or not isinstance(class_label, (int, np.integer)) or class_label < 0:
            raise ValueError(f"class_label must be an int >= 0 (IF-II: the low-res noise level 0-999), "
                             f"got {class_label!r}")
        channels = _int_tuple(conditioning_channels, "conditioning_channels")
        self.hint_channels = int(hint_channels)
        self.freeze_unet = bool(freeze_unet)
        self.low_res_input = low_res_input
        self.class_label = int(class_label)
        self._init_kwargs = {
            "pretrained_path": str(pretrained_path),
            "conditioning_channels": list(channels),
            "null_embedding_path": None if null_embedding_path is None else str(null_embedding_path),
            "freeze_unet": self.freeze_unet,
            "null_seq_len": int(null_seq_len),
            "low_res_input": low_res_input,
            "class_label": self.class_label,
            "hint_channels": self.hint_channels,
        }

        try:
            self.unet = UNet2DConditionModel.from_pretrained(path, local_files_only=True, low_cpu_mem_usage=False)
        except Exception as exc:  # noqa: BLE001 - diffusers raises many types for a bad folder
            raise ValueError(
                f"pretrained_path {str(path)!r} could not be loaded as a UNet2DConditionModel: {exc}"
            ) from exc
        cfg = self.unet.config
        if cfg.in_channels not in (3, 6):
            raise ValueError(
                f"pretrained_path {str(path)!r}: the UNet must take 3 (image) or 6 (image + low-res image) input "
                f"channels, got in_channels={cfg.in_channels}"
            )
        if cfg.out_channels < 3:
            raise ValueError(
                f"pretrained_path {str(path)!r}: the UNet must output >= 3 channels, got {cfg.out_channels}"
            )

        self.controlnet = ControlNetModel.from_unet(
            self.unet, conditioning_channels=self.hint_channels, conditioning_embedding_out_channels=channels
        )
        # diffusers' embedding downsamples 8x (latent models); the hint must enter at full resolution.
        width = cfg.block_out_channels[0]
        self.controlnet.controlnet_cond_embedding = HintEmbedding(self.hint_channels, channels, width)
        self._check_zero_init()

        text_dim = cfg.encoder_hid_dim if cfg.encoder_hid_dim is not None else cfg.cross_attention_dim
        if null_embedding_path is None and _has_cross_attention(self.unet):
            raise ValueError(
                f"null_embedding_path: the UNet at {str(path)!r} has cross-attention, trained on text embeddings; "
                "give the empty-prompt embedding file (docs/cluster.md: how to make it once with the T5 encoder), "
                "or null_embedding_path=zeros to feed zeros on purpose"
            )
        if null_embedding_path is None or str(null_embedding_path) == "zeros":
            null = torch.zeros(1, int(null_seq_len), int(text_dim))
        else:
            null = _load_null_embedding(null_embedding_path, int(text_dim))
        self.register_buffer("null_embedding", null)
        self._projects_text = getattr(self.unet, "encoder_hid_proj", None) is not None
        if self.controlnet.config.addition_embed_type == "text":
            # from_unet drops the UNet's head count for the text pooling (weights load, the split would differ).
            pool, unet_pool = self.controlnet.add_embedding.pool, self.unet.add_embedding.pool
            pool.num_heads, pool.dim_per_head = unet_pool.num_heads, unet_pool.dim_per_head
            if self._projects_text:
                self.controlnet.add_embedding.register_forward_pre_hook(_RawTextInput(self))

        if self.freeze_unet:
            self.unet.requires_grad_(False)
            self.unet.eval()

    def _check_zero_init(self) -> None:
        """The ControlNet must start as a no-op: its output convs are zero (the authors' code re-initialises them)."""
        zero_convs = [*self.controlnet.controlnet_down_blocks, self.controlnet.controlnet_mid_block]
        zero_convs.append(self.controlnet.controlnet_cond_embedding.conv_out)
        for conv in zero_convs:
            if any(p.abs().max() > 0 for p in conv.parameters()):
                raise RuntimeError("ControlNet zero convolutions are not zero at initialisation")

    def train(self, mode: bool = True) -> ControlNetUNet:
        """Switch modes, keeping a frozen UNet in eval mode (its dropout must not fire)."""
        super().train(mode)
        if self.freeze_unet:
            self.unet.eval()
        return self

    def _unet_input(self, x_t: Tensor, hint: Tensor) -> Tensor:
        """What the UNet's conv_in sees: the noisy image, plus the low-resolution image for 6-channel UNets."""
        if self.unet.config.in_channels == 3:
            return x_t
        low = hint[:, COLOR].to(x_t.dtype) if self.low_res_input == "color" else torch.zeros_like(x_t)
        return torch.cat([x_t, low], dim=1)

    def forward(self, x_t: Tensor, t: Tensor, hint: Tensor) -> Tensor:
        """Predict eps (or v) for `x_t (B,3,H,W)` at integer timesteps `t (B,)` given `hint (B,7,H,W)` in [-1, 1]."""
        _check_inputs(x_t, t, hint, self.hint_channels)
        b = x_t.shape[0]
        sample = self._unet_input(x_t, hint)
        raw = self.null_embedding.to(x_t.dtype).expand(b, -1, -1)
        text = raw
        if self._projects_text:
            # The ControlNet skips encoder_hid_proj (see _RawTextInput); hand it the frozen UNet's projection.
            text = self.unet.encoder_hid_proj(raw)
        class_labels = None
        if self.unet.config.class_embed_type is not None or self.unet.config.num_class_embeds is not None:
            class_labels = torch.full((b,), self.class_label, dtype=torch.long, device=x_t.device)
        down, mid = self.controlnet(
            sample, t, encoder_hidden_states=text, controlnet_cond=hint.to(x_t.dtype),
            class_labels=class_labels, return_dict=False,
        )
        out = self.unet(
            sample, t, encoder_hidden_states=raw, class_labels=class_labels,
            down_block_additional_residuals=down, mid_block_additional_residual=mid,
        ).sample
        # IF-style UNets also predict a variance (6 channels); only eps/v is used.
        return out[:, :3]

    def trainable_module(self) -> nn.Module:
        """The ControlNet when the UNet is frozen; otherwise both, under stable names."""
        if self.freeze_unet:
            return self.controlnet
        return nn.ModuleDict({"unet": self.unet, "controlnet": self.controlnet})

    def hydra_config(self) -> dict:
        """A Hydra node that rebuilds this net (used when no run config came with the module)."""
        return {"_target_": f"{type(self).__module__}.{type(self).__qualname__}", **self._init_kwargs}
