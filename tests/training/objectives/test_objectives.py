"""The OBJECTIVES table: every objective says what its examples look like, and a batch of them
is what its loss reads."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from polyformer.models import FAMILIES
from polyformer.training.objectives import OBJECTIVES, Objective
from tests import tiny_runs


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_s_synthetic_batch_is_what_its_loss_reads(name):
    family = next(f for f in FAMILIES.values() if name in f.objectives)
    _, _, length = tiny_runs.RUNS[family.model_type]
    config = family.config.tiny()
    data = OBJECTIVES[name].synthetic(config, length, train_examples=2, eval_examples=2)
    model = family.build(config, rngs=nnx.Rngs(0))
    batch = {key: jnp.asarray(values) for key, values in data.load().train.items()}
    loss, metrics = jax.eval_shape(lambda b: OBJECTIVES[name](model, b, None), batch)
    assert loss.shape == () and all(m.shape == () for m in metrics.values())


def test_an_objective_without_an_example_cannot_make_synthetic_data():
    def custom(model, batch, rngs):
        return 0.0, {}

    with pytest.raises(ValueError, match="'custom' does not say what its examples look like"):
        Objective(custom).synthetic(None, 8)
