"""The vision and CLIP objectives on 8 simulated CPU devices, in a process of their own (the
device count is fixed when JAX starts): loss, metrics and gradients with the batch on one device
and sharded over a mesh of 8, written to a JSON file for tests/training/objectives/test_vision.py.

    python tests/training/objectives/sharded_worker.py OUT.json
"""

import dataclasses
import json
import sys
from types import SimpleNamespace

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from polyformer.training.objectives import OBJECTIVES
from polyformer.training.sharding import MeshConfig, batch_sharding, make_mesh

BATCH = 16  # two rows per device


class LinearClassifier(nnx.Module):
    """A stand-in with the image classifier's call, pixel_values -> .logits: mixup's pairing
    across devices does not depend on the model, and a linear one compiles in no time."""

    def __init__(self, pixels: int, classes: int):
        self.linear = nnx.Linear(pixels, classes, rngs=nnx.Rngs(0))

    def __call__(self, pixel_values, rngs=None):
        return SimpleNamespace(logits=self.linear(pixel_values.reshape(len(pixel_values), -1)))


def models_and_batches():
    from polyformer.models.clip import CLIPConfig, CLIPModel

    classifier = LinearClassifier(3 * 8 * 8, 5)
    # One layer per tower: the test is of the loss's reduction over the batch, not of depth.
    tiny = CLIPConfig.tiny()
    clip_config = CLIPConfig.tiny(
        text_config=dataclasses.replace(tiny.text_config, num_hidden_layers=1),
        vision_config=dataclasses.replace(tiny.vision_config, num_hidden_layers=1),
    )
    clip = CLIPModel(clip_config, rngs=nnx.Rngs(1))
    rng = np.random.default_rng(0)

    def pixels(channels, size):
        return rng.normal(size=(BATCH, channels, size, size)).astype(np.float32)

    images = {"pixel_values": pixels(3, 8), "labels": rng.integers(0, 5, BATCH)}
    text = clip_config.text_config
    length = 7
    ids = rng.integers(0, text.vocab_size, (BATCH, length)).astype(np.int32)
    mask = np.ones((BATCH, length), np.int32)
    mask[::3, 5:] = 0  # some captions padded
    pairs = {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": pixels(3, clip_config.vision_config.image_size),
    }
    return [
        ("image_classification_mixup", classifier, images),
        ("clip_contrastive", clip, pairs),
    ]


def compare(name, model, batch) -> dict:
    loss_fn = OBJECTIVES[name]
    model.eval()  # no dropout: the comparison is of the objective, not of random masks
    graphdef, state = nnx.split(model)

    def value(state, batch, rng):
        return loss_fn(nnx.merge(graphdef, state), batch, nnx.Rngs(dropout=rng))

    step = jax.jit(jax.value_and_grad(value, has_aux=True))
    rng = jax.random.key(7)
    device = jax.devices()[0]
    (single_loss, single_metrics), single_grads = step(
        jax.device_put(state, device), jax.device_put(batch, device), rng
    )
    mesh = make_mesh(MeshConfig(data=8))
    sharded_batch = jax.device_put(batch, batch_sharding(mesh, MeshConfig().rules))
    replicated = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
    (sharded_loss, sharded_metrics), sharded_grads = step(replicated, sharded_batch, rng)
    first = next(iter(sharded_batch.values()))
    single_grads, sharded_grads = jax.device_get((single_grads, sharded_grads))
    diffs = jax.tree.map(lambda a, b: np.max(np.abs(a - b)), single_grads, sharded_grads)
    result = {
        "devices": len(jax.devices()),
        "shards": len({s.index[0].start for s in first.addressable_shards}),
        "single_loss": float(single_loss),
        "sharded_loss": float(sharded_loss),
        "single_metrics": {k: float(v) for k, v in single_metrics.items()},
        "sharded_metrics": {k: float(v) for k, v in sharded_metrics.items()},
        "grad_max_abs_diff": float(max(jax.tree.leaves(diffs))),
        "grad_max_abs": float(max(np.max(np.abs(g)) for g in jax.tree.leaves(single_grads))),
    }
    if name == "clip_contrastive":
        # What a per-device loss would give: the mean of the losses of each device's rows.
        loss = jax.jit(lambda state, batch: value(state, batch, rng)[0])
        per_shard = [
            loss(state, jax.tree.map(lambda x, i=i: x[i : i + 2], batch))
            for i in range(0, BATCH, 2)
        ]
        result["per_shard_mean_loss"] = float(np.mean(per_shard))
    return result


def main() -> None:
    # Read when JAX creates its CPU client, at the first use of a device below.
    jax.config.update("jax_num_cpu_devices", 8)
    results = {name: compare(name, model, batch) for name, model, batch in models_and_batches()}
    with open(sys.argv[1], "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
