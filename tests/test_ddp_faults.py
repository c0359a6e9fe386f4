"""Preemption under DDP, as SLURM delivers it: a 2-process `trainer=ddp_cpu` run (gloo) gets SIGTERM on its whole
process group. Both ranks stop after the same step, one `last.ckpt` is written, train.py exits 0, and
`ckpt_path=last` (again on 2 processes) continues exactly: preempted once more, through rank 1 alone (a signal that
reaches the ranks at different times, which rank 0 must follow), its `last.ckpt` is bit for bit the uninterrupted
run's checkpoint of that step, each rank having seen the same batches. The uninterrupted run also checks that both
ranks log the same validation metrics.

A file of its own so that the test runner can run it beside test_faults.py (both are mostly waiting on processes).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from test_faults import (
    MAX_STEPS,
    _ckpt,
    _launch,
    _wait_for,
    assert_same_training_state,
    end_leftover_runs,
)

from dequant.callbacks import checkpoint_problem, read_batch_log

DDP = ("trainer=ddp_cpu", "trainer.devices=2")
STOP_AFTER = 4  # SIGTERM once step 4's checkpoint exists


def _rank_log(run: Path, rank: int) -> Path:
    return run / ("batches.jsonl" if rank == 0 else f"batches.jsonl.rank{rank}")


def _rank_1(rank_0: int, timeout: float = 120.0) -> int:
    """The pid of rank 1: the process that train.py (rank 0) launched."""
    deadline = time.monotonic() + timeout
    while True:
        children = [int(pid) for task in Path(f"/proc/{rank_0}/task").iterdir()
                    for pid in (task / "children").read_text().split()]
        if children:
            assert len(children) == 1, children  # no data workers in these runs
            return children[0]
        assert time.monotonic() < deadline, "rank 1 did not start"
        time.sleep(0.05)


def _stopped_together(run: Path, log: Path) -> int:
    """Both ranks ran their last step at the same step, the one last.ckpt follows; returns that checkpoint's step."""
    stopped_at = _ckpt(run / "checkpoints" / "last.ckpt")["global_step"]
    last_steps = [max(read_batch_log(_rank_log(run, rank))) for rank in (0, 1)]
    assert last_steps == [stopped_at - 1, stopped_at - 1], (last_steps, log.read_text()[-3000:])
    return stopped_at


@pytest.fixture(autouse=True)
def kill_leftover_runs():
    """After the test: no rank it started is left running (a rank waiting for its peer would wait for ever)."""
    yield
    end_leftover_runs()


def _wait(proc, log: Path, timeout: float = 240.0) -> int:
    try:
        return proc.wait(timeout=timeout)
    except Exception:
        pytest.fail(f"train.py did not end within {timeout} s:\n" + log.read_text()[-3000:])


@pytest.mark.slow
@pytest.mark.timeout(900)  # three 2-process runs (two of them side by side): the suite's longest test
def test_sigterm_to_a_ddp_run_stops_both_ranks_together_then_resumes_exactly(tmp_path: Path) -> None:
    ref, run = tmp_path / "reference", tmp_path / "run"
    metric_log = tmp_path / "metrics.jsonl"
    # The uninterrupted run and the one to preempt run side by side.
    ref_log, run_log = tmp_path / "reference.log", tmp_path / "run.log"
    reference = _launch(ref, ref_log, *DDP, "callbacks.model_checkpoint.checkpoints_total_limit=null",
                        "+callbacks.metric_log._target_=dequant.callbacks.MetricLog",
                        f"+callbacks.metric_log.path={metric_log}")
    proc = _launch(run, run_log, *DDP)
    _wait_for(run / "checkpoints" / f"step{STOP_AFTER:07d}.ckpt", proc, run_log)
    os.killpg(proc.pid, signal.SIGTERM)  # rank 0 (train.py) and rank 1 (the process it launched) alike
    assert _wait(proc, run_log) == 0, run_log.read_text()[-3000:]
    assert _wait(reference, ref_log) == 0, ref_log.read_text()[-3000:]

    text = run_log.read_text()
    assert "received SIGTERM: saved" in text and "resume with ckpt_path=last" in text, text[-3000:]
    assert "killed by signal" not in text and "Traceback" not in text, text[-3000:]
    stopped_at = _stopped_together(run, run_log)
    assert STOP_AFTER < stopped_at < MAX_STEPS - 3
    # One last.ckpt (rank 0 writes it), intact; no Lightning auto-requeue checkpoint, the lock released.
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert [n for n in names if n.startswith("last")] == ["last.ckpt"] and not any(n.startswith(".") for n in names)
    assert checkpoint_problem(run / "checkpoints" / "last.ckpt") is None
    assert not list(run.rglob("hpc_ckpt*")) and not (run / ".dequant.lock").exists()
    assert_same_training_state(ref / "checkpoints" / f"step{stopped_at:07d}.ckpt", run / "checkpoints" / "last.ckpt")

    # Resumed, and preempted again through rank 1 alone: rank 0 learns it in the next step's vote and stops too.
    again_log = tmp_path / "again.log"
    again = _launch(run, again_log, *DDP, "ckpt_path=last")
    _wait_for(run / "checkpoints" / f"step{stopped_at + 2:07d}.ckpt", again, again_log)
    os.kill(_rank_1(again.pid), signal.SIGTERM)
    assert _wait(again, again_log) == 0, again_log.read_text()[-3000:]
    assert "received a signal on another rank: saved" in again_log.read_text(), again_log.read_text()[-3000:]
    stopped_again = _stopped_together(run, again_log)
    assert stopped_at + 2 < stopped_again < MAX_STEPS
    # Resumed exactly: the state after that step is the uninterrupted run's, bit for bit, and every step so far saw
    # the same batch on each rank.
    assert_same_training_state(ref / "checkpoints" / f"step{stopped_again:07d}.ckpt",
                               run / "checkpoints" / "last.ckpt")
    for rank in (0, 1):
        a, b = read_batch_log(_rank_log(ref, rank)), read_batch_log(_rank_log(run, rank))
        assert sorted(b) == list(range(stopped_again)) and all(a[s] == b[s] for s in b), rank
    a, b = read_batch_log(_rank_log(ref, 0)), read_batch_log(_rank_log(ref, 1))
    assert sorted(a) == sorted(b) == list(range(MAX_STEPS)) and all(a[s] != b[s] for s in a)  # ranks differ

    # The ranks split the fixed validation set and torchmetrics sums their accumulators: both log the whole set's
    # numbers, every one of them, per setting and best-so-far alike.
    rows = {rank: [json.loads(line) for line in path.read_text().splitlines()]
            for rank, path in ((0, metric_log), (1, metric_log.with_name(metric_log.name + ".rank1")))}
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == [6, 12]
    for r0, r1 in zip(rows[0], rows[1]):
        keys = {k for k in r0["metrics"] if k.startswith("val/")}
        assert {"val/loss", "val/psnr", "val/psnr_best", "val/r/N4/psnr", "val/r_tex/N64/ssim"} <= keys, r0
        assert {k: r0["metrics"][k] for k in keys} == {k: r1["metrics"][k] for k in keys}
