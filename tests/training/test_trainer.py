"""The training loop end to end: one device against a simulated 8-device mesh, against two
processes training together, against a run killed with SIGKILL and resumed; the NaN guard."""

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import filelock
import numpy as np
import pytest

from polyformer.models.gpt import GPT2Config
from polyformer.training import data, objectives, trainer
from polyformer.training.config import RunConfig
from polyformer.training.data import TextData

WORKER = Path(__file__).with_name("worker.py")
pytestmark = pytest.mark.heavy


def run_worker(out_dir, *args, check=True):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    return subprocess.run(
        [sys.executable, str(WORKER), str(out_dir), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        check=check,
        timeout=600,
    )


def train_losses(out_dir) -> dict[int, float]:
    """The last recorded train loss of each step (a resumed run records some steps twice)."""
    losses = {}
    for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["split"] == "train":
            losses[record["step"]] = record["loss"]
    return losses


def params(out_dir) -> dict[str, np.ndarray]:
    with np.load(Path(out_dir) / "params.npz") as f:
        return {name: f[name] for name in f.files}


def assert_same_run(got_dir, want_dir, rtol):
    got, want = train_losses(got_dir), train_losses(want_dir)
    assert sorted(got) == sorted(want) == list(range(1, 9))
    np.testing.assert_allclose([got[s] for s in want], list(want.values()), rtol=rtol)
    got, want = params(got_dir), params(want_dir)
    assert sorted(got) == sorted(want)
    for name, b in want.items():
        if name.endswith("attn.key.bias"):
            # softmax ignores a shift shared by all keys, so the key bias's exact gradient is 0 and
            # what it gets is rounding noise, which Adam scales up to learning-rate-sized steps.
            # Different reduction orders give different noise; the bias stays near 0 either way.
            assert np.abs(got[name]).max() < 1e-3 and np.abs(b).max() < 1e-3
            continue
        np.testing.assert_allclose(
            got[name], b, rtol=rtol, atol=rtol * np.abs(b).max(), err_msg=name
        )


@pytest.fixture(scope="session")
def single_device_run(tmp_path_factory, worker_id) -> Path:
    """The worker's run on one device, the reference of this module's runs and of
    test_preemption's: made once per pytest run, in a folder the run's pytest-xdist workers
    share (the parent of their own), the first to need it making it under a lock."""
    root = tmp_path_factory.getbasetemp()
    out = (root if worker_id == "master" else root.parent) / "single_device_run"
    with filelock.FileLock(f"{out}.lock"):
        if not (out / "params.npz").is_file():
            shutil.rmtree(out, ignore_errors=True)  # what a failed attempt left would resume
            run_worker(out)
    return out


def test_eight_simulated_devices_match_one(single_device_run, tmp_path):
    run_worker(tmp_path, "--devices", 8, "--mesh", "2,2,2")
    assert_same_run(tmp_path, single_device_run, rtol=1e-5)


def run_processes(out_dir, count: int = 2, first: tuple = ()) -> list[tuple[int, str]]:
    """The worker as `count` processes of one run (jax.distributed over this host, 2 simulated
    devices each), process 0 with the extra arguments `first`; (return code, output) of each."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                str(out_dir),
                *("--num-processes", str(count), "--process-id", str(i)),
                *("--port", str(port), "--devices", "2"),
                *(map(str, first) if i == 0 else ()),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(count)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    return [(p.returncode, out) for p, out in zip(procs, outputs, strict=True)]


def test_two_processes_train_together_like_one(single_device_run, tmp_path):
    ran = run_processes(tmp_path)
    assert all(code == 0 for code, _ in ran), "".join(out[-3000:] for _, out in ran)
    assert_same_run(tmp_path, single_device_run, rtol=1e-5)


@pytest.mark.parametrize(
    "resume_on", [(), ("--devices", 8, "--mesh", "2,2,2")], ids=["same", "mesh"]
)
def test_sigkill_then_resume_gives_the_uninterrupted_run(single_device_run, tmp_path, resume_on):
    killed = run_worker(tmp_path, "--kill-at-step", 5, check=False)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert max(train_losses(tmp_path)) == 5
    # The same command again resumes from the step-4 checkpoint: on the same single device, or
    # restored onto an 8-device mesh with data, fsdp and tensor axes.
    run_worker(tmp_path, *resume_on)
    got, want = train_losses(tmp_path), train_losses(single_device_run)
    if not resume_on:
        assert [got[s] for s in range(5, 9)] == [want[s] for s in range(5, 9)]
        got, want = params(tmp_path), params(single_device_run)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    else:
        assert_same_run(tmp_path, single_device_run, rtol=1e-5)


@pytest.mark.parametrize(
    ("every", "saved"), [(2, "Last good checkpoint: step 4"), (100, "No checkpoint was saved")]
)
def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch, every, saved
):
    tokens = np.random.default_rng(0).integers(0, 256, 5000).astype(np.uint16)
    corpus = data.LMCorpus(data.byte_tokenizer(), None, {"train": tokens, "validation": tokens})
    poisoned_step = 5

    def poisoned(model, batch, rngs):
        loss, aux = objectives.lm.causal_lm(model, batch, rngs)
        return loss + batch["poison"][0], aux

    @dataclasses.dataclass(frozen=True)
    class PoisonedData(data.LMData):
        """Adds a "poison" term to the loss: inf at one step, 0 elsewhere."""

        def train_iterator(self, *args):
            inner = super().train_iterator(*args)

            class Poison:
                def __next__(self):
                    step = inner.get_state()["next_index"] + 1
                    batch = next(inner)
                    value = np.inf if step == poisoned_step else 0.0
                    rows = batch["inputs"].shape[0]
                    return dict(batch, poison=np.full((rows,), value, np.float32))

                get_state, set_state = inner.get_state, inner.set_state

            return Poison()

    lm = PoisonedData(corpus, seq_len=8)
    monkeypatch.setitem(objectives.OBJECTIVES, "causal_lm", objectives.Objective(poisoned))
    config = RunConfig(
        model=dataclasses.replace(GPT2Config.tiny(), n_positions=8, n_embd=16, n_head=2, n_layer=1),
        data=TextData(seq_len=8),
        steps=10,
        batch_size=4,
        checkpoint_every=every,
        eval_every=100,
        log_every=1,
        out_dir=str(tmp_path),
    )
    job = trainer.Trainer(config, lm)
    with pytest.raises(trainer.TrainingDiverged, match=f"at step 5.*{saved}"):
        job.run(progress=False)
    assert job.checkpointer.latest_step() == (4 if every == 2 else None)


def test_a_packed_corpus_trains(tmp_path):
    """TextData(pack=True)'s batches (segment ids, positions, weights) go through the compiled
    train and eval steps of a tiny GPT-2."""
    rng = np.random.default_rng(0)
    end = 256  # the byte tokenizer's <|endoftext|>
    docs = [[*rng.integers(0, 256, n - 1), end] for n in rng.integers(2, 12, 400)]
    tokens = np.concatenate(docs).astype(np.uint16)
    corpus = data.LMCorpus(data.byte_tokenizer(), None, {"train": tokens, "validation": tokens})
    config = RunConfig(
        model=dataclasses.replace(GPT2Config.tiny(), n_positions=8, n_embd=16, n_head=2, n_layer=1),
        data=TextData(seq_len=8, pack=True),
        steps=4,
        batch_size=4,
        eval_every=2,
        eval_batches=2,
        log_every=1,
        out_dir=str(tmp_path),
    )
    result = trainer.Trainer(config, data.LMData(corpus, 8, pack=True)).run(progress=False)
    assert result.final_step == 4 and sorted(train_losses(tmp_path)) == [1, 2, 3, 4]
    assert np.isfinite(result.train_loss) and np.isfinite(result.eval_loss)
