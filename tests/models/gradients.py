"""Gradient parity against transformers: the gradient of a family's training objective with
respect to every parameter, ours mapped to Hugging Face names through the family's conversion
table (the same transposes and splits as the weights), against PyTorch's `.grad` of the same
scalar loss. Dropout off (our rngs None, torch eval mode), float32 on both sides."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Mapping

import jax
import numpy as np
import torch
from flax import nnx

from polyformer.models import FAMILIES, convert
from polyformer.training.objectives import OBJECTIVES

# Each tensor's gradient must be within this share of its largest entry (in absolute value).
RELATIVE = 1e-4
# Gradients that are zero in exact arithmetic (`zero=` below) are rounding noise on both sides:
# each must be below this share of the model's largest gradient.
ZERO = 1e-6


def our_gradients(model: nnx.Module, batch: Mapping[str, jax.Array]) -> tuple[float, dict]:
    """(loss, gradients) of the family's default objective (`FAMILIES[...].objectives[0]`) at
    `batch`, without dropout (rngs None). The gradients are numpy arrays keyed by Hugging Face
    tensor name, laid out as the HF tensors, through `convert.save` of the family's table."""
    family = FAMILIES[model.config.model_type]
    loss_fn = OBJECTIVES[family.objectives[0]]
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def value_and_grad(params, batch):
        return jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p, rest), batch, None)[0])(
            params
        )

    loss, grads = value_and_grad(params, dict(batch))
    flat = {path: var.get_value() for path, var in nnx.to_flat_state(grads)}
    hf = convert.save(family.table(model.config), flat)
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
    hf_model: torch.nn.Module, loss: Callable[[torch.nn.Module], torch.Tensor]
) -> tuple[float, dict]:
    """(loss, gradients) of `loss(hf_model)` in eval mode (no dropout) with deterministic
    algorithms: every entry of `named_parameters()` (tied tensors appear once, under the name
    that owns them), its `.grad` as numpy, None where the loss does not reach it."""
    hf_model.eval()
    hf_model.zero_grad(set_to_none=True)
    with _deterministic_torch():
        value = loss(hf_model)
        value.backward()
    grads = {
        name: None if p.grad is None else p.grad.numpy().copy()
        for name, p in hf_model.named_parameters()
    }
    hf_model.zero_grad(set_to_none=True)
    return value.item(), grads


def assert_gradients_match(
    got: Mapping[str, np.ndarray],
    want: Mapping[str, np.ndarray | None],
    *,
    zero: Callable[[str], bool] = lambda name: False,
    unused: Collection[str] = (),
) -> None:
    """Every tensor of `want` (transformers') against `got` (ours): the same names, and
    max |got - want| <= RELATIVE * max |want| for each.

    Args:
      zero: names of tensors whose gradient is zero in exact arithmetic (say why at the call);
        both sides must be below ZERO times the largest gradient of the model instead.
      unused: tensors the loss does not reach: torch's grad is None, ours exactly 0.
    """
    assert set(got) == set(want), (
        f"ours only: {sorted(set(got) - set(want))}, transformers only: "
        f"{sorted(set(want) - set(got))}"
    )
    largest = max(float(np.abs(w).max()) for w in want.values() if w is not None)
    assert largest > 0
    failures = []
    for name, w in want.items():
        g = got[name]
        if name in unused:
            if w is not None or np.any(g):
                failures.append(f"{name}: expected unused, yet it has a gradient")
            continue
        if w is None:
            failures.append(f"{name}: transformers' loss does not reach it")
            continue
        if g.shape != w.shape:
            failures.append(f"{name}: shape {g.shape}, transformers {w.shape}")
            continue
        scale = float(np.abs(w).max())
        error = float(np.abs(g - w).max())
        if zero(name):
            bound = ZERO * largest
            if max(scale, float(np.abs(g).max())) > bound:
                failures.append(f"{name}: should be zero, max |ours| {np.abs(g).max():.3g}, "
                                f"max |transformers| {scale:.3g} > {bound:.3g}")  # fmt: skip
        elif error > RELATIVE * scale:
            failures.append(f"{name}: max error {error:.3g} = {error / scale:.3g} of max {scale:.3g}")
    assert not failures, f"{len(failures)} of {len(want)} gradients differ:\n" + "\n".join(failures)
