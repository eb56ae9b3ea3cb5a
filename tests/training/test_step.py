import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from polyformer import lora
from polyformer.models.gpt import GPT2Config, GPT2LMHeadModel
from polyformer.training import objectives, optim, step, trainer
from polyformer.training.config import RunConfig
from polyformer.training.data import TextData

CONFIG = dataclasses.replace(
    GPT2Config.tiny(), n_positions=16, n_embd=32, n_head=4, n_layer=2, vocab_size=64,
    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
)  # fmt: skip


def batch(rows=8):
    tokens = jax.random.randint(jax.random.key(1), (rows, 17), 0, CONFIG.vocab_size)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}


def run_steps(model_config, accumulation_steps, steps=3):
    model = GPT2LMHeadModel(model_config, rngs=nnx.Rngs(0))
    model.train()
    graphdef, params = nnx.split(model, nnx.Param)
    opt = optim.make_optimizer(optim.OptimizerConfig(warmup_steps=1), 10)
    state = step.init_state(params, opt, jax.random.key(0))
    train_step = jax.jit(
        step.make_train_step(graphdef, objectives.lm.causal_lm, opt, accumulation_steps)
    )
    for _ in range(steps):
        state, metrics = train_step(state, batch())
    return state, metrics


def test_accumulated_micro_batches_equal_one_big_batch():
    one, m1 = run_steps(CONFIG, 1)
    four, m4 = run_steps(CONFIG, 4)
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(four.params), jax.tree.leaves(one.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bfloat16_compute_keeps_float32_master_weights():
    run = RunConfig(model=CONFIG, precision="bfloat16", data=TextData(seq_len=16))
    model_config = trainer.model_config(run, {})
    model = GPT2LMHeadModel(model_config, rngs=nnx.Rngs(0))
    out = model(batch()["inputs"], output_hidden_states=True)
    assert all(h.dtype == jnp.bfloat16 for h in out.hidden_states)
    assert out.logits.dtype == jnp.float32
    state, metrics = run_steps(model_config, 1)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
    assert bool(metrics["finite"]) and np.isfinite(metrics["loss"])


def test_schedule_warms_up_then_decays_to_the_end_ratio():
    config = optim.OptimizerConfig(learning_rate=1.0, warmup_steps=10, end_lr_ratio=0.1)
    lr = optim.schedule(config, 100)
    assert lr(0) == 0.0 and lr(10) == pytest.approx(1.0)
    assert lr(55) < lr(20) < 1.0 and lr(100) == pytest.approx(0.1)


def test_batches_that_do_not_split_into_micro_batches_are_refused():
    with pytest.raises(ValueError, match="does not split into 3"):
        run_steps(CONFIG, 3, steps=1)


def lora_losses(dropout: float, seeds: tuple[int, ...]) -> list[list[float]]:
    """Two steps training LoRA adapters on a model without dropout of its own, per root seed."""
    model = GPT2LMHeadModel(CONFIG, rngs=nnx.Rngs(0))
    lora.apply(model, lora.LoraConfig(rank=2, dropout=dropout), rngs=nnx.Rngs(1))
    model.train()
    graphdef, params = nnx.split(model)
    opt = optim.make_optimizer(optim.OptimizerConfig(learning_rate=1e-2, warmup_steps=0), 10)
    train_step = jax.jit(
        step.make_train_step(graphdef, objectives.lm.causal_lm, opt, trainable=lora.LoRAParam)
    )
    runs = []
    for seed in seeds:
        state = step.init_state(params, opt, jax.random.key(seed), lora.LoRAParam)
        losses = []
        for _ in range(2):
            state, metrics = train_step(state, batch())
            losses.append(float(metrics["loss"]))
        runs.append(losses)
    return runs


def test_lora_dropout_draws_its_masks_from_the_steps_rng():
    # lora_B starts at 0, so the masks of step 1 show in the loss of step 2.
    first, again, other = lora_losses(0.5, (0, 0, 1))
    assert first == again and first[1] != other[1]
    without, other = lora_losses(0.0, (0, 1))
    assert without == other and without[1] != first[1]
