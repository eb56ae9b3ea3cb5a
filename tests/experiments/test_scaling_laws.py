"""The scaling-laws experiment without training: the ladder's sizes, and the refit of a stored run
(its fits are tested in test_fits.py)."""

import json

import jax
import pytest
from flax import nnx

from experiments import scaling_laws as sl
from polyformer.models.gpt import GPT2Config, GPT2LMHeadModel
from polyformer.training.trainer import non_embedding_params


@pytest.mark.parametrize("size", sl.Ladder.quick().sizes[:2] + sl.Ladder.full().sizes[-1:])
def test_parameter_count_matches_the_model(size):
    config = GPT2Config.tiny(n_layer=size.n_layer, n_embd=size.n_embd, n_head=size.n_head)
    model = nnx.eval_shape(lambda: GPT2LMHeadModel(config, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    assert sl.non_embedding_params(size.n_layer, size.n_embd) == non_embedding_params(params)
    assert jax.tree.leaves(params)


def test_ladders_span_the_asked_range():
    for ladder in (sl.Ladder.quick(), sl.Ladder.full()):
        n = [sl.non_embedding_params(s.n_layer, s.n_embd) for s in ladder.sizes]
        assert len(n) >= 6 and max(n) / min(n) >= 30 and n == sorted(n)


def _synthetic_result(steps=100, tokens_per_step=1024):
    """A scaling_laws.json as a training run leaves it, with curves from a known law."""
    runs = []
    for size in sl.Ladder.quick().sizes:
        n = sl.non_embedding_params(size.n_layer, size.n_embd)
        evals = []
        for step in range(10, steps + 1, 10):
            tokens = step * tokens_per_step
            loss = 2.0 + (1e6 / n) ** 0.3 + (2e4 / tokens) ** 0.5
            evals.append(
                {"step": step, "tokens": tokens, "compute": 6.0 * n * tokens, "loss": loss}
            )
        runs.append(
            dict(
                name=size.name, n_layer=size.n_layer, n_embd=size.n_embd, n_head=size.n_head,
                non_embedding_params=n, params=n + 4096 * size.n_embd, learning_rate=1e-3,
                steps=steps, batch_size=16, seq_len=64, tokens_per_step=tokens_per_step,
                tokens=steps * tokens_per_step, final_eval_loss=evals[-1]["loss"],
                final_train_loss=evals[-1]["loss"], wall_s=1.0, eval=evals, train=[],
            )
        )  # fmt: skip
    protocol = dict(
        steps=steps, batch_size=16, seq_len=64, eval_every=10, eval_batches=4, warmup_steps=5,
        end_lr_ratio=0.1, vocab_size=4096, precision="float32", dropout=0.0,
    )  # fmt: skip
    machine = dict(cpu="test", cores=2, devices=["cpu"], python="3", jax="0", date="today")
    return dict(
        command="python -m experiments.scaling_laws --quick", machine=machine,
        protocol=protocol, train_tokens=3_000_000, runs=runs, load_average_start=[1.0] * 3,
        load_average_end=[1.0] * 3, wall_s=60.0,
    )  # fmt: skip


def test_refit_writes_json_figures_and_report(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "scaling_laws.json").write_text(json.dumps(_synthetic_result()))
    results = tmp_path / "results" / "scaling.md"
    results.parent.mkdir()
    argv = [f"--out={out}", f"--results={results}", "--resamples=40", "--frontier-points=12"]
    result = sl.main(["--refit", *argv])

    for name in ("scaling_laws.json", "scaling_laws.md", "loss_vs_compute.png"):
        assert (out / name).stat().st_size > 0
    assert (tmp_path / "results" / "scaling" / "loss_vs_params.png").stat().st_size > 0
    text = results.read_text()
    assert "(scaling/loss_vs_compute.png)" in text
    assert "by `python -m experiments.scaling_laws --refit --out=" in text
    # The final losses are exactly 2 + (1e6 / N)^0.3 plus a constant: the offset fit finds it.
    offset = result["fits"]["loss_vs_params"]["with_irreducible"]
    assert offset["alpha"] == pytest.approx(0.3, abs=0.01)
    assert json.loads((out / "scaling_laws.json").read_text())["fits"]["frontier"]
