"""W&B runs for `logger=wandb` (and `csv_wandb`): checked names, an offline fallback, what a run records about itself,
and the preemption mark.

- `wandb_logger(node)` builds Lightning's WandbLogger from a logger node after checking `project` and `entity` (a name
  W&B cannot take is a one-line error naming the key); a run that should go online but cannot reach the W&B server
  (compute nodes often have no network) runs offline instead, with one warning saying how to sync it later.
- `start_run(logger)` starts the run; W&B refusing it (no API key, an entity or project this account cannot use) is
  a one-line error naming `logger.wandb.entity` / `project` and the entities the account has, when W&B says.
- `run_info(cfg, module)`: what the logged config gets besides the resolved config: the group choices
  (`choices.palette=fixed_4`, ... from `hydra.runtime.choices`, so W&B groups and filters runs by them), the
  parameter counts, the git commit of the code and whether its tree was dirty, and the command line.
- `WandbPreempting`: a callback that marks the W&B run preempting as soon as a preemption signal is seen (before the
  checkpoint is written); `finish(loggers, exit_code)` then ends the run with a non-zero exit code, which W&B shows as
  preempted (a zero one would read as finished).
"""

from __future__ import annotations

import logging
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
# Characters W&B does not allow in project and entity names, and their longest length.
_BAD_NAME = re.compile(r"[/\\#?%:]")
_NAME_MAX = 128
_warned_offline: list[bool] = []


def is_wandb_logger(logger: Any) -> bool:
    """True for Lightning's WandbLogger (checked by name: wandb is an optional dependency)."""
    return type(logger).__name__ == "WandbLogger"


def check_name(value: Any, key: str) -> None:
    """A W&B project or entity name W&B accepts; else a ValueError naming `key` and the rules."""
    if value is None:
        return
    text = str(value)
    if not text.strip() or _BAD_NAME.search(text) or len(text) > _NAME_MAX:
        raise ValueError(f"{key}: {text!r} cannot be a W&B name (1 to {_NAME_MAX} characters, none of / \\ # ? % :)")


def reachable(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the W&B server of `url` opens within `timeout_s`."""
    parsed = urlparse(url)
    host = parsed.hostname
    if not host:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _goes_online(node: Mapping[str, Any]) -> bool:
    """Whether wandb would start this node's run online (W&B's own settings, WANDB_MODE included, decide)."""
    if node.get("offline") or node.get("mode") in ("offline", "disabled"):
        return False
    import wandb

    return wandb.Settings().mode not in ("offline", "disabled", "dryrun")


def wandb_logger(node: Any, key: str = "logger.wandb") -> Any:
    """Lightning's WandbLogger from a logger node, names checked, offline when the W&B server cannot be reached."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    check_name(plain.get("project"), f"{key}.project")
    check_name(plain.get("entity"), f"{key}.entity")
    if _goes_online(plain):
        import wandb

        url = str(wandb.Settings().base_url)
        if not reachable(url):
            if not _warned_offline:
                _warned_offline.append(True)
                log.warning("W&B server %s cannot be reached from this machine: logging offline into <run "
                            "dir>/wandb/offline-run-*; sync later with `wandb sync <run dir>/wandb/offline-run-*` "
                            "(or set %s.offline=true to skip this check)", url, key)
            plain["offline"] = True
    return instantiate(plain)


def _entities() -> list[str]:
    """The entities (user and teams) of the logged-in W&B account, or [] when W&B cannot say."""
    try:
        import wandb

        viewer = wandb.Api(timeout=10).viewer
        names = [getattr(viewer, "entity", None), *(getattr(viewer, "teams", None) or [])]
        return [str(n) for n in names if n]
    except Exception:  # noqa: BLE001 - only a hint for the error message
        return []


def start_run(logger: Any, key: str = "logger.wandb") -> str:
    """Start (or resume) the logger's W&B run and return its id; W&B refusing it is a one-line ValueError."""
    try:
        return str(logger.experiment.id)
    except Exception as err:
        import wandb

        if not isinstance(err, (wandb.errors.CommError, wandb.errors.UsageError, wandb.errors.AuthenticationError)):
            raise
        message = " ".join(str(err).split())
        entity, project = getattr(logger, "_wandb_init", {}).get("entity"), logger.name
        available = _entities()
        hint = f"; this account's entities: {', '.join(available)}" if available else ""
        raise ValueError(f"{key}: W&B refused the run (entity {entity!r}, project {project!r}): {message}{hint}; "
                         f"fix {key}.entity / {key}.project, run `wandb login`, or set {key}.offline=true") from err


def _git(args: Sequence[str], folder: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(folder: str | Path | None = None) -> dict[str, Any]:
    """The git commit of `folder` (default: the checkout this package runs from) and whether its tree is dirty;
    `{"commit": None, "dirty": None}` outside a git checkout (an installed wheel)."""
    where = Path(folder) if folder is not None else Path(__file__).resolve().parent
    commit = _git(["rev-parse", "HEAD"], where)
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git(["status", "--porcelain", "--untracked-files=no"], where)
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def run_info(choices: Mapping[str, Any] | None, module: Any = None, argv: Sequence[str] | None = None,
             overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """What a run logs beside its resolved config: group choices, parameter counts, git state, command line."""
    info: dict[str, Any] = {
        "choices": {str(k): v for k, v in (choices or {}).items() if not str(k).startswith("hydra")},
        "git": git_state(),
        "command": " ".join(shlex.quote(a) for a in (sys.argv if argv is None else argv)),
        "overrides": list(overrides or []),
    }
    if module is not None:
        params = list(module.parameters())
        info["params"] = {"total": sum(p.numel() for p in params),
                          "trainable": sum(p.numel() for p in params if p.requires_grad)}
    return info


def log_run_info(loggers: Sequence[Any], info: Mapping[str, Any]) -> None:
    """Add `info` to every logger's hyperparameters (W&B: the run config; CSV: hparams.yaml)."""
    for lg in loggers:
        lg.log_hyperparams(dict(info))


def preempted_exit_code(signal_name: str | None) -> int:
    """The exit code a preempted run finishes W&B with: 128 + the signal's number (SIGTERM 143), else 1."""
    try:
        return 128 + int(signal.Signals[str(signal_name)])
    except KeyError:
        return 1


def mark_preempting(loggers: Sequence[Any]) -> bool:
    """Mark every started W&B run of `loggers` as preempting; True if one was marked."""
    marked = False
    for lg in loggers:
        if is_wandb_logger(lg) and getattr(lg, "_experiment", None) is not None:
            lg.experiment.mark_preempting()
            marked = True
    return marked


def finish(loggers: Sequence[Any], exit_code: int) -> None:
    """Finish every W&B run `loggers` started (so the next job of a multirun does not log into it)."""
    for lg in loggers:
        if is_wandb_logger(lg) and getattr(lg, "_experiment", None) is not None:
            lg.experiment.finish(exit_code=exit_code)


class WandbPreempting(Callback):
    """Marks the W&B run preempting at the first training batch end after a preemption callback got its signal
    (before that callback writes the checkpoint, which can take a while on a large model)."""

    def __init__(self, preemption: Sequence[Any]) -> None:
        self.preemption = list(preemption)
        self.marked = False

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Mark once, on rank 0 (the rank holding the W&B run), when any preemption callback has a signal."""
        if self.marked or not trainer.is_global_zero:
            return
        if any(getattr(cb, "received", None) for cb in self.preemption):
            self.marked = mark_preempting(trainer.loggers)
            if self.marked:
                log.warning("marked the W&B run preempting")
