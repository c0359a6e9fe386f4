"""The Lightning internals that dequant.callbacks and dequant.training rely on, checked against the installed
Lightning: when a new release changes one of them, this fails and names it (pyproject pins lightning to 2.6.x)."""

from __future__ import annotations

import inspect

import lightning
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

PINNED = (2, 6)  # major, minor


def test_lightning_is_the_pinned_minor_version() -> None:
    version = tuple(int(part) for part in lightning.__version__.split(".")[:2])
    assert version == PINNED, (
        f"lightning {lightning.__version__} is not the pinned {PINNED[0]}.{PINNED[1]}.x: re-check the internals "
        "this file tests (callbacks.StepCheckpoint, callbacks.PreemptionCheckpoint, training.trainer_plugins), then move the pin "
        "in pyproject.toml and PINNED here")


@pytest.mark.parametrize("name", ["_save_checkpoint", "_save_last_checkpoint", "_monitor_candidates",
                                  "_last_global_step_saved", "CHECKPOINT_NAME_LAST", "FILE_EXTENSION"])
def test_model_checkpoint_internals_used_by_step_checkpoint_exist(name: str) -> None:
    holder = ModelCheckpoint(dirpath=".")
    assert hasattr(holder, name), f"ModelCheckpoint.{name} is gone: StepCheckpoint relies on it"


def test_model_checkpoint_private_signatures() -> None:
    assert list(inspect.signature(ModelCheckpoint._save_checkpoint).parameters) == ["self", "trainer", "filepath"]
    assert list(inspect.signature(ModelCheckpoint._save_last_checkpoint).parameters) == [
        "self", "trainer", "monitor_candidates"]


def test_signal_connector_owns_sigusr1_only_with_auto_requeue() -> None:
    """training.trainer_plugins turns SLURM auto-requeue off so that PreemptionCheckpoint alone handles SIGUSR1;
    that works only while Lightning registers its SIGUSR1 handler on `auto_requeue` alone."""
    source = inspect.getsource(_SignalConnector.register_signal_handlers)
    assert "environment.auto_requeue" in source and "_slurm_sigusr_handler_fn" in source


def test_signal_handlers_are_restored_by_the_connector_teardown() -> None:
    """PreemptionCheckpoint installs its handlers in on_train_start (after the connector's) and restores them at
    on_train_end, before the connector's own teardown puts the originals back."""
    assert "_original_handlers" in inspect.getsource(_SignalConnector.teardown)
    assert "_get_current_signal_handlers" in inspect.getsource(_SignalConnector.register_signal_handlers)


def test_hpc_resume_on_slurm_is_what_training_refuses() -> None:
    """With ckpt_path=None on SLURM Lightning resumes from an hpc_ckpt file; training.refuse_hpc_checkpoints stops
    that by refusing folders that hold one."""
    source = inspect.getsource(_CheckpointConnector._parse_ckpt_path)
    assert "SLURMEnvironment.detect()" in source and "_hpc_resume_path" in source
    assert "hpc_ckpt_" in inspect.getsource(_CheckpointConnector)
