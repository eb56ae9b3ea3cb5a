"""Every family in FAMILIES x every kernel family: a tiny config survives save_pretrained /
from_pretrained, the kernel swaps at load, jit changes nothing, bfloat16 computation keeps
float32 outputs, and the Trainer takes a step with the family's default objective."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from flax import nnx

import polyformer as pf
from polyformer import attention as A
from polyformer.attention import MultiHeadAttention
from polyformer.models import FAMILIES
from polyformer.models.tapas.tokenizer import TapasTokenizer
from polyformer.training import trainer
from polyformer.training.config import RunConfig, apply_overrides
from polyformer.training.data import ArrayData
from polyformer.training.objectives import OBJECTIVES

KERNELS = {
    "dense": A.Dense(),
    "sparse": A.Sparse(A.patterns.band(3) | A.patterns.global_tokens([0]), block=4),
    "favor": A.Favor(num_features=16),
}


def inputs(model_type: str, config) -> dict[str, np.ndarray]:
    """A batch of two for the family's model, HF input names."""
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(2, 3, 20, 20)).astype(np.float32)
    if model_type == "gpt2":
        return {"input_ids": rng.integers(0, config.vocab_size, (2, 9))}
    if model_type == "vit":
        return {"pixel_values": pixels}
    if model_type == "clip":
        ids = rng.integers(0, config.text_config.vocab_size, (2, 7))
        ids[:, -1] = config.text_config.eos_token_id
        return {
            "input_ids": ids,
            "pixel_values": rng.normal(size=(2, 3, 20, 20)).astype(np.float32),
        }
    if model_type == "wav2vec2":
        return {"input_values": rng.normal(size=(2, 1600)).astype(np.float32)}
    token_types = np.zeros((2, 11, 7), np.int32)
    token_types[:, 4:, 1] = np.arange(7) % 3 + 1  # column ids
    token_types[:, 4:, 2] = np.arange(7) // 3 + 1  # row ids
    return {"input_ids": rng.integers(0, config.vocab_size, (2, 11)), "token_type_ids": token_types}


def first_output(out) -> jax.Array:
    """The family's main output: logits, similarity logits or the last hidden state."""
    for name in ("logits", "logits_per_image", "last_hidden_state"):
        if getattr(out, name, None) is not None:
            return getattr(out, name)
    raise AssertionError(f"no known output field in {type(out).__name__}")


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def saved(request, tmp_path_factory):
    """(model_type, a tiny model of the family, the directory save_pretrained wrote it to)."""
    family = FAMILIES[request.param]
    model = family.build(family.config.tiny(), rngs=nnx.Rngs(0))
    directory = tmp_path_factory.mktemp(request.param)
    pf.save_pretrained(model, directory)
    return request.param, model, directory


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_a_tiny_model_round_trips_under_every_kernel(saved, kernel):
    model_type, model, directory = saved
    batch = {k: jnp.asarray(v) for k, v in inputs(model_type, model.config).items()}
    loaded = pf.from_pretrained(directory, attention=KERNELS[kernel])
    kernels = [m.kernel for _, m in nnx.iter_graph(loaded) if isinstance(m, MultiHeadAttention)]
    assert kernels and all(k == KERNELS[kernel] for k in kernels)
    assert type(loaded) is type(model)
    assert loaded.config == dataclasses.replace(model.config, attention=KERNELS[kernel])
    eager = first_output(loaded(**batch))
    jitted = first_output(nnx.jit(lambda m, b: m(**b))(loaded, batch))
    np.testing.assert_allclose(jitted, eager, atol=1e-5, rtol=1e-5)
    assert np.all(np.isfinite(eager))
    if kernel == "dense":  # the saved model's own kernel is Dense
        np.testing.assert_allclose(eager, first_output(model(**batch)), atol=1e-6, rtol=0)


def test_bfloat16_computation_keeps_float32_outputs(saved):
    model_type, model, directory = saved
    batch = {k: jnp.asarray(v) for k, v in inputs(model_type, model.config).items()}
    loaded = pf.from_pretrained(directory, dtype=jnp.bfloat16)
    params = jax.tree.leaves(nnx.state(loaded, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)
    assert loaded.config.dtype == jnp.bfloat16
    out = first_output(nnx.jit(lambda m, b: m(**b))(loaded, batch))  # eagerly: op by op compiles
    assert out.dtype == jnp.float32 and np.all(np.isfinite(out))
    want = first_output(model(**batch))
    np.testing.assert_allclose(out, want, atol=0.1 * float(jnp.max(jnp.abs(want))) + 0.05)


def test_every_familys_objectives_are_training_objectives():
    for family in FAMILIES.values():
        assert family.objectives and set(family.objectives) <= set(OBJECTIVES)


# The kernel families by the names a run config gives them.
RUN_ATTENTION = {"dense": "dense", "sparse": "longformer", "favor": "favor"}


def tapas_batch() -> dict[str, np.ndarray]:
    """Two questions about a two-row table, encoded with their answers as the WTQ loss of the
    tiny config needs them (labels, float_answer, numeric values)."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[EMPTY]", "what", "is", "n", "of",
             "a", "b", "name", "?", "1", "2"]  # fmt: skip
    tokenizer = TapasTokenizer({w: i for i, w in enumerate(words)}, model_max_length=32)
    table = pd.DataFrame({"name": ["a", "b"], "n": ["1", "2"]})
    return tokenizer(
        table, ["what is n of a?", "what is n of b?"], answer_coordinates=[[(0, 1)], [(1, 1)]],
        answer_text=[["1"], ["2"]], float_answer=[np.nan, np.nan], padding="max_length",
    )  # fmt: skip


def objective_batch(model_type: str, config) -> dict[str, np.ndarray]:
    """A batch of two for the family's default objective."""
    rng = np.random.default_rng(1)
    batch = inputs(model_type, config)
    if model_type == "gpt2":
        return {"inputs": batch["input_ids"][:, :-1], "targets": batch["input_ids"][:, 1:]}
    if model_type == "vit":
        return {**batch, "labels": rng.integers(0, config.num_labels, 2)}
    if model_type == "clip":
        return {**batch, "attention_mask": np.ones_like(batch["input_ids"])}
    if model_type == "wav2vec2":
        mask = np.ones(batch["input_values"].shape, np.int32)
        labels = rng.integers(5, config.vocab_size, (2, 3))
        return {**batch, "attention_mask": mask, "labels": labels}
    return tapas_batch()


@dataclasses.dataclass(frozen=True)
class OneBatch:
    """A data config whose training and evaluation sets are one batch."""

    batch: dict

    def load(self) -> ArrayData:
        return ArrayData(self.batch, self.batch, tokens_per_example=1)


# A train step compiles the model's gradient: 20-100 s a case on a shared 2-core machine. Dense
# runs in every suite; sparse and FAVOR+, whose forward the tests above already cover, are heavy.
TRAIN_KERNELS = [k if k == "dense" else pytest.param(k, marks=pytest.mark.heavy) for k in KERNELS]


@pytest.mark.parametrize("kernel", TRAIN_KERNELS)
def test_the_trainer_takes_a_step_with_the_default_objective(saved, kernel, tmp_path):
    model_type, model, _ = saved
    batch = objective_batch(model_type, model.config)
    run = RunConfig(
        model=model.config, data=OneBatch(batch), attention=RUN_ATTENTION[kernel], steps=1,
        batch_size=2, out_dir=str(tmp_path),
    )  # fmt: skip
    assert run.objective_name == FAMILIES[model_type].objectives[0]
    job = trainer.Trainer(run, run.data.load())
    state, iterator = job.initial_state()
    state, metrics = job.train_step(state, job.global_batch(next(iterator)))
    job.checkpointer.close()
    assert int(state.step) == 1 and bool(metrics["finite"])
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0


def test_the_trainer_takes_a_step_with_scanned_layers(tmp_path):
    config = FAMILIES["gpt2"].config.tiny()
    run = RunConfig(
        model=config, data=OneBatch(objective_batch("gpt2", config)), steps=1, batch_size=2,
        out_dir=str(tmp_path),
    )  # fmt: skip
    run = apply_overrides(run, ["model.scan_layers=true"])
    assert run.model.scan_layers
    job = trainer.Trainer(run, run.data.load())
    state, iterator = job.initial_state()
    state, metrics = job.train_step(state, job.global_batch(next(iterator)))
    job.checkpointer.close()
    assert int(state.step) == 1 and bool(metrics["finite"]) and float(metrics["grad_norm"]) > 0
