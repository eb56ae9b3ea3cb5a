"""Gradient parity against transformers: the gradient of a family's training objective with
respect to every parameter, ours mapped to Hugging Face names through the family's conversion
table (the same transposes and splits as the weights), against PyTorch's `.grad` of the same
scalar loss. Dropout off (our rngs None, torch eval mode), float32 on both sides."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Collection, Iterator, Mapping

import jax
import numpy as np
import torch
from flax import nnx

from polyformer.checkpoint_io import read_weights
from polyformer.models import FAMILIES, convert
from polyformer.training.objectives import OBJECTIVES

# Each tensor's gradient must be within this share of its largest entry (in absolute value).
RELATIVE = 1e-4
# Gradients that are zero in exact arithmetic (`zero=` below) are rounding noise on both sides:
# each must be below this share of the model's largest gradient.
ZERO = 1e-6


def objective_value_and_grads(
    model: nnx.Module, batch: Mapping[str, jax.Array], compiler_options: dict | None = None
) -> tuple[jax.Array, nnx.State]:
    """(value, gradients as a state of the model's parameters) of the family's default objective
    (`FAMILIES[...].objectives[0]`) at `batch`, without dropout (rngs None), compiled with
    `compiler_options`."""
    loss_fn = OBJECTIVES[FAMILIES[model.config.model_type].objectives[0]]
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_of(params, batch):
        return loss_fn(nnx.merge(graphdef, params, rest), batch, None)[0]

    value_and_grad = jax.jit(jax.value_and_grad(loss_of), compiler_options=compiler_options)
    return value_and_grad(params, dict(batch))


def our_gradients(model: nnx.Module, batch: Mapping[str, jax.Array]) -> tuple[float, dict]:
    """(loss, gradients) of the family's default objective at `batch`
    (`objective_value_and_grads`), for a model with or without scan_layers. The gradients are
    numpy arrays keyed by Hugging Face tensor name, laid out as the HF tensors, through
    `convert.save` of the family's table."""
    loss, grads = objective_value_and_grads(model, batch)
    table = FAMILIES[model.config.model_type].table(model.config)
    hf = convert.save(table, convert.model_params(model, grads))
    return float(loss), {name: np.asarray(g) for name, g in hf.items()}


@contextlib.contextmanager
def _deterministic_torch() -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def torch_gradients(
    hf_model: torch.nn.Module,
    loss: Callable[[torch.nn.Module], torch.Tensor],
    directory: str | os.PathLike,
) -> tuple[float, dict]:
    """(loss, gradients) of `loss(hf_model)` in eval mode (no dropout) with deterministic
    algorithms. The gradients are keyed by checkpoint tensor name: they are written with
    `save_pretrained` into `directory` in place of the weights, so transformers' own renaming
    on save (ViT's modules are `vit.layers.0.attention.q_proj` in memory and
    `vit.encoder.layer.0.attention.attention.query` in checkpoints) names them, and a tied
    tensor appears once. A parameter the loss does not reach is all NaN."""
    hf_model.eval()
    hf_model.zero_grad(set_to_none=True)
    with _deterministic_torch():
        value = loss(hf_model)
        value.backward()
    weights = {}
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            weights[name] = p.data
            p.data = torch.full_like(p, torch.nan) if p.grad is None else p.grad
        try:
            hf_model.save_pretrained(directory)
        finally:
            for name, p in hf_model.named_parameters():
                p.data = weights[name]
    hf_model.zero_grad(set_to_none=True)
    grads, _ = read_weights(directory)
    return value.item(), {name: np.asarray(g) for name, g in grads.items()}


def assert_gradients_match(
    got: Mapping[str, np.ndarray],
    want: Mapping[str, np.ndarray],
    *,
    zero: Callable[[str], bool] = lambda name: False,
    unused: Collection[str] = (),
) -> None:
    """Every tensor of `want` (transformers') against `got` (ours): the same names, and
    max |got - want| <= RELATIVE * max |want| for each.

    Args:
      zero: names of tensors whose gradient is zero in exact arithmetic (say why at the call);
        both sides must be below ZERO times the largest gradient of the model instead.
      unused: tensors the loss does not reach: transformers' all NaN (no grad), ours exactly 0.
    """
    assert set(got) == set(want), (
        f"ours only: {sorted(set(got) - set(want))}, transformers only: "
        f"{sorted(set(want) - set(got))}"
    )
    reached = {name: w for name, w in want.items() if not np.all(np.isnan(w))}
    largest = max(float(np.abs(w).max()) for w in reached.values())
    assert largest > 0
    failures = []
    for name, w in want.items():
        g = got[name]
        if name in unused:
            if name in reached or np.any(g):
                failures.append(f"{name}: expected unused, yet it has a gradient")
            continue
        if name not in reached:
            failures.append(f"{name}: transformers' loss does not reach it")
            continue
        if g.shape != w.shape:
            failures.append(f"{name}: shape {g.shape}, transformers {w.shape}")
            continue
        if not (np.all(np.isfinite(g)) and np.all(np.isfinite(w))):
            failures.append(f"{name}: not finite (ours or transformers')")
            continue
        scale = float(np.abs(w).max())
        error = float(np.abs(g - w).max())
        if zero(name):
            bound = ZERO * largest
            if max(scale, float(np.abs(g).max())) > bound:
                failures.append(f"{name}: should be zero, max |ours| {np.abs(g).max():.3g}, "
                                f"max |transformers| {scale:.3g} > {bound:.3g}")  # fmt: skip
        elif error > RELATIVE * scale:
            failures.append(
                f"{name}: max error {error:.3g} = {error / scale:.3g} of max {scale:.3g}"
            )
    assert not failures, f"{len(failures)} of {len(want)} gradients differ:\n" + "\n".join(failures)
