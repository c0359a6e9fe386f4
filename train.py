"""Train a dequantization diffusion model: `python train.py experiment=demo` (see README.md); also `dequant-train`."""

from pathlib import Path

from dequant.cli import hydra_app, train_task

# Composes from this checkout's conf/, so edits to it take effect without reinstalling.
main = hydra_app(train_task, "train", config_path=str(Path(__file__).resolve().parent / "conf"))

if __name__ == "__main__":
    main()
