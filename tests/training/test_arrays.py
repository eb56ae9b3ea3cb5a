"""In-memory training data (ArrayData) and the trainer on a data config other than text."""

import dataclasses
import textwrap

import numpy as np
import pytest

import polyformer as pf
from polyformer import cli
from polyformer.training.data import ArrayData, array_dataset


def arrays(n: int = 10) -> dict[str, np.ndarray]:
    return {"x": np.arange(n * 2).reshape(n, 2), "y": np.arange(n)}


def test_an_epoch_visits_every_row_once_and_rows_stay_paired():
    ds = array_dataset(arrays(), global_batch=5, seed=3)
    epoch = [ds[step] for step in range(2)]
    seen = np.concatenate([b["y"] for b in epoch])
    assert sorted(seen) == list(range(10)) and list(seen) != list(range(10))
    for batch in epoch:
        np.testing.assert_array_equal(batch["x"][:, 0], 2 * batch["y"])
    assert not np.array_equal(ds[2]["y"], ds[0]["y"])  # the next epoch is shuffled anew


def test_hosts_hold_contiguous_blocks_of_the_same_global_batch():
    whole = array_dataset(arrays(), global_batch=4, seed=0, process_index=0, process_count=1)
    parts = [
        array_dataset(arrays(), global_batch=4, seed=0, process_index=h, process_count=2)
        for h in range(2)
    ]
    for step in range(5):
        joined = np.concatenate([p[step]["y"] for p in parts])
        np.testing.assert_array_equal(joined, whole[step]["y"])


def test_transform_is_reproducible_and_an_iterator_resumes_exactly():
    def jitter(batch, rng):
        return dict(batch, x=batch["x"] + rng.normal(size=batch["x"].shape))

    data = ArrayData(arrays(), arrays(4), tokens_per_example=2, transform=jitter)
    first = data.train_iterator(2, seed=1, shard_index=0, shard_count=1)
    batches = [next(first) for _ in range(3)]
    state = first.get_state()
    following = next(first)
    again = data.train_iterator(2, seed=1, shard_index=0, shard_count=1)
    np.testing.assert_array_equal(next(again)["x"], batches[0]["x"])
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["x"], following["x"])
    assert not np.array_equal(batches[0]["x"] % 1, np.zeros((2, 2)))  # the transform ran
    np.testing.assert_array_equal(data.eval_batches(2, 5)[1]["y"], [2, 3])  # eval: in order


def test_bad_arrays_are_refused():
    with pytest.raises(ValueError, match="differ in their number of rows"):
        ArrayData({"x": np.zeros(3), "y": np.zeros(4)}, {"x": np.zeros(1), "y": np.zeros(1)}, 1)
    with pytest.raises(ValueError, match="differ in names"):
        ArrayData({"x": np.zeros(3)}, {"y": np.zeros(3)}, 1)
    with pytest.raises(ValueError, match="do not fill one global batch"):
        array_dataset(arrays(3), global_batch=4, seed=0)


CONFIG = """
import dataclasses

import numpy as np

from polyformer.models.gpt import GPT2Config
from polyformer.training.config import RunConfig
from polyformer.training.data import ArrayData


@dataclasses.dataclass(frozen=True)
class Counting:
    # Sequences that count up from a random start modulo 16: easy to learn.
    examples: int = 64

    def load(self):
        starts = np.random.default_rng(0).integers(0, 16, self.examples)
        rows = (starts[:, None] + np.arange(9)) % 16
        pairs = {"inputs": rows[:, :-1], "targets": rows[:, 1:]}
        return ArrayData(pairs, pairs, tokens_per_example=8, model_overrides={"vocab_size": 16})


def config():
    model = GPT2Config(n_positions=8, n_embd=16, n_layer=1, n_head=2)
    return RunConfig(
        model=model, data=Counting(), steps=6, batch_size=8, eval_every=3, eval_batches=2,
        checkpoint_every=3, log_every=3, out_dir=OUT,
    )
"""


def test_polyformer_train_runs_a_config_whose_data_is_arrays(tmp_path, capsys):
    file = tmp_path / "counting.py"
    file.write_text(textwrap.dedent(CONFIG).replace("OUT", repr(str(tmp_path / "run"))))
    assert cli.main(["train", str(file), "--set", "data.examples=32"]) == 0
    out = capsys.readouterr().out
    assert "step 6: train loss" in out and "sample" not in out  # no tokenizer, no sample
    assert f"generate {tmp_path / 'run' / 'model'}" in out  # how to try the exported model
    model = pf.from_pretrained(tmp_path / "run" / "model")
    assert model.config.vocab_size == 16 and model.config.n_layer == 1
    assert dataclasses.asdict(model.config)["n_positions"] == 8


def test_every_model_family_says_how_to_try_a_trained_model():
    assert set(cli._TRY) == set(pf.hub.FAMILIES)
