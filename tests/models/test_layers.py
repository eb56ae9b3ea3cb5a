"""remat_layer: every family's loss and gradients are the same under remat (GPT-2's under every
policy); constrain: a no-op without a mesh, and a tiny GPT-2 constrained on a mesh of 8 devices
gives one device's loss and gradients, with the Pallas kernels run per shard too; scan_layers:
every family's scanned model computes the unscanned one's outputs, loss and gradients, saves the
same checkpoint, and compiles to a program whose size does not grow with depth."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

import polyformer as pf
from polyformer.models import FAMILIES, convert
from polyformer.models.config import REMAT
from polyformer.models.gpt import generate
from polyformer.models.layers import LAYERS, LayerStack, layer_stacks
from polyformer.training import trainer
from polyformer.training.objectives import OBJECTIVES
from tests import codegen
from tests.models.gradients import objective_value_and_grads
from tests.test_families import first_output, inputs, objective_batch


def train_loss_and_grads(model_type: str, remat: str):
    """The default objective's loss and gradients of the family's tiny model in training mode
    (dropout drawn from a fixed key)."""
    family = FAMILIES[model_type]
    config = dataclasses.replace(family.config.tiny(), remat=remat)
    model = family.build(config, rngs=nnx.Rngs(0))
    model.train()
    batch = {k: jnp.asarray(v) for k, v in objective_batch(model_type, config).items()}
    objective = OBJECTIVES[family.objectives[0]]

    @nnx.jit
    def step(model):
        def loss(model):
            return objective(model, batch, nnx.Rngs(dropout=1))[0]

        return nnx.value_and_grad(loss)(model)

    value, grads = step(model)
    return value, jax.tree.leaves(nnx.to_pure_dict(grads))


def test_every_remat_gives_the_same_loss_and_gradients(unscanned):
    """Every policy on GPT-2; "minimal" on the other families. The policies differ only in what
    nnx.remat is told to save, and "minimal" saves the values each family names itself
    (checkpoint_name), so it is the one whose wiring is the family's own."""
    model, value, grads = unscanned
    assert any(np.any(g != 0) for g in grads.values())
    for remat in REMAT[1:] if model.config.model_type == "gpt2" else ("minimal",):
        config = dataclasses.replace(model.config, remat=remat)
        other = FAMILIES[config.model_type].build(config, rngs=nnx.Rngs(0))
        other_value, other_grads = objective_grads(other)
        np.testing.assert_allclose(other_value, value, atol=1e-6, rtol=1e-6)
        assert other_grads.keys() == grads.keys()
        for path, expected in grads.items():
            np.testing.assert_allclose(other_grads[path], expected, atol=1e-6, rtol=1e-6)


def test_remat_draws_the_same_dropout_masks():
    value, grads = train_loss_and_grads("gpt2", "none")
    other_value, other_grads = train_loss_and_grads("gpt2", "full")
    np.testing.assert_allclose(other_value, value, atol=1e-6, rtol=1e-6)
    for got, expected in zip(other_grads, grads, strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=1e-6)


def test_an_unknown_remat_is_refused():
    with pytest.raises(ValueError, match="remat must be one of none, full, dots, minimal"):
        dataclasses.replace(FAMILIES["gpt2"].config.tiny(), remat="some")


def test_a_constrained_step_on_8_devices_matches_one_device(tmp_path):
    worker = Path(__file__).with_name("sharded_worker.py")
    run = subprocess.run(
        [sys.executable, str(worker), str(tmp_path / "out.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["devices"] == 8
    # Every layer pins six activations (q, k, v, the attention's output, the MLP's hidden one and
    # the layer's output), in the forward pass and in the backward one.
    assert result["constraints"] >= 6 * result["n_layer"] > result["constraints_without"]
    np.testing.assert_allclose(result["sharded_loss"], result["single_loss"], rtol=1e-6)
    assert result["grad_max_abs_diff"] < 1e-6
    # The Pallas kernels run per shard (a manual computation per layer), and give what their XLA
    # implementation gives on one device.
    for pallas in result["pallas"].values():
        assert pallas["per_shard"] >= result["n_layer"]
        np.testing.assert_allclose(pallas["sharded_loss"], pallas["single_loss"], rtol=1e-6)
        assert pallas["grad_max_abs_diff"] < 1e-5


def scanned_copy(model: nnx.Module, **changes) -> nnx.Module:
    """`model` with scan_layers=True (and `changes` to its config), its parameters through the
    conversion path (unstacked, named by the table, stacked again)."""
    family = FAMILIES[model.config.model_type]
    config = dataclasses.replace(model.config, scan_layers=True, **changes)
    abstract = nnx.eval_shape(lambda: family.build(config, rngs=nnx.Rngs(0)))
    table = family.table(config)
    tensors = convert.save(table, convert.model_params(model))
    return convert.load_into(abstract, table, tensors, "the unscanned model")


def objective_grads(model: nnx.Module) -> tuple[jax.Array, dict]:
    """The family's default objective on its tiny batch, and its gradients by the unscanned
    model's state paths, compiled as users' programs are (tests/codegen.py): the remat and scan
    tests hold different programs' gradients to each other within float32 rounding."""
    batch = {
        k: jnp.asarray(v) for k, v in objective_batch(model.config.model_type, model.config).items()
    }
    value, grads = objective_value_and_grads(model, batch, compiler_options=codegen.USERS)
    return value, convert.model_params(model, grads)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def unscanned(request):
    """(a tiny model of the family, its objective's value and gradients by `objective_grads`):
    the reference of the remat and the scan_layers tests, compiled once for both."""
    family = FAMILIES[request.param]
    model = family.build(family.config.tiny(), rngs=nnx.Rngs(0))
    return model, *objective_grads(model)


# Eagerly, a forward compiles every operation by itself; one jit compiles the model once.
forward = nnx.jit(
    lambda model, batch, **options: model(**batch, **options),
    static_argnames=("output_hidden_states", "output_attentions"),
)


def test_scanned_layers_compute_what_unscanned_ones_do(unscanned, tmp_path):
    model, value, grads = unscanned
    model_type = model.config.model_type
    scanned = scanned_copy(model)
    stacks = layer_stacks(scanned)
    assert stacks and all(
        isinstance(s, LayerStack) for _, s in nnx.iter_graph(scanned) if isinstance(s, LayerStack)
    )
    specs = nnx.get_partition_spec(nnx.state(scanned, nnx.Param))
    stacked = [
        spec for path, spec in nnx.to_flat_state(specs) if any(path[: len(p)] == p for p in stacks)
    ]
    assert stacked and all(spec.get_value()[0] == LAYERS for spec in stacked)

    batch = {k: jnp.asarray(v) for k, v in inputs(model_type, model.config).items()}
    options = dict(output_hidden_states=True, output_attentions=True)
    want, got = forward(model, batch, **options), forward(scanned, batch, **options)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=0)

    for remat in ("none", "full"):
        other_value, other_grads = objective_grads(scanned_copy(model, remat=remat))
        np.testing.assert_allclose(other_value, value, atol=1e-5, rtol=0)
        assert other_grads.keys() == grads.keys()
        for path, g in grads.items():
            np.testing.assert_allclose(other_grads[path], g, atol=1e-5, rtol=0, err_msg=str(path))

    pf.save_pretrained(model, tmp_path / "unscanned")
    pf.save_pretrained(scanned, tmp_path / "scanned")
    written = [
        safetensors.numpy.load_file(tmp_path / d / "model.safetensors")
        for d in ("unscanned", "scanned")
    ]
    assert written[0].keys() == written[1].keys()
    assert all(np.array_equal(written[0][k], written[1][k]) for k in written[0])
    config = json.loads((tmp_path / "scanned" / "config.json").read_text())
    assert "scan_layers" not in config and config == json.loads(
        (tmp_path / "unscanned" / "config.json").read_text()
    )
    loaded = pf.from_pretrained(tmp_path / "unscanned", scan_layers=True)
    assert loaded.config.scan_layers and layer_stacks(loaded) == stacks
    np.testing.assert_array_equal(
        first_output(forward(loaded, batch)), first_output(forward(scanned, batch))
    )


def test_scanned_layers_draw_different_dropout_per_layer():
    family = FAMILIES["gpt2"]
    config = dataclasses.replace(family.config.tiny(), scan_layers=True)
    model = family.build(config, rngs=nnx.Rngs(0))
    model.train()
    ids = jnp.asarray(inputs("gpt2", config)["input_ids"])
    hidden = model(ids, output_hidden_states=True, rngs=nnx.Rngs(dropout=1)).hidden_states
    # With identical layers and one key per stack, every layer's change would be the same.
    changes = [hidden[i + 1] - hidden[i] for i in range(config.n_layer - 1)]
    assert not np.allclose(changes[0], changes[1])


def hlo_size(n_layer: int) -> int:
    """The size of the optimised CPU program of a scanned tiny GPT-2's loss and gradients."""
    family = FAMILIES["gpt2"]
    config = dataclasses.replace(family.config.tiny(), n_layer=n_layer, scan_layers=True)
    model = family.build(config, rngs=nnx.Rngs(0))
    batch = {k: jnp.asarray(v) for k, v in objective_batch("gpt2", config).items()}
    objective = OBJECTIVES[family.objectives[0]]
    graphdef, state = nnx.split(model)

    def loss(state):
        return objective(nnx.merge(graphdef, state), batch, None)[0]

    return len(jax.jit(jax.grad(loss)).lower(state).compile().as_text())


def test_a_scanned_programs_size_does_not_grow_with_depth():
    assert abs(hlo_size(8) - hlo_size(2)) < 0.02 * hlo_size(2)


def test_scanned_gpt2_scales_attention_by_its_layer_index():
    family = FAMILIES["gpt2"]
    config = family.config.tiny(scale_attn_by_inverse_layer_idx=True)
    model = family.build(config, rngs=nnx.Rngs(0))
    scanned = scanned_copy(model)
    ids = jnp.asarray(inputs("gpt2", config)["input_ids"])
    np.testing.assert_allclose(scanned(ids).logits, model(ids).logits, atol=1e-5, rtol=0)
    mask = jnp.ones_like(ids)
    np.testing.assert_array_equal(
        generate(scanned, ids, mask, max_new_tokens=4), generate(model, ids, mask, max_new_tokens=4)
    )


def test_the_flop_count_of_scanned_layers_counts_every_layer():
    family = FAMILIES["gpt2"]
    example = {k: np.asarray(v) for k, v in objective_batch("gpt2", family.config.tiny()).items()}
    counts = []
    for scan in (False, True):
        config = family.config.tiny(scan_layers=scan)
        abstract = nnx.eval_shape(lambda c=config: family.build(c, rngs=nnx.Rngs(0)))
        graphdef, params = nnx.split(abstract)
        objective = OBJECTIVES[family.objectives[0]]
        counts.append(trainer.flops_per_example(graphdef, params, objective, example))
    np.testing.assert_allclose(counts[1], counts[0], rtol=1e-5)
