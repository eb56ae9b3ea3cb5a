"""LoRA adapters against PEFT on transformers: the same adapter gives the same logits both ways."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import peft
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

import polyformer as pf
from polyformer import lora
from polyformer.models.convert import CheckpointMismatchError
from tests.models.gpt import reference as gpt_ref
from tests.models.vit import reference as vit_ref


def randomise_adapters(model: nnx.Module, seed: int) -> None:
    """Non-zero lora_A and lora_B (lora_B starts at zero, which would hide a misplaced one)."""
    state = nnx.state(model, lora.LoRAParam)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noise = [
        0.3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)
    ]
    nnx.update(model, jax.tree.unflatten(treedef, noise))


def randomise_torch_adapters(model: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.3 * torch.randn_like(p))


def gpt_inputs():
    return gpt_ref.left_padded(gpt_ref.TINY["vocab_size"], [13, 5, 1, 9], seed=1)


def gpt_logits(model, input_ids, mask):
    return np.asarray(gpt_ref.logits(model, jnp.asarray(input_ids), jnp.asarray(mask)))


def assert_gpt_match(ours, torch_model, input_ids, mask):
    want = gpt_ref.hf_logits(torch_model, input_ids, mask)
    got = gpt_logits(ours, input_ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)


def vit_logits(model, pixels):
    return np.asarray(nnx.jit(lambda m, x: m(x).logits)(model, jnp.asarray(pixels)))


def assert_vit_match(ours, torch_model, pixels):
    want = vit_ref.hf_outputs(torch_model, pixels).logits.numpy()
    np.testing.assert_allclose(vit_logits(ours, pixels), want, atol=1e-4, rtol=0)


def saved(model, tmp_path_factory, name):
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gpt_checkpoint(tmp_path_factory):
    return saved(gpt_ref.random_hf_model(), tmp_path_factory, "gpt2")


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory):
    return saved(vit_ref.random_hf_model(), tmp_path_factory, "vit")


GPT_CONFIG = lora.LoraConfig(rank=3, alpha=5.0, target_modules=("c_attn", "c_proj"))


def gpt_with_adapter(path, config=GPT_CONFIG, seed=1):
    model = lora.apply(pf.from_pretrained(path), config, rngs=nnx.Rngs(seed))
    randomise_adapters(model, seed)
    return model


def test_gpt2_fused_c_attn_adapter_is_one_peft_module(gpt_checkpoint, tmp_path):
    model = gpt_with_adapter(gpt_checkpoint)
    attn = model.h[0].attn
    assert attn.query.lora_A is attn.key.lora_A is attn.value.lora_A
    assert attn.query.lora_B is not attn.key.lora_B
    # A train step's split and merge keep the one lora_A shared.
    graphdef, adapters, base = nnx.split(model, lora.LoRAParam, nnx.Param)
    again = nnx.merge(graphdef, adapters, base).h[0].attn
    assert again.query.lora_A is again.key.lora_A is again.value.lora_A
    lora.save_adapter(model, tmp_path)
    tensors = load_file(tmp_path / lora.ADAPTER_WEIGHTS)
    prefix = "base_model.model.transformer.h.0."
    n_embd, rank = gpt_ref.TINY["n_embd"], GPT_CONFIG.rank
    assert tensors[prefix + "attn.c_attn.lora_A.weight"].shape == (rank, n_embd)
    assert tensors[prefix + "attn.c_attn.lora_B.weight"].shape == (3 * n_embd, rank)
    np.testing.assert_array_equal(
        tensors[prefix + "attn.c_attn.lora_B.weight"][n_embd : 2 * n_embd],
        np.asarray(attn.key.lora_B[...]).T,
    )
    # attn.c_proj and mlp.c_proj, as PEFT matches "c_proj"
    assert len(tensors) == 2 * 3 * gpt_ref.TINY["n_layer"]


def test_peft_loads_our_gpt2_adapter(gpt_checkpoint, tmp_path):
    model = gpt_with_adapter(gpt_checkpoint)
    lora.save_adapter(model, tmp_path)
    hf = peft.PeftModel.from_pretrained(
        transformers.GPT2LMHeadModel.from_pretrained(gpt_checkpoint), tmp_path
    ).eval()
    assert_gpt_match(model, hf, *gpt_inputs())


def test_our_gpt2_loads_peft_adapter(gpt_checkpoint, tmp_path):
    base = transformers.GPT2LMHeadModel.from_pretrained(gpt_checkpoint)
    config = peft.LoraConfig(r=4, lora_alpha=7, target_modules=["c_attn", "c_fc"])
    hf = peft.get_peft_model(base, config)
    randomise_torch_adapters(hf, 2)
    hf.save_pretrained(tmp_path)
    ours = lora.load_adapter(pf.from_pretrained(gpt_checkpoint), tmp_path)
    config = ours.lora_config
    assert (config.rank, config.alpha, config.scaling) == (4, 7, 7 / 4)
    assert set(config.target_modules) == {"c_attn", "c_fc"}  # PEFT writes a set's order
    assert_gpt_match(ours, hf.eval(), *gpt_inputs())


def test_merge_gives_a_plain_model_with_equal_outputs(gpt_checkpoint, tmp_path):
    model = gpt_with_adapter(gpt_checkpoint, lora.LoraConfig(3, 5.0, 0.1, ("c_attn", "c_fc")))
    merged = lora.merge(model)
    assert type(merged.h[0].attn.query) is nnx.Linear
    assert type(model.h[0].attn.query) is lora.LoRALinear  # the adapted model is untouched
    assert not jax.tree.leaves(nnx.state(merged, lora.LoRAParam))
    inputs = gpt_inputs()
    np.testing.assert_allclose(
        gpt_logits(merged, *inputs), gpt_logits(model, *inputs), atol=1e-5, rtol=0
    )
    with pytest.raises(ValueError, match=r"merge it first \(lora.merge\) or save the adapter"):
        pf.save_pretrained(model, tmp_path / "unmerged")
    assert not (tmp_path / "unmerged").exists()
    assert pf.lora is lora
    # The merged model is an ordinary checkpoint again: transformers reads it, PEFT agrees.
    lora.save_adapter(model, tmp_path / "adapter")
    pf.save_pretrained(merged, tmp_path / "merged")
    hf_merged = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "merged").eval()
    hf_peft = peft.PeftModel.from_pretrained(
        transformers.GPT2LMHeadModel.from_pretrained(gpt_checkpoint), tmp_path / "adapter"
    ).eval()
    ids, mask = inputs
    real = mask.astype(bool)
    np.testing.assert_allclose(
        gpt_ref.hf_logits(hf_merged, ids, mask)[real],
        gpt_ref.hf_logits(hf_peft, ids, mask)[real],
        atol=1e-4,
        rtol=0,
    )


def test_adapters_are_their_own_variable_type_and_only_they_train(gpt_checkpoint):
    model = gpt_with_adapter(gpt_checkpoint)
    adapters = nnx.to_flat_state(nnx.state(model, lora.LoRAParam))
    names = {path[-1] for path, _ in adapters}
    assert names == {"lora_A", "lora_B"}
    # one lora_A per c_attn (shared by query, key, value) and per c_proj; one lora_B per part
    n_layer = gpt_ref.TINY["n_layer"]
    assert len(adapters) == n_layer * (3 + 3 + 2)
    base = nnx.state(model, nnx.All(nnx.Param, nnx.Not(lora.LoRAParam)))
    plain = nnx.state(pf.from_pretrained(gpt_checkpoint), nnx.Param)
    assert {p for p, _ in nnx.to_flat_state(base)} == {p for p, _ in nnx.to_flat_state(plain)}
    ids, mask = gpt_inputs()

    def loss(m):
        return jnp.mean(m(jnp.asarray(ids), jnp.asarray(mask)).logits ** 2)

    grads = nnx.grad(loss, argnums=nnx.DiffState(0, lora.LoRAParam))(model)
    flat = nnx.to_flat_state(grads)
    assert {p for p, _ in flat} == {p for p, _ in adapters}
    assert all(float(jnp.abs(g.get_value()).max()) > 0 for _, g in flat)

    # An optimizer over LoRAParam moves the adapters and leaves the base weights as they were.
    def values(state):  # copies: a state refers to the model's variables
        return {path: np.array(var.get_value()) for path, var in nnx.to_flat_state(state)}

    adapters_before, base_before = values(nnx.state(model, lora.LoRAParam)), values(base)
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=lora.LoRAParam)
    optimizer.update(model, grads)
    adapters_after = values(nnx.state(model, lora.LoRAParam))
    assert all(not np.array_equal(adapters_after[p], v) for p, v in adapters_before.items())
    base_after = values(nnx.state(model, nnx.All(nnx.Param, nnx.Not(lora.LoRAParam))))
    assert all(np.array_equal(base_after[p], v) for p, v in base_before.items())


def test_dropout_on_the_adapter_input_in_training_mode_only():
    base = nnx.Linear(5, 4, rngs=nnx.Rngs(0))
    a = lora.LoRAParam(jnp.ones((5, 2)))
    b = lora.LoRAParam(jnp.ones((2, 4)))
    dropout = nnx.Dropout(0.5, deterministic=True, rngs=nnx.Rngs(dropout=3))
    layer = lora.LoRALinear(base, a, b, scaling=0.5, dropout=dropout)
    x = jnp.arange(10.0).reshape(2, 5)
    plain = base(x) + 0.5 * (x @ a[...] @ b[...])
    np.testing.assert_allclose(layer(x), plain, rtol=1e-6)
    layer.train()
    trained = layer(x)
    assert not np.allclose(trained, plain)
    # only the adapter's input is dropped: each row's update is 0.5 * 2 * (kept inputs) @ a @ b
    update = np.asarray(trained - base(x))
    kept = np.isclose(update / (0.5 * 2 * 2), (update / (0.5 * 2 * 2)).round())
    assert kept.all()
    layer.eval()
    np.testing.assert_allclose(layer(x), plain, rtol=1e-6)


def test_peft_loads_our_vit_adapter(vit_checkpoint, tmp_path):
    config = lora.LoraConfig(rank=2, alpha=3.0, target_modules=("q_proj", "v_proj", "fc2"))
    model = lora.apply(pf.from_pretrained(vit_checkpoint), config, rngs=nnx.Rngs(4))
    randomise_adapters(model, 4)
    lora.save_adapter(model, tmp_path)
    assert "base_model.model.vit.layers.1.mlp.fc2.lora_B.weight" in load_file(
        tmp_path / lora.ADAPTER_WEIGHTS
    )
    base = transformers.ViTForImageClassification.from_pretrained(vit_checkpoint)
    hf = peft.PeftModel.from_pretrained(base, tmp_path).eval()
    pixels = vit_ref.pixels(2, vit_ref.TINY["image_size"])
    assert_vit_match(model, hf, pixels)
    merged = lora.merge(model)
    np.testing.assert_allclose(vit_logits(merged, pixels), vit_logits(model, pixels), atol=1e-5)


def test_our_vit_loads_peft_adapter_also_under_old_module_names(vit_checkpoint, tmp_path):
    base = transformers.ViTForImageClassification.from_pretrained(vit_checkpoint)
    hf = peft.get_peft_model(base, peft.LoraConfig(r=3, lora_alpha=4, target_modules=["k_proj"]))
    randomise_torch_adapters(hf, 5)
    hf.save_pretrained(tmp_path / "new")
    pixels = vit_ref.pixels(2, vit_ref.TINY["image_size"])
    ours = lora.load_adapter(pf.from_pretrained(vit_checkpoint), tmp_path / "new")
    assert_vit_match(ours, hf.eval(), pixels)
    # transformers 4 named the module vit.encoder.layer.N.attention.attention.key
    (tmp_path / "old").mkdir()
    tensors = load_file(tmp_path / "new" / lora.ADAPTER_WEIGHTS)
    old = {
        k.replace(".layers.", ".encoder.layer.").replace("k_proj", "attention.key"): v
        for k, v in tensors.items()
    }
    save_file(old, tmp_path / "old" / lora.ADAPTER_WEIGHTS)
    (tmp_path / "old" / lora.ADAPTER_CONFIG).write_text(
        (tmp_path / "new" / lora.ADAPTER_CONFIG).read_text()
    )
    again = lora.load_adapter(pf.from_pretrained(vit_checkpoint), tmp_path / "old")
    np.testing.assert_array_equal(vit_logits(again, pixels), vit_logits(ours, pixels))


def test_unknown_targets_are_refused(gpt_checkpoint):
    model = pf.from_pretrained(gpt_checkpoint)
    with pytest.raises(lora.LoraConfigError, match=r"\['q_proj'\] match no Linear .* c_attn"):
        lora.apply(model, lora.LoraConfig(rank=2, target_modules=("c_attn", "q_proj")))
    for rank in (-1, 0, 2.0):
        with pytest.raises(
            lora.LoraConfigError, match=f"rank must be a positive integer, got {rank}"
        ):
            lora.LoraConfig(rank=rank)


def test_without_targets_the_family_default_is_adapted(gpt_checkpoint):
    model = lora.apply(pf.from_pretrained(gpt_checkpoint), lora.LoraConfig(rank=2))
    assert model.lora_config.target_modules == ("c_attn",)
    assert isinstance(model.h[0].attn.value, lora.LoRALinear)
    assert type(model.h[0].attn.out) is nnx.Linear


def test_unsupported_peft_options_and_mismatched_adapters_are_refused(gpt_checkpoint, tmp_path):
    lora.save_adapter(gpt_with_adapter(gpt_checkpoint), tmp_path)
    config = json.loads((tmp_path / lora.ADAPTER_CONFIG).read_text())
    (tmp_path / lora.ADAPTER_CONFIG).write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(lora.LoraConfigError, match="use_dora=True is not supported"):
        lora.load_adapter(pf.from_pretrained(gpt_checkpoint), tmp_path)
    (tmp_path / lora.ADAPTER_CONFIG).write_text(json.dumps({**config, "r": 2}))
    with pytest.raises(CheckpointMismatchError, match=r"wrong shape \(18\)") as error:
        lora.load_adapter(pf.from_pretrained(gpt_checkpoint), tmp_path)
    assert "c_attn.lora_B.weight: adapter (288, 3), model (288, 2)" in str(error.value)


def clip_case():
    from tests.models.clip import reference as ref

    text = ref.TINY["text_config"]
    input_ids, mask = ref.texts(text["eos_token_id"], text["vocab_size"])
    pixel_values = ref.pixels(3, 20)
    forward = nnx.jit(lambda m, i, p, a: m(i, p, a).logits_per_image)

    def compare(ours, hf):
        want = ref.hf_outputs(hf, input_ids, pixel_values, mask).logits_per_image.numpy()
        got = forward(ours, *map(jnp.asarray, (input_ids, pixel_values, mask)))
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)

    return ref.random_hf_model(), ("q_proj", "v_proj", "fc1", "text_projection"), compare


def tapas_case():
    from tests.models.tapas import reference as ref

    inputs = ref.table_inputs(ref.TINY["vocab_size"], ref.TINY["type_vocab_sizes"], 64)
    names = ("input_ids", "attention_mask", "token_type_ids")

    def compare(ours, hf):
        got = ref.forward(ours, *(jnp.asarray(inputs[k]) for k in names)).logits
        want = ref.hf_forward(hf, inputs).logits
        ref.assert_logits_match(got, want, inputs["attention_mask"], hf.config.temperature)

    return ref.random_hf_model(), ("query", "key", "dense"), compare


def wav2vec2_case():
    from tests.models.wav2vec2 import reference as ref

    audio, _ = ref.padded_audio([1600, 1111])

    def compare(ours, hf):
        want = ref.hf_forward(hf, audio).logits.numpy()
        got = np.asarray(ref.logits(ours, jnp.asarray(audio)))
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)

    targets = ("q_proj", "v_proj", "intermediate_dense", "projection")
    return ref.random_hf_model(ref.TINY), targets, compare


@pytest.mark.parametrize("case", [clip_case, tapas_case, wav2vec2_case])
def test_every_family_matches_peft_both_ways(case, tmp_path):
    hf, targets, compare = case()
    hf.save_pretrained(tmp_path / "model")
    config = lora.LoraConfig(rank=2, alpha=3.0, target_modules=targets)
    ours = lora.apply(pf.from_pretrained(tmp_path / "model"), config, rngs=nnx.Rngs(6))
    randomise_adapters(ours, 6)
    lora.save_adapter(ours, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(
        type(hf).from_pretrained(tmp_path / "model"), tmp_path / "ours"
    ).eval()
    compare(ours, theirs)
    compare(lora.merge(ours), theirs)

    peft_config = peft.LoraConfig(r=3, lora_alpha=2, target_modules=list(targets))
    theirs = peft.get_peft_model(type(hf).from_pretrained(tmp_path / "model"), peft_config)
    randomise_torch_adapters(theirs, 7)
    theirs.save_pretrained(tmp_path / "theirs")
    ours = lora.load_adapter(pf.from_pretrained(tmp_path / "model"), tmp_path / "theirs")
    compare(ours, theirs.eval())


def test_output_heads_the_model_does_not_call_are_refused(tmp_path):
    gpt_ref.random_hf_model(tie_word_embeddings=False).save_pretrained(tmp_path)
    model = pf.from_pretrained(tmp_path)
    with pytest.raises(lora.LoraConfigError, match=r"\['lm_head'\] match no Linear"):
        lora.apply(model, lora.LoraConfig(rank=2, target_modules=("lm_head",)))


def test_scanned_layers_are_refused_naming_scan_layers():
    config = pf.models.FAMILIES["gpt2"].config.tiny(scan_layers=True)
    model = pf.models.FAMILIES["gpt2"].build(config, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="scan_layers=False"):
        lora.apply(model, lora.LoraConfig(rank=2))
    with pytest.raises(lora.LoraConfigError, match="scan_layers=False"):
        lora.check_targets(config, lora.LoraConfig(rank=2))
