import jax
import jax.numpy as jnp
import pytest

from polyformer.training import checkpoint


def test_restoring_a_checkpoint_of_another_model_says_so(tmp_path):
    saver = checkpoint.Checkpointer(tmp_path, every=1)
    saver.save(1, {"w": jnp.zeros((3, 4))}, {"position": 0})
    saver.close()
    loader = checkpoint.Checkpointer(tmp_path, every=1)
    wider = {"w": jax.ShapeDtypeStruct((3, 8), jnp.float32)}
    with pytest.raises(checkpoint.CheckpointMismatch, match="does not fit this run's model"):
        loader.restore(wider)
    loader.close()


def test_a_checkpoint_restores_what_was_saved(tmp_path):
    saver = checkpoint.Checkpointer(tmp_path, every=1)
    saver.save(2, {"w": jnp.arange(6.0).reshape(2, 3)}, {"position": 5})
    saver.close()
    loader = checkpoint.Checkpointer(tmp_path)
    state, data = loader.restore({"w": jax.ShapeDtypeStruct((2, 3), jnp.float32)})
    loader.close()
    assert data == {"position": 5}
    assert jnp.array_equal(state["w"], jnp.arange(6.0).reshape(2, 3))
