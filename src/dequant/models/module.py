"""The LightningModule: diffusion training on (hint, target) batches, EMA, seeded validation sampling, loading.

Batches are dicts: `hint (B,7,H,W)` and `target (B,3,H,W)` in [0, 1], `image_id (B,)`, `n_colors (B,)`, `patch (B,)`.
Everything the module saves is plain Python (no dataclasses, no OmegaConf), so checkpoints load with
`torch.load(weights_only=True)`, as Lightning's resume does by default.

Validation. `val/loss` (fixed t and noise per image) on the job's own validation examples. When the data module also
hands over the fixed validation set (`dequant.data.validation`, the same problems for every job of a sweep), the
module samples it and logs, per setting, `val/<test>/<setting>/<metric>` (e.g. `val/r_tex/N4/psnr`), the model's
signed gain over the quantized input `..._gain` (positive = better), the input's own value `..._input` (once per
run segment: it does not change), the headline `val/psnr` over the whole set, and best-so-far values `..._best`
(max PSNR, min palette ΔE00, min `val/loss`; kept in checkpoints, so a resumed run continues them). The metrics are
torchmetrics accumulators (`dequant.models.metrics`); ranks split the fixed set and torchmetrics sums their states,
so each example counts once whatever the number of processes. Without a fixed set (a plain validation loader), the
first `val_max_images` examples are sampled and scored as `val/psnr`, `val/psnr_input`, `val/ssim`, ...
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from diffusers import DDPMScheduler
from torch import Tensor, nn

from dequant import metrics as M
from dequant.color._checks import check_choice
from dequant.color.hint import COLOR, HINT_CHANNELS
from dequant.models.ema import EMA
from dequant.models.formulations import Formulation, as_formulation, diffusion_targets
from dequant.models.metrics import PSNR, SSIM, ImageMean, PaletteDeltaE, PatchDeltaE, Speckle, TextureCorrelation
from dequant.models.pretrained import PRETRAINED, resolve_model
from dequant.models.ranges import from_model_range, to_model_range
from dequant.models.sampling import SamplerSpec, as_sampler_spec, image_generators

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear", "sigmoid")
_MODULE_TARGET = "dequant.models.module.DequantModule"
# The fixed validation set's metrics per setting, in log order.
VAL_METRICS = ("psnr", "ssim", "palette_de2000", "texture_corr", "speckle")
# Best-so-far keys: the metric and whether higher is better.
VAL_BEST = {"psnr": True, "palette_de2000": False}
_SAMPLER_TARGET = "dequant.models.sampling.SamplerSpec"


def _plain(value: Any) -> Any:
    """Resolve OmegaConf containers and tuples into plain dicts and lists (checkpoint- and YAML-safe)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, DictConfig | ListConfig):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra, a dependency
        pass
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    return value


def _palette_and_index(color: Tensor) -> tuple[Tensor, Tensor]:
    """The palette `(K,3)` and index map `(H,W)` of a flat-colored (quantized) image `(3,H,W)`."""
    h, w = color.shape[-2:]
    palette, index = torch.unique(color.reshape(3, -1).t(), dim=0, return_inverse=True)
    return palette.clamp(0, 1), index.reshape(h, w)


class DequantModule(L.LightningModule):
    """Trains `net(x_t, t, hint)` as its formulation says (noise, residual, bridge); samples with EMA weights.

    The DDPM schedule (`prediction_type`, `num_train_timesteps`, `beta_schedule`) serves the diffusion formulations;
    the bridge uses only `num_train_timesteps`, to scale its continuous time for the net's timestep embedding.
    """

    def __init__(
        self,
        net: nn.Module,
        formulation: Formulation | Mapping | str | None = None,
        prediction_type: str = "epsilon",
        num_train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_decay_steps: int = 0,
        ema_decay: float = 0.999,
        use_ema: bool = True,
        cond_dropout: float = 0.0,
        sampler: SamplerSpec | Mapping | str | None = None,
        val_seed: int = 0,
        val_max_images: int = 8,
        samples_dir: str | None = None,
        config: Mapping | None = None,
        seed: int = 0,
        max_nonfinite_steps: int = 10,
    ) -> None:
        super().__init__()
        check_choice(prediction_type, PREDICTION_TYPES, "prediction_type")
        check_choice(beta_schedule, BETA_SCHEDULES, "beta_schedule")
        if not 0.0 <= ema_decay <= 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1], got {ema_decay}")
        if not hasattr(net, "trainable_module"):
            raise ValueError(f"net must provide trainable_module(), got {type(net).__name__}")
        if num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        betas = tuple(float(b) for b in betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if isinstance(lr_decay_steps, bool) or not isinstance(lr_decay_steps, int) or lr_decay_steps < 0:
            raise ValueError(f"lr_decay_steps must be an int >= 0 (0 = no decay), got {lr_decay_steps!r}")
        if 0 < lr_decay_steps <= warmup_steps:
            raise ValueError(f"lr_decay_steps ({lr_decay_steps}) must exceed warmup_steps ({warmup_steps}), or be 0")
        if not 0.0 <= cond_dropout <= 1.0:
            raise ValueError(f"cond_dropout must lie in [0, 1], got {cond_dropout}")
        if val_max_images < 0:
            raise ValueError(f"val_max_images must be >= 0, got {val_max_images}")
        if isinstance(max_nonfinite_steps, bool) or not isinstance(max_nonfinite_steps, int) or max_nonfinite_steps < 0:
            raise ValueError(f"max_nonfinite_steps must be an int >= 0 (0 = never stop), got {max_nonfinite_steps!r}")
        spec = as_sampler_spec(sampler)
        form = as_formulation(formulation)
        form.check_sampler(spec)
        # save_hyperparameters reads these locals: keep only plain types in them.
        sampler = {"_target_": _SAMPLER_TARGET, **dataclasses.asdict(spec)}
        formulation = form.hydra_config()
        config = _plain(config) if config is not None else None
        samples_dir = None if samples_dir is None else str(samples_dir)
        self.save_hyperparameters(ignore=["net"])

        self.net = net
        self.formulation = form
        form.init_net(net)
        self.sampler_spec = spec
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=int(num_train_timesteps), beta_schedule=beta_schedule,
            prediction_type=prediction_type, clip_sample=False,
        )
        self.ema = EMA(net.trainable_module(), decay=ema_decay) if use_ema else None
        self._val_count = 0
        self._val_rows: list[dict[str, Tensor]] = []
        # The fixed validation set (set up from the data module, see `use_fixed_validation`).
        self._fixed_names: list[str] = []
        self.val_metrics = nn.ModuleDict()
        self._input_logged = False
        self._val_best: dict[str, float] = {}
        self._val_loss = ImageMean()  # the epoch's val/loss, for its best-so-far value
        # Non-finite guard (fault tolerance, see on_before_optimizer_step): counters are saved in checkpoints.
        self._last_loss: Tensor | None = None
        self._step_skipped = False
        self._nonfinite_total = 0
        self._nonfinite_in_row = 0

    # ----------------------------------------------------------------------------------------------- helpers
    @contextlib.contextmanager
    def ema_weights(self, enabled: bool = True) -> Iterator[None]:
        """Run the block with the EMA weights in the net (a no-op without EMA or when disabled)."""
        if enabled and self.ema is not None:
            with self.ema.ema_scope(self.net.trainable_module()):
                yield
        else:
            yield

    def _step_generator(self, batch_idx: int) -> torch.Generator:
        """A generator for one training step, unique per (seed, step, batch, rank) and identical on resume."""
        rank = self.trainer.global_rank if self._trainer is not None else 0
        step = self.trainer.global_step if self._trainer is not None else 0
        entropy = [int(self.hparams.seed) % 2**32, step, batch_idx, rank]
        g = torch.Generator(device=self.device)
        g.manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) >> 1)
        return g

    def _targets(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What a diffusion net regresses: eps, v = sqrt(a) eps - sqrt(1 - a) x0, or x0 itself ("sample")."""
        return diffusion_targets(self.noise_scheduler, x0, noise, t)

    def _null_hint(self, hint: Tensor) -> Tensor:
        """The 'no hint' input for condition dropout and guidance: all -1 in model range (all 0 in [0, 1])."""
        return torch.full_like(hint, -1.0)

    def diffusion_loss(self, batch: Mapping[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """The formulation's training loss on one batch (with optional hint dropout, for guidance)."""
        hint = to_model_range(batch["hint"].float())
        x0 = to_model_range(batch["target"].float())
        if self.hparams.cond_dropout > 0:
            drop = torch.rand(x0.shape[0], device=x0.device, generator=generator) < self.hparams.cond_dropout
            hint = torch.where(drop[:, None, None, None], self._null_hint(hint), hint)
        return self.formulation.training_loss(self.net, x0, hint, self.noise_scheduler, generator)

    # ---------------------------------------------------------------------------------------------- training
    def on_fit_start(self) -> None:
        """Train mode for the net even when the module arrives in eval mode (load_model returns it so)."""
        self.train()

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        """One diffusion training step; logs `train/loss`."""
        loss = self.diffusion_loss(batch, self._step_generator(batch_idx))
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["target"].shape[0])
        self._last_loss = loss.detach()
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip an update whose loss or gradients are not finite (no optimizer step, no EMA update) and count it.

        The gradients are dropped (set to None), so AdamW leaves every weight and its moments as they were. After
        `max_nonfinite_steps` such steps in a row training stops with FloatingPointError; checkpoints already
        written are never overwritten with a bad state because no bad update is ever applied. Under a GradScaler
        (fp16-mixed) overflowing gradients are the scaler's business (it skips them and lowers the scale), so only
        a non-finite loss counts there.
        """
        self._step_skipped = False
        checks = [] if self._last_loss is None else [self._last_loss.float().reshape(())]
        if getattr(self.trainer.precision_plugin, "scaler", None) is None:
            grads = [p.grad for p in self.net.trainable_module().parameters() if p.grad is not None]
            if grads:
                checks.append(torch.nn.utils.get_total_norm(grads, norm_type=float("inf")).float().to(self.device))
        bad = bool(checks) and not bool(torch.isfinite(torch.stack(checks)).all())
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)  # every rank skips, or none does
        if bad:
            optimizer.zero_grad(set_to_none=True)
            self._step_skipped = True
            self._nonfinite_total += 1
            self._nonfinite_in_row += 1
        else:
            self._nonfinite_in_row = 0
        self.log("train/nonfinite_steps", float(self._nonfinite_total), batch_size=1)
        limit = int(self.hparams.max_nonfinite_steps)
        if bad and limit and self._nonfinite_in_row >= limit:
            raise FloatingPointError(
                f"training stopped at step {self.trainer.global_step}: {self._nonfinite_in_row} steps in a row had a "
                f"non-finite loss or gradient (module.max_nonfinite_steps={limit}); those steps were skipped, the "
                "weights are unchanged since the last finite step and the checkpoints on disk are intact. Lower the "
                "learning rate or check the data, then resume with ckpt_path=last.")

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step the optimizer, then the EMA: once per optimizer step (not per micro-batch under accumulation).

        Done here rather than in `on_train_batch_end` because callbacks (checkpointing) see a batch's end before the
        module does, and a checkpoint must hold the EMA of the weights it holds. A skipped step (non-finite, or an
        overflow that the GradScaler skipped) leaves the EMA alone too.
        """
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        scale = scaler.get_scale() if scaler is not None else None
        super().optimizer_step(*args, **kwargs)
        # Under a GradScaler (16-mixed) an overflowing step is skipped by the scaler, which then lowers its scale.
        skipped = self._step_skipped or (scale is not None and scaler.get_scale() < scale)
        if self.ema is not None and not skipped:
            self.ema.update(self.net.trainable_module())

    def configure_optimizers(self) -> dict:
        """AdamW on the net's trainable module: a per-step linear warmup, then (`lr_decay_steps` > 0) a cosine decay
        that reaches 0 at step `lr_decay_steps` and stays there."""
        params = [p for p in self.net.trainable_module().parameters() if p.requires_grad]
        opt = torch.optim.AdamW(
            params, lr=self.hparams.lr, betas=tuple(self.hparams.betas), weight_decay=self.hparams.weight_decay
        )
        warmup = int(self.hparams.warmup_steps)
        decay = int(self.hparams.lr_decay_steps)

        def factor(step: int) -> float:
            scale = 1.0 if warmup <= 0 else min(1.0, (step + 1) / warmup)
            if decay > 0:
                progress = min(1.0, max(0, step - warmup) / (decay - warmup))
                scale *= 0.5 * (1.0 + math.cos(math.pi * progress))
            return scale

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # -------------------------------------------------------------------------------------------- validation
    def setup(self, stage: str) -> None:
        """Take the fixed validation set's settings from the data module (`val_fixed_settings`), if it has one."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        settings = getattr(datamodule, "val_fixed_settings", None)
        if settings:
            self.use_fixed_validation([s.name for s in settings])

    def use_fixed_validation(self, names: list[str]) -> None:
        """Score fixed-set batches (those with a `setting` index) under these setting names (`r_tex/N4`, `p/mean`)."""
        self._fixed_names = list(names)
        metrics: dict[str, nn.Module] = {"psnr": PSNR(), "psnr_input": PSNR()}
        for name in self._fixed_names:
            patch = name.split("/", 1)[0].startswith("p")
            for source in ("model", "input"):
                metrics[_metric_slot(name, "psnr", source)] = PSNR()
                metrics[_metric_slot(name, "ssim", source)] = SSIM()
                metrics[_metric_slot(name, "palette_de2000", source)] = PatchDeltaE() if patch else PaletteDeltaE()
                metrics[_metric_slot(name, "texture_corr", source)] = TextureCorrelation()
                metrics[_metric_slot(name, "speckle", source)] = Speckle()
        self.val_metrics = nn.ModuleDict(metrics).to(self.device)

    def on_validation_epoch_start(self) -> None:
        """Reset the per-epoch sample budget."""
        self._val_count = 0
        self._val_rows = []

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """`val/loss` on the job's own examples; fixed-set batches (with `setting`) are sampled and scored."""
        if "setting" in batch:
            self._fixed_validation_step(batch)
            return
        hint01, target01 = batch["hint"].float(), batch["target"].float()
        b = target01.shape[0]
        ids = batch.get("image_id")
        ids = torch.arange(self._val_count, self._val_count + b) if ids is None else ids.detach().cpu().long()
        hint, x0 = to_model_range(hint01), to_model_range(target01)
        # Per-image randomness from (val_seed, image id): the same every validation, on any device.
        gens = image_generators(self.hparams.val_seed, ids, "cpu")
        with self.ema_weights():
            loss = self.formulation.validation_loss(self.net, x0, hint, self.noise_scheduler, gens)
            self.log("val/loss", loss, prog_bar=True, batch_size=b, sync_dist=True, add_dataloader_idx=False)
            self._val_loss.update(loss.detach().reshape(1).expand(b))
            if self._fixed_names:
                return  # the fixed set carries the samples and metrics
            n = min(b, self.hparams.val_max_images - self._val_count)
            if n <= 0:
                return
            output = self._sample_model_range(hint[:n], self.sampler_spec, self.hparams.val_seed, ids[:n])
        self._val_count += n
        output = from_model_range(output).float().cpu()
        target = target01[:n].cpu()
        values = {
            "l1": M.l1(output, target),
            "psnr": M.psnr(output, target),
            # The model's own color input as a reference: is the model better than what it was given?
            "psnr_input": M.psnr(hint01[:n, COLOR].cpu(), target),
            "ssim": M.ssim(output, target),
            "texture_corr": M.texture_fidelity(output, target),
            "speckle": M.speckle(output, target),
        }
        patch = batch.get("patch")
        palette_rows = [i for i in range(n) if patch is None or not bool(patch[i])]
        if palette_rows:
            # Palette-mode hints carry the quantized image: its distinct colors are the requested palette.
            pairs = [_palette_and_index(hint01[i, COLOR].cpu()) for i in palette_rows]
            values["palette_de2000"] = M.palette_error_ciede(
                output[palette_rows], torch.stack([ix for _, ix in pairs]), [p for p, _ in pairs]
            )
        # No sync needed: every rank validates the same examples of a plain loader (DequantDataModule.val_dataloader),
        # so every rank logs the same values (tests/test_ddp_faults.py checks it). A per-step sync could even hang,
        # as only palette-mode batches have palette_de2000.
        for name, v in values.items():
            self.log(f"val/{name}", v.mean(), batch_size=v.numel())
        self._val_rows.append({"hint": hint01[:n].cpu(), "output": output, "target": target})

    def _fixed_validation_step(self, batch: Mapping[str, Tensor]) -> None:
        """Sample this rank's share of a fixed-set batch (example index = rank modulo world) and update the
        per-setting accumulators for the model and the input."""
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self._trainer is not None else (0, 1)
        mine = (batch["index"].cpu() % world) == rank
        if not bool(mine.any()):
            return
        pick = mine.nonzero().flatten()
        hint01 = batch["hint"][pick.to(batch["hint"].device)].float()
        ids = batch["image_id"].cpu()[pick].long()
        with self.ema_weights():
            output = self._sample_model_range(to_model_range(hint01), self.sampler_spec, self.hparams.val_seed, ids)
        output = from_model_range(output).float().cpu()
        target = batch["target"].cpu()[pick].float()
        requested = batch["requested"].cpu()[pick].float()
        masks, fills = batch["mask"].cpu()[pick], batch["fill"].cpu()[pick].float()
        settings = batch["setting"].cpu()[pick].tolist()
        self.val_metrics["psnr"].update(output, target)
        self.val_metrics["psnr_input"].update(requested, target)
        for k, setting in enumerate(settings):
            name = self._fixed_names[setting]
            patch = name.split("/", 1)[0].startswith("p")
            for source, image in (("model", output[k:k + 1]), ("input", requested[k:k + 1])):
                slot = lambda metric: self.val_metrics[_metric_slot(name, metric, source)]  # noqa: E731
                slot("psnr").update(image, target[k:k + 1])
                slot("ssim").update(image, target[k:k + 1])
                if patch:
                    slot("palette_de2000").update(image, masks[k:k + 1], fills[k:k + 1])
                else:
                    palette, index = _palette_and_index(requested[k])
                    slot("palette_de2000").update(image, index[None], [palette])
                slot("texture_corr").update(image, target[k:k + 1])
                slot("speckle").update(image, target[k:k + 1])
        shown = max(0, self.hparams.val_max_images - self._val_count)
        if shown:
            self._val_count += min(shown, len(settings))
            self._val_rows.append({"hint": hint01[:shown].cpu(), "output": output[:shown], "target": target[:shown]})

    def _log_fixed_metrics(self) -> dict[str, float]:
        """Compute (synced over ranks), log and reset the fixed set's accumulators; every rank logs the same."""
        import warnings

        from dequant.evaluation.report import gain

        log_input = not self._input_logged and not self.trainer.sanity_checking
        values: dict[str, float] = {}
        with warnings.catch_warnings():
            # A rank whose share of the set missed a setting still takes part in its sync.
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
            computed = {slot: float(metric.compute()) for slot, metric in self.val_metrics.items()}
        for metric in self.val_metrics.values():
            metric.reset()
        values["val/psnr"] = computed["psnr"]
        if log_input:
            values["val/psnr_input"] = computed["psnr_input"]
        for name in self._fixed_names:
            for metric in VAL_METRICS:
                model = computed[_metric_slot(name, metric, "model")]
                given = computed[_metric_slot(name, metric, "input")]
                if math.isnan(model):
                    continue
                values[f"val/{name}/{metric}"] = model
                g = gain(metric, model, given)
                if g is not None:
                    values[f"val/{name}/{metric}_gain"] = g
                if log_input:
                    values[f"val/{name}/{metric}_input"] = given
        for key, value in values.items():
            if not math.isnan(value):
                self.log(key, value, batch_size=1, add_dataloader_idx=False)
        self._input_logged = self._input_logged or log_input
        return values

    def _log_best(self, values: Mapping[str, float]) -> None:
        """Log the best-so-far value of the headline keys (`..._best`) over this and earlier validations."""
        if self.trainer.sanity_checking:
            return
        keys = {"val/loss": False, "val/psnr": True}
        keys.update({f"val/{name}/{m}": up for name in self._fixed_names for m, up in VAL_BEST.items()})
        for key, higher in keys.items():
            value = values.get(key)
            if value is None or math.isnan(value):
                continue
            best = self._val_best.get(key)
            if best is None or (value > best if higher else value < best):
                self._val_best[key] = best = value
            self.log(f"{key}_best", best, batch_size=1, add_dataloader_idx=False)

    def on_validation_epoch_end(self) -> None:
        """Log the fixed set's metrics and best-so-far values; save the sample grid under samples_dir and hand it
        to every logger that takes images."""
        values = self._log_fixed_metrics() if self._fixed_names else {}
        if self._val_loss.update_called:
            values["val/loss"] = float(self._val_loss.compute())
        self._val_loss.reset()
        if self._trainer is not None:
            self._log_best(values)
        rows, self._val_rows = self._val_rows, []
        if not rows or self._trainer is None or not self.trainer.is_global_zero:
            return
        from dequant import viz

        hint = torch.cat([r["hint"] for r in rows])
        output = torch.cat([r["output"] for r in rows])
        target = torch.cat([r["target"] for r in rows])
        columns = {**viz.hint_columns(hint), "output": output, "target": target,
                   "|difference|": (output - target).abs()}
        grid = viz.labelled_grid(columns)
        if self.hparams.samples_dir:
            viz.save_png(grid, Path(self.hparams.samples_dir) / f"val_step{self.global_step:06d}.png")
        for logger in self.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="val/samples", images=[grid], step=self.global_step)

    # ---------------------------------------------------------------------------------------------- sampling
    def _sample_model_range(self, hint: Tensor, spec: SamplerSpec, seed: int, image_ids: Tensor) -> Tensor:
        """Sample `(B,3,H,W)` in [-1, 1] for a model-range hint with the net's current weights, in eval mode."""
        generators = image_generators(seed, image_ids, hint.device)
        was_training = self.net.training
        self.net.eval()
        try:
            return self.formulation.sample(self.net, hint, spec, self.noise_scheduler, generators,
                                           null_hint=self._null_hint(hint))
        finally:
            self.net.train(was_training)

    @torch.no_grad()
    def sample(
        self,
        hint: Tensor,
        steps: int | None = None,
        sampler: SamplerSpec | Mapping | str | None = None,
        seed: int = 0,
        image_ids: Tensor | list[int] | None = None,
        start_step: int | None = None,
        guidance: float | None = None,
        use_ema: bool = True,
    ) -> Tensor:
        """Sample outputs `(B,3,H,W)` in [0, 1] for hints `(B,7,H,W)` in [0, 1].

        `sampler` defaults to the module's; `steps`, `start_step` and `guidance` override the sampler's values.
        Each image's noise comes from (seed, its image id): ids default to 0..B-1.
        """
        if not isinstance(hint, Tensor) or hint.ndim != 4 or hint.shape[1] != HINT_CHANNELS:
            raise ValueError(f"hint must be a (B, {HINT_CHANNELS}, H, W) tensor, got "
                             f"{getattr(hint, 'shape', type(hint).__name__)}")
        if not hint.is_floating_point() or float(hint.min()) < -1e-4 or float(hint.max()) > 1 + 1e-4:
            raise ValueError("hint must be a float tensor in [0, 1]")
        spec = self.sampler_spec if sampler is None else as_sampler_spec(sampler)
        given = (("steps", steps), ("start_step", start_step), ("guidance", guidance))
        overrides = {k: v for k, v in given if v is not None}
        if overrides:
            spec = dataclasses.replace(spec, **overrides)
        self.formulation.check_sampler(spec)
        b = hint.shape[0]
        ids = torch.arange(b) if image_ids is None else torch.as_tensor(image_ids).long().cpu()
        if ids.shape != (b,):
            raise ValueError(f"image_ids must hold one id per image ({b}), got shape {tuple(ids.shape)}")
        h = to_model_range(hint.to(self.device, torch.float32))
        with self.ema_weights(use_ema):
            out = self._sample_model_range(h, spec, seed, ids)
        return from_model_range(out)

    # ----------------------------------------------------------------------------------------- checkpointing
    def dequant_config(self) -> dict:
        """The run config saved with checkpoints; without a run config, a `module` node rebuilt from hparams."""
        cfg = copy.deepcopy(self.hparams.get("config")) or {}
        if "module" not in cfg:
            node = {k: copy.deepcopy(v) for k, v in self.hparams.items() if k != "config"}
            net_node = self.net.hydra_config() if hasattr(self.net, "hydra_config") else None
            if net_node is None:
                raise ValueError(f"net {type(self.net).__name__} has no hydra_config() and no run config was given")
            cfg["module"] = {"_target_": _MODULE_TARGET, **_plain(node), "net": _plain(net_node)}
        return cfg

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the full run config so `load_model` can rebuild the module without Hydra files."""
        checkpoint["dequant_config"] = self.dequant_config()
        checkpoint["nonfinite_steps"] = {"total": self._nonfinite_total, "in_row": self._nonfinite_in_row}
        checkpoint["val_best"] = dict(self._val_best)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the run config that came with the checkpoint (and the non-finite step counters)."""
        if "dequant_config" in checkpoint:
            self.hparams["config"] = checkpoint["dequant_config"]
        counts = checkpoint.get("nonfinite_steps") or {}
        self._nonfinite_total = int(counts.get("total", 0))
        self._nonfinite_in_row = int(counts.get("in_row", 0))
        self._val_best = {str(k): float(v) for k, v in (checkpoint.get("val_best") or {}).items()}


def _metric_slot(setting: str, metric: str, source: str) -> str:
    """The `val_metrics` entry of one setting, metric and source (`model` or `input`); no dots (module names)."""
    return f"{source}:{setting}:{metric}"


def _net_node(config: Mapping) -> dict:
    """The `module.net` node of a run config (also accepts a module node or a bare net node)."""
    cfg = _plain(config)
    if not isinstance(cfg, dict):
        raise ValueError(f"expected_config must be a mapping, got {type(config).__name__}")
    if "module" in cfg:
        cfg = cfg["module"]
    if isinstance(cfg, dict) and "net" in cfg:
        cfg = cfg["net"]
    if not isinstance(cfg, dict) or "_target_" not in cfg:
        raise ValueError("expected_config must hold a module.net node with a _target_")
    return cfg


def _flatten(node: Any, prefix: str) -> dict[str, Any]:
    """Dotted keys -> leaf values."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
        return out
    return {prefix: node}


def config_differences(saved: Mapping, expected: Mapping) -> list[str]:
    """The `module.net` keys whose values differ between two configs, as 'key: saved vs expected' lines."""
    a = _flatten(_net_node(saved), "module.net")
    b = _flatten(_net_node(expected), "module.net")
    missing = object()
    diffs = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            fa = "<absent>" if va is missing else repr(va)
            fb = "<absent>" if vb is missing else repr(vb)
            diffs.append(f"{key}: checkpoint {fa} vs expected {fb}")
    return diffs


def build_module(cfg: Mapping, source: str, node: Mapping | None = None) -> "DequantModule":
    """Instantiate the DequantModule of a run config (`node`: an edited copy of its `module` node, if given)."""
    from hydra.utils import instantiate

    # Only the module node is instantiated: the run config holds other _target_ nodes (data, loggers) to leave be.
    if node is None:
        node = {k: v for k, v in cfg["module"].items() if k != "config"}
    try:
        module = instantiate(dict(node), _convert_="all")
    except Exception as exc:  # noqa: BLE001 - Hydra wraps constructor errors in its own type
        raise ValueError(f"{source}: could not rebuild the module from its dequant config: {exc}") from exc
    if not isinstance(module, DequantModule):
        raise ValueError(f"{source}: the dequant config's module node built a {type(module).__name__}")
    module.hparams["config"] = cfg
    return module


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu", expected_config: Mapping | None = None
) -> DequantModule:
    """Rebuild a DequantModule from a Lightning checkpoint written by it (weights, EMA and run config), a
    dequant-export folder, or `"pretrained"`: the model shipped in the package."""
    if str(path) == PRETRAINED:
        path = resolve_model(path, what="path")  # checked against its SHA256SUMS first
    path = Path(path)
    if not path.exists():
        raise ValueError(f"path {str(path)!r} does not exist")
    if path.is_dir():
        # A folder written by dequant-export (diffusers weights + dequant_config.json).
        from dequant.models.exported import exported_node, load_exported_weights, read_dequant_config

        cfg = read_dequant_config(path)
        module = build_module(cfg, f"path {str(path)!r}", exported_node(cfg, path))
        return load_exported_weights(module, path, map_location)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated files and foreign pickles fail in many ways
        raise ValueError(f"path {str(path)!r} is not a readable checkpoint: {exc}") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"path {str(path)!r} is not a Lightning checkpoint (no state_dict)")
    cfg = ckpt.get("dequant_config")
    if not isinstance(cfg, dict) or "module" not in cfg:
        raise ValueError(f"path {str(path)!r} has no dequant_config.module: it was not written by DequantModule")
    if expected_config is not None:
        diffs = config_differences(cfg, expected_config)
        if diffs:
            raise ValueError(
                f"checkpoint {str(path)!r} architecture does not match expected_config: " + "; ".join(diffs)
            )
    module = build_module(cfg, f"checkpoint {str(path)!r}")
    try:
        result = module.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when strict=False
        raise ValueError(f"checkpoint {str(path)!r} weights do not fit the rebuilt module: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"checkpoint {str(path)!r} weights do not fit the rebuilt module: missing keys "
            f"{result.missing_keys[:5]}, unexpected keys {result.unexpected_keys[:5]}"
        )
    module.to(map_location)
    module.eval()
    return module
