"""Evaluate a checkpoint on the authors' five tests: `python evaluate.py ckpt_path=<ckpt or export> [tests=rhtpm]`."""

import hydra
from omegaconf import DictConfig

from dequant.config import run_cli  # importing dequant.config also registers the config resolvers
from dequant.evaluation.runner import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; a bad argument (e.g. no ckpt_path) is a one-line error and exit code 2."""
    run_cli("evaluate.py", lambda: evaluate(cfg))


if __name__ == "__main__":
    main()
