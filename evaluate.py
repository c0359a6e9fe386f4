"""Evaluate a checkpoint on the authors' five tests: `python evaluate.py ckpt_path=<ckpt or export> [tests=rhtpm]`."""

import sys

import hydra
from omegaconf import DictConfig

import dequant.config  # noqa: F401  (registers the config resolvers)
from dequant.evaluation.runner import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; a bad argument (e.g. no ckpt_path) is a one-line error and exit code 2."""
    try:
        evaluate(cfg)
    except ValueError as err:
        print(f"evaluate.py: error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
