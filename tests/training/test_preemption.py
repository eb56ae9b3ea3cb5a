"""SIGTERM (TPU maintenance events, schedulers) ends a run cleanly at a checkpoint, and the same
command resumes it to the losses of an uninterrupted run."""

import numpy as np
import pytest

from tests.training.test_trainer import params, run_worker, single_device_run, train_losses

pytestmark = pytest.mark.heavy
__all__ = ["single_device_run"]


def test_sigterm_saves_the_current_step_exits_0_and_resumes_to_the_same_run(
    single_device_run, tmp_path
):
    # The signal arrives while the batch of step 6 is fetched: step 6 finishes and is saved
    # although checkpoint_every is 2.
    stopped = run_worker(tmp_path, "--term-at-step", 5, check=False)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert f"saved the checkpoint of step 6 in {tmp_path / 'checkpoints'}" in stopped.stdout
    assert max(train_losses(tmp_path)) == 6
    assert (
        sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())[-1]
        == 6
    )
    run_worker(tmp_path)
    got, want = train_losses(tmp_path), train_losses(single_device_run)
    assert [got[s] for s in range(1, 9)] == [want[s] for s in range(1, 9)]
    got, want = params(tmp_path), params(single_device_run)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
