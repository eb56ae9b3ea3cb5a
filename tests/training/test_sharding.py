import jax
import optax
from flax import nnx
from jax.sharding import PartitionSpec

from polyformer import lora
from polyformer.models.gpt import GPT2Config, GPT2LMHeadModel
from polyformer.training import optim, sharding
from polyformer.training.step import init_state


def test_optimizer_moments_are_sharded_as_their_parameters():
    optimizer = optim.make_optimizer(optim.OptimizerConfig(), 10)

    def init():
        params = nnx.state(GPT2LMHeadModel(GPT2Config.tiny(), rngs=nnx.Rngs(0)), nnx.Param)
        return init_state(params, optimizer, jax.random.key(0))

    abstract = jax.eval_shape(init)
    mesh = sharding.make_mesh(sharding.MeshConfig())
    shardings = sharding.state_shardings(abstract, optimizer, mesh, sharding.DEFAULT_RULES)
    params = jax.tree.leaves(shardings.params)
    assert any(s.spec != PartitionSpec() for s in params)  # some parameters are sharded
    # Adam's two moments, each leaf with its parameter's sharding; the counts replicated.
    moments = optax.tree.get_all_with_path(shardings.opt_state, "mu")
    moments += optax.tree.get_all_with_path(shardings.opt_state, "nu")
    assert len(moments) == 2
    for _, tree in moments:
        assert jax.tree.leaves(tree) == params
    counts = optax.tree.get_all_with_path(shardings.opt_state, "count")
    assert counts and all(s.spec == PartitionSpec() for _, s in counts)
    assert shardings.step.spec == PartitionSpec() and shardings.rng.spec == PartitionSpec()


def test_a_lora_state_shards_the_frozen_base_as_a_full_one_and_has_moments_for_adapters_only():
    optimizer = optim.make_optimizer(optim.OptimizerConfig(), 10)
    mesh = sharding.make_mesh(sharding.MeshConfig())

    def state_shardings(config):
        def init():
            model = GPT2LMHeadModel(GPT2Config.tiny(), rngs=nnx.Rngs(0))
            if config is not None:
                lora.apply(model, config)
            trained = nnx.Param if config is None else lora.LoRAParam
            return init_state(nnx.state(model), optimizer, jax.random.key(0), trained)

        trained = nnx.Param if config is None else lora.LoRAParam
        abstract = jax.eval_shape(init)
        return sharding.state_shardings(abstract, optimizer, mesh, sharding.DEFAULT_RULES, trained)

    full = state_shardings(None)
    adapted = state_shardings(lora.LoraConfig(rank=4, dropout=0.1))
    adapters, base, _ = nnx.split_state(adapted.params, lora.LoRAParam, nnx.Param, ...)
    assert nnx.to_pure_dict(base) == nnx.to_pure_dict(full.params)
    # lora_A `[in, rank]` follows its kernel's input axis, lora_B `[rank, out]` its output axis.
    specs = {s.spec for s in jax.tree.leaves(adapters)}
    assert specs == {PartitionSpec("fsdp", None), PartitionSpec(None, "tensor")}
    for name in ("mu", "nu"):
        ((_, moments),) = optax.tree.get_all_with_path(adapted.opt_state, name)
        assert jax.tree.leaves(moments) == jax.tree.leaves(adapters)
