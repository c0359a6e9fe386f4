"""Train a dequantization diffusion model: `python train.py experiment=demo` (see README.md)."""

import hydra
from omegaconf import DictConfig

from dequant.config import run_cli  # importing dequant.config also registers the config resolvers
from dequant.training import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the optimized metric for sweepers (optuna) when `optimized_metric` is set.

    Bad input (a bad path, value or checkpoint) is a one-line error and exit code 2; other failures keep their
    traceback."""
    result = run_cli("train.py", lambda: train(cfg))
    metric = cfg.get("optimized_metric")
    return result["metrics"].get(metric) if metric else None


if __name__ == "__main__":
    main()
