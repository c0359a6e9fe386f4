"""A 2-node job on this machine (issue 26): two train.py processes with the variables SLURM sets for a 2-node job of
one task per node, gloo over the loopback. It trains, validates, checkpoints once and resumes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(run_dir: Path, log: Path, *overrides: str) -> list[subprocess.CompletedProcess]:
    """Run both "nodes" of the job at once; their finished processes."""
    common = {
        "SLURM_JOB_ID": str(40000 + os.getpid() % 10000), "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "2", "SLURM_NODELIST": "127.0.0.1", "SLURM_LOCALID": "0",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "train.py", "experiment=tiny", "trainer=ddp_cpu", "trainer.devices=1",
           "trainer.num_nodes=2", "sampler=ddim", "sampler.steps=2", "data.n_val=2", "data.num_workers=1",
           "trainer.val_check_interval=2", "callbacks.model_checkpoint.every_n_train_steps=2",
           f"hydra.run.dir={run_dir}", "+callbacks.metric_log._target_=dequant.callbacks.MetricLog",
           f"+callbacks.metric_log.path={log}", *overrides]
    procs = []
    for node in range(2):
        env = {**os.environ, **common, "SLURM_NODEID": str(node), "SLURM_PROCID": str(node)}
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=400)
        done.append(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
    return done


@pytest.mark.slow
def test_two_nodes_train_validate_checkpoint_once_and_resume(tmp_path: Path) -> None:
    log = tmp_path / "metric_log.jsonl"
    first = _two_nodes(tmp_path, log, "trainer.max_steps=4")
    for proc in first:
        assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["global_step"] == 4
    # Rank 0 writes the checkpoints (and the photo listing the other rank waited for), once.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt", "step0000002.ckpt",
                                                                         "step0000004.ckpt"]
    assert (tmp_path / "listing.npz").is_file()
    assert "MEMBER: 2/2" in first[1].stderr + first[1].stdout  # Lightning saw the SLURM job's second task
    ranks = [[json.loads(line) for line in path.read_text().splitlines()]
             for path in (log, log.with_name(log.name + ".rank1"))]
    assert [r["step"] for r in ranks[0]] == [r["step"] for r in ranks[1]] == [2, 4]
    assert ranks[0][-1]["metrics"]["val/loss"] == ranks[1][-1]["metrics"]["val/loss"]
    # Both nodes resume from the one checkpoint.
    second = _two_nodes(tmp_path, log, "trainer.max_steps=6", "ckpt_path=last")
    for proc in second:
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.load(ckpt, weights_only=False)["global_step"] == 6
    ranks = [[json.loads(line) for line in path.read_text().splitlines()]
             for path in (log, log.with_name(log.name + ".rank1"))]
    assert [r["step"] for r in ranks[0]][-1] == [r["step"] for r in ranks[1]][-1] == 6
