"""Evaluate a checkpoint on the authors' five tests: `python evaluate.py ckpt_path=<ckpt or export> [tests=rhtpm]`."""

from pathlib import Path

from dequant.cli import evaluate_task, hydra_app

# Composes from this checkout's conf/, so edits to it take effect without reinstalling.
main = hydra_app(evaluate_task, "evaluate", config_path=str(Path(__file__).resolve().parent / "conf"))

if __name__ == "__main__":
    main()
