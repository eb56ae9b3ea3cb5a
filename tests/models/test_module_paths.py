"""transformers module paths -> our modules, derived from each family's conversion table."""

import pytest
from flax import nnx

from polyformer.models import FAMILIES
from polyformer.models import module_paths as mp


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def model(request):
    family = FAMILIES[request.param]
    return nnx.eval_shape(lambda: family.build(family.config.tiny(), rngs=nnx.Rngs(0)))


def test_each_path_is_a_called_module_holding_exactly_that_modules_tensors(model):
    paths = mp.module_paths(model)
    assert paths
    model_type = model.config.model_type
    table = FAMILIES[model_type].table(model.config)
    params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for hf, ours in paths.items():
        assert ours and callable(mp.node(model, ours)), hf
        tensors = [e for e in table.entries if mp.rename(model_type, e.hf).startswith(hf + ".")]
        filled = {path for entry in tensors for path in entry.ours}
        assert filled == {p for p in params if p[: len(ours)] == ours}, hf


def test_gpt2_names_its_blocks_attention_and_mlp_but_not_the_fused_c_attn():
    family = FAMILIES["gpt2"]
    model = nnx.eval_shape(lambda: family.build(family.config.tiny(), rngs=nnx.Rngs(0)))
    paths = mp.module_paths(model)
    assert paths["transformer.h.1"] == ("h", 1)
    assert paths["transformer.h.1.attn"] == ("h", 1, "attn")
    assert paths["transformer.h.1.attn.c_proj"] == ("h", 1, "attn", "out")
    assert paths["transformer.h.1.mlp"] == ("h", 1, "mlp")
    assert "transformer" not in paths  # our model itself: its output is the logits
    # c_attn is our query, key and value together: no one module of ours
    with pytest.raises(mp.ModulePathError, match=r"'transformer\.h\.1\.attn\.c_attn'") as error:
        mp.resolve(model, "transformer.h.1.attn.c_attn")
    assert "nearest valid paths: transformer.h.1.attn" in str(error.value)
    assert issubclass(mp.ModulePathError, ValueError)


def test_nested_modules_on_the_same_parameters_pair_only_when_both_sides_nest_alike():
    family = FAMILIES["tapas"]
    model = nnx.eval_shape(lambda: family.build(family.config.tiny(), rngs=nnx.Rngs(0)))
    paths = mp.module_paths(model)
    # HF's pooler (tanh of dense) and pooler.dense; ours the same two, outer to outer
    assert paths["tapas.pooler"] == ("tapas", "pooler")
    assert paths["tapas.pooler.dense"] == ("tapas", "pooler", "dense")
    # HF's intermediate (dense, then GELU) and intermediate.dense are one Linear of ours
    assert "tapas.encoder.layer.0.intermediate" not in paths
    assert "tapas.encoder.layer.0.intermediate.dense" not in paths


def test_transformers_4_names_resolve_through_the_renames():
    family = FAMILIES["vit"]
    model = nnx.eval_shape(lambda: family.build(family.config.tiny(), rngs=nnx.Rngs(0)))
    assert mp.rename("vit", "vit.encoder.layer.5.attention.attention.query") == (
        "vit.layers.5.attention.q_proj"
    )
    layer = ("vit", "encoder", "layers", 1)
    assert mp.resolve(model, "vit.encoder.layer.1.attention") == (*layer, "self_attn")
    assert mp.resolve(model, "vit.layers.1.mlp") == (*layer, "mlp")


def test_nearest_prefers_the_deepest_existing_ancestor():
    valid = ["a.b", "a.b.c", "a.b.d", "a.x", "z"]
    assert sorted(mp.nearest("a.b.act", valid)) == ["a.b", "a.b.c", "a.b.d"]
    assert set(mp.nearest("nothing", valid)) == set(valid)
