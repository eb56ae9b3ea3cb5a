import jax
import optax
from flax import nnx
from jax.sharding import PartitionSpec

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
