"""Exponential moving average of a module's weights, saved and restored with the owner's state dict."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

_PREFIX = "shadow."


class EMA(nn.Module):
    """Shadow copy of `module`'s parameters and buffers: `shadow = d * shadow + (1 - d) * weights` per update.

    With `warmup`, the decay used at update n (counting from 0) is min(decay, (1 + n) / (10 + n)), so the shadow
    forgets its random initialisation quickly. Held as a child of the LightningModule, the shadow appears in the
    state dict as `<child>.shadow.<name>` and follows `.to()`. It is deliberately not a registered buffer:
    DistributedDataParallel broadcasts every buffer from rank 0 before every forward, which for the shadow would
    cost as much traffic as the gradients themselves (every rank already computes the same average).
    """

    def __init__(self, module: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must lie in [0, 1], got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.shadow: dict[str, Tensor] = {n: t.detach().clone() for n, t in self._pairs_of(module)}
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @staticmethod
    def _pairs_of(module: nn.Module) -> Iterator[tuple[str, Tensor]]:
        """Parameters then buffers of `module`, by name."""
        yield from module.named_parameters()
        yield from module.named_buffers()

    def _matched(self, module: nn.Module) -> list[tuple[Tensor, Tensor]]:
        """(shadow, live) pairs; a module of another architecture is an error, not a silent partial update."""
        pairs = list(self._pairs_of(module))
        if len(pairs) != len(self.shadow) or any(n not in self.shadow for n, _ in pairs):
            names = {n for n, _ in pairs}
            missing = sorted(set(self.shadow) - names)[:5]
            extra = sorted(names - set(self.shadow))[:5]
            raise ValueError(f"module does not match the EMA's module: missing {missing}, unexpected {extra}")
        return [(self.shadow[n], t) for n, t in pairs]

    # ----------------------------------------------------------------------------------- state dict and devices
    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - signature of nn.Module._apply
        """Move/cast the shadow along with the module (`.to()`, `.cuda()`, `.half()` all come through here)."""
        super()._apply(fn, recurse)
        self.shadow = {n: fn(t) for n, t in self.shadow.items()}
        return self

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        """Save the shadow beside the regular buffers."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name, tensor in self.shadow.items():
            destination[prefix + _PREFIX + name] = tensor if keep_vars else tensor.detach()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        """Load the shadow in place (shapes must match), reporting missing and unexpected shadow entries."""
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        ours = prefix + _PREFIX
        for key in [k for k in unexpected_keys if k.startswith(ours)]:
            unexpected_keys.remove(key)
        for name, tensor in self.shadow.items():
            key = ours + name
            if key not in state_dict:
                missing_keys.append(key)
                continue
            value = state_dict[key]
            if value.shape != tensor.shape:
                error_msgs.append(f"size mismatch for {key}: checkpoint {tuple(value.shape)}, "
                                  f"current {tuple(tensor.shape)}")
                continue
            with torch.no_grad():
                tensor.copy_(value)
        for key in state_dict:
            if key.startswith(ours) and key[len(ours):] not in self.shadow:
                unexpected_keys.append(key)

    # ------------------------------------------------------------------------------------------------ averaging
    def current_decay(self) -> float:
        """The decay the next update will use."""
        if not self.warmup:
            return self.decay
        n = int(self.num_updates)
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the shadow toward `module`'s current weights (integer buffers are copied)."""
        d = self.current_decay()
        averaged_shadow, averaged_live = [], []
        for shadow, live in self._matched(module):
            if shadow.is_floating_point():
                averaged_shadow.append(shadow)
                averaged_live.append(live.detach().to(shadow.dtype))
            else:
                shadow.copy_(live)
        if averaged_shadow:
            torch._foreach_lerp_(averaged_shadow, averaged_live, 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Overwrite `module`'s weights with the shadow (irreversible; see `swap` / `ema_scope`)."""
        for shadow, live in self._matched(module):
            live.copy_(shadow)

    @torch.no_grad()
    def swap(self, module: nn.Module) -> None:
        """Exchange the shadow and `module`'s weights in place; calling it twice restores both exactly."""
        for shadow, live in self._matched(module):
            tmp = live.detach().clone()
            live.copy_(shadow)
            shadow.copy_(tmp)

    @contextmanager
    def ema_scope(self, module: nn.Module) -> Iterator[nn.Module]:
        """Run the block with the EMA weights loaded into `module`; the training weights come back afterwards."""
        self.swap(module)
        try:
            yield module
        finally:
            self.swap(module)
