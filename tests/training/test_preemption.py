"""SIGTERM (TPU maintenance events, schedulers) ends a run cleanly at a checkpoint, one process or
all processes of a multi-host run at one step, and the same command resumes it to the losses of
an uninterrupted run; `--profile-steps` traces a step range."""

import dataclasses
import re

import numpy as np
import pytest

from polyformer import cli
from polyformer.models.gpt import GPT2Config
from polyformer.training import data, trainer
from polyformer.training.config import RunConfig
from polyformer.training.data import TextData
from tests.training.test_trainer import (
    assert_same_run,
    params,
    run_processes,
    run_worker,
    single_device_run,
    train_losses,
)

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


def test_a_sigterm_to_one_process_of_two_stops_both_at_one_step_and_they_resume(
    single_device_run, tmp_path
):
    """JAX's preemption service tells every process of the run; they agree on a step, save it
    together and exit 0, and the same command resumes them to the uninterrupted run."""
    stopped = run_processes(tmp_path, first=("--term-at-step", 5))
    assert all(code == 0 for code, _ in stopped), "".join(out[-3000:] for _, out in stopped)
    saved = re.findall(r"saved the checkpoint of step (\d+)", stopped[0][1])
    assert len(saved) == 1 and 6 <= int(saved[0]) < 8, stopped[0][1][-3000:]
    assert max(train_losses(tmp_path)) == int(saved[0])
    resumed = run_processes(tmp_path)
    assert all(code == 0 for code, _ in resumed), "".join(out[-3000:] for _, out in resumed)
    assert_same_run(tmp_path, single_device_run, rtol=1e-5)


@pytest.mark.parametrize("text", ["5:2", "x", "3", "0:2", "2:y"])
def test_a_bad_profile_range_is_one_error_before_training(text, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parser().parse_args(["train", "config.py", "--profile-steps", text])
    assert exit_info.value.code == 2
    assert f"step range {text!r}: expected" in capsys.readouterr().err


def test_profile_steps_writes_a_trace_tensorboard_opens(tmp_path):
    assert cli.parser().parse_args(["train", "c.py", "--profile-steps", "2:3"]).profile_steps == (
        2,
        3,
    )
    tokens = np.random.default_rng(0).integers(0, 256, 5000).astype(np.uint16)
    corpus = data.LMCorpus(data.byte_tokenizer(), None, {"train": tokens, "validation": tokens})
    config = RunConfig(
        model=dataclasses.replace(GPT2Config.tiny(), n_positions=8, n_embd=16, n_head=2, n_layer=1),
        data=TextData(seq_len=8),
        steps=3,
        batch_size=4,
        eval_every=100,
        log_every=1,
        out_dir=str(tmp_path),
    )
    job = trainer.Trainer(config, data.LMData(corpus, seq_len=8))
    with pytest.raises(trainer.BadStepRange, match="<= 3"):
        job.run(progress=False, profile_steps=(2, 4))
    job.run(progress=False, profile_steps=(2, 3))
    assert list((tmp_path / "profile").glob("plugins/profile/*/*.xplane.pb"))
