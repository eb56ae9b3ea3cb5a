"""LoRA through the Trainer: only the adapters train, the base stays bit-identical, a resumed run
repeats the uninterrupted one, and the exports (PEFT adapter, merged model) compute what the
trained model does."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

import polyformer as pf
from polyformer import cli, lora
from polyformer.models import FAMILIES
from polyformer.training import trainer
from polyformer.training.optim import OptimizerConfig
from tests.tiny_runs import run_config
from tests.training.test_trainer import train_losses

# Random examples, one batch of them: the adapters alone can overfit it.
OVERFIT = dict(
    batch_size=8,
    optimizer=OptimizerConfig(learning_rate=3e-2, warmup_steps=0, grad_clip=None),
    eval_every=100,
    log_every=1,
)
FIRST_INPUT = {"gpt2": "inputs", "vit": "pixel_values"}


def lora_run(family: str, out_dir, **fields) -> trainer.Trainer:
    defaults = dict(
        lora=lora.LoraConfig(rank=4, alpha=16), steps=6, out_dir=str(out_dir), **OVERFIT
    )
    config = run_config(family, **{**defaults, **fields})
    return trainer.Trainer(config, config.data.load())


def flat(params: nnx.State, which) -> dict[tuple, np.ndarray]:
    return {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(params) if which(v)}


def is_adapter(variable) -> bool:
    return isinstance(variable, lora.LoRAParam)


def is_base(variable) -> bool:
    return isinstance(variable, nnx.Param) and not is_adapter(variable)


def logits(model: nnx.Module, family: str, batch: dict) -> np.ndarray:
    return np.asarray(model(jax.numpy.asarray(batch[FIRST_INPUT[family]])).logits)


@pytest.fixture(scope="module", params=["gpt2", "vit"])
def trained(request, tmp_path_factory):
    """A finished LoRA run of the family, its initial state and its export."""
    family = request.param
    out = tmp_path_factory.mktemp(f"lora_{family}")
    job = lora_run(family, out)
    initial = job.initial_state()[0].params
    initial = {"base": flat(initial, is_base), "adapters": flat(initial, is_adapter)}
    job.run(progress=False)
    exported = trainer.export(job, out / "model")
    return family, job, initial, exported


def test_only_the_adapters_change_and_the_loss_falls(trained):
    _, job, initial, _ = trained
    after = job.state.params
    base, adapters = initial["base"], initial["adapters"]
    assert base.keys() == flat(after, is_base).keys()
    for path, value in flat(after, is_base).items():
        np.testing.assert_array_equal(value, base[path], err_msg=str(path))
    assert adapters and adapters.keys() == flat(after, is_adapter).keys()
    for path, value in flat(after, is_adapter).items():
        assert not np.array_equal(value, adapters[path]), path
    losses = train_losses(job.out_dir)
    assert sorted(losses) == list(range(1, 7)) and losses[6] < 0.98 * losses[1], losses


def test_the_optimizer_holds_state_for_the_adapters_only(trained):
    _, job, _, _ = trained
    adapter_sizes = sorted(v.size for v in flat(job.state.params, is_adapter).values())
    moments = [x for x in jax.tree.leaves(job.state.opt_state) if np.ndim(x)]
    # AdamW: a first and a second moment per adapter, nothing for the base weights.
    assert sorted(x.size for x in moments) == sorted(adapter_sizes * 2)


def test_the_exported_adapter_and_merged_model_compute_the_trained_model(trained):
    family, job, _, exported = trained
    batch = job.data.eval_batches(4, 1)[0]
    want = logits(job.model(), family, batch)
    fresh = FAMILIES[family].build(job.model_config, rngs=nnx.Rngs(job.config.seed))
    adapted = lora.load_adapter(fresh, exported / trainer.ADAPTER_DIR)
    np.testing.assert_allclose(logits(adapted, family, batch), want, atol=1e-5, rtol=0)
    merged = pf.from_pretrained(exported)
    np.testing.assert_allclose(logits(merged, family, batch), want, atol=1e-5, rtol=0)
    assert not any(isinstance(m, lora.LoRALinear) for _, m in nnx.iter_graph(merged))


def test_a_run_stopped_and_resumed_repeats_the_uninterrupted_losses(tmp_path, monkeypatch):
    # LoRA dropout on: the resumed steps must draw the masks the uninterrupted ones drew.
    fields = dict(lora=lora.LoraConfig(rank=4, alpha=16, dropout=0.2), checkpoint_every=2)
    whole = lora_run("gpt2", tmp_path / "whole", **fields)
    whole.run(progress=False)
    stopped = lora_run("gpt2", tmp_path / "stopped", **fields)
    # As a SIGTERM after step 3 would (test_preemption): a checkpoint of step 3, then exit.
    monkeypatch.setattr(stopped, "preempted", lambda step, _: step == 3)
    with pytest.raises(SystemExit):
        stopped.run(progress=False)
    monkeypatch.undo()
    resumed = lora_run("gpt2", tmp_path / "stopped", **fields)
    resumed.run(progress=False)
    got, want = train_losses(tmp_path / "stopped"), train_losses(tmp_path / "whole")
    assert sorted(got) == list(range(1, 7))
    assert [got[s] for s in range(1, 7)] == [want[s] for s in range(1, 7)]
    for path, value in flat(whole.state.params, is_adapter).items():
        np.testing.assert_array_equal(flat(resumed.state.params, is_adapter)[path], value)


def test_lora_rank_on_the_command_line_trains_and_exports_an_adapter(tmp_path, capsys):
    config = tmp_path / "tiny.py"
    config.write_text(
        "from tests.tiny_runs import run_config\n\n\n"
        "def config():\n"
        "    return run_config('gpt2', steps=2, eval_every=100, log_every=1)\n"
    )
    out = tmp_path / "run"
    assert cli.main(["train", str(config), "--set", "lora.rank=8", f"out_dir={out}"]) == 0
    adapter = out / "model" / trainer.ADAPTER_DIR
    assert f"adapter:      {adapter} (the LoRA adapter" in capsys.readouterr().out
    peft_config = json.loads((adapter / lora.ADAPTER_CONFIG).read_text())
    assert peft_config["r"] == 8 and peft_config["target_modules"] == ["c_attn"]
