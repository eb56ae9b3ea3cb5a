"""Capture and patch intermediate activations of any family, by transformers module path.

    out, captured = interp.run(
        model, input_ids,
        capture=("transformer.h.3", "transformer.h.3.attn"),
        patch={"transformer.h.3.mlp": jnp.zeros_like},
    )
    captured["transformer.h.3"]  # [batch, length, n_embd]: the residual stream after block 3

Paths are the installed transformers class's module paths (what `named_modules()` lists and
`register_forward_hook` attaches to; `polyformer.models.module_paths` derives which of our
modules computes each from the conversion table). A value is our module's output: transformers'
numbers, in our layout where it differs (convolutions are channels-last; our attention modules
return the attention output alone, transformers' a tuple that starts with it).

For the one call, each chosen module is wrapped in a `Hook` that runs it, applies the patch
function to its output and sows the result (`nnx.Intermediate`, collected by `nnx.capture`); the
wrappers are removed when the call returns, so the model's parameter paths, `save_pretrained` and
outputs are untouched. `run` works under `nnx.jit` (patch functions are static: close over arrays
to patch in another input's activations, or pass them as arguments of the jitted function).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
from flax import nnx

from polyformer.models.module_paths import ModulePathError, module_paths, node, replace, resolve


class Hook(nnx.Module):
    """Runs `module`, replaces its output by `patch(output)` when a patch is given, sows the
    result as `nnx.Intermediate` `output` and returns it.

    Attributes of `module` are read through the hook, so a parent that reads its child's fields
    works as before.
    """

    def __init__(
        self,
        module: nnx.Module,
        *,
        path: str,
        patch: Callable[[Any], Any] | None = None,
    ):
        self.module, self.path, self.patch = module, path, patch

    def __call__(self, *args, **kwargs) -> Any:
        out = self.module(*args, **kwargs)
        if self.patch is not None:
            out = _checked(self.path, out, self.patch(out))
        self.sow(nnx.Intermediate, "output", out)
        return out

    def __getattr__(self, name: str) -> Any:
        if name == "module" or name.startswith("_"):  # not built yet, or nnx's own
            raise AttributeError(name)
        return getattr(self.module, name)


def _checked(path: str, output: Any, patched: Any) -> Any:
    """`patched`, if it has the structure, shapes and dtypes of `output`; else a ValueError."""
    shapes = [jax.eval_shape(lambda x: x, tree) for tree in (output, patched)]
    if jax.tree.structure(shapes[0]) != jax.tree.structure(shapes[1]) or shapes[0] != shapes[1]:
        raise ValueError(
            f"patch[{path!r}] must return what the module returns, {shapes[0]}; got {shapes[1]}"
        )
    return patched


def _hooks(
    model: nnx.Module, capture: Iterable[str], patch: Mapping[str, Callable[[Any], Any]]
) -> dict[str, tuple[tuple[str | int, ...], Hook]]:
    """The hooks `run` places: transformers path -> (our state path, its Hook)."""
    for path, fn in patch.items():
        if not callable(fn):
            raise ValueError(f"patch[{path!r}] must be a function of the output, got {fn!r}")
    paths = module_paths(model)
    chosen = {}
    for path in (*capture, *patch):
        if path not in chosen:
            ours = resolve(model, path, paths)
            module = node(model, ours)
            chosen[path] = ours, Hook(module, path=path, patch=patch.get(path))
    targets = [ours for ours, _ in chosen.values()]
    if len(set(targets)) != len(targets):
        raise ValueError(
            f"{sorted(chosen)} name one module of ours twice (a path and its old transformers "
            "name): give each module once"
        )
    return chosen


def run(
    model: nnx.Module,
    *args: Any,
    capture: Iterable[str] = (),
    patch: Mapping[str, Callable[[Any], Any]] | None = None,
    method: str = "__call__",
    **kwargs: Any,
) -> tuple[Any, dict[str, Any]]:
    """`model(*args, **kwargs)` with the modules at transformers paths `capture` captured and
    those in `patch` patched.

    Args:
      capture: transformers module paths whose outputs to return (after their patch, if any).
      patch: transformers module path -> a function of that module's output (an array, or the
        tuple or pytree the module returns) returning its replacement, of the same structure.
      method: the model's method to call instead of `__call__` (e.g. CLIP's
        `get_image_features`).

    Returns (the model's output, {path: its module's output for each path in `capture`}); a
    module that runs several times in the call gives the tuple of its outputs in call order.
    Raises ModulePathError (a ValueError) naming an unknown path and the valid ones nearest it,
    and ValueError for a chosen module that the call does not run (an output head whose kernel
    the model reads directly, a tower the call skips).
    """
    capture = tuple(capture)
    hooks = _hooks(model, capture, dict(patch or {}))
    # Innermost first, so that an outer hook's module already holds the inner hooks.
    placed = sorted(hooks.values(), key=lambda hook: -len(hook[0]))
    for ours, hook in placed:
        replace(model, ours, hook)
    try:
        # The hooks' paths in the wrapped model, where nnx.capture reports what they sowed.
        where = {id(m): path for path, m in nnx.iter_graph(model) if isinstance(m, Hook)}
        call = nnx.capture(lambda m: getattr(m, method)(*args, **kwargs), nnx.Intermediate)
        out, sown = call(model)
        sown = dict(nnx.to_flat_state(sown))
        outputs = {}
        for _, hook in placed:
            values = sown.get((*where[id(hook)], "output"))
            if values is None:
                raise ValueError(
                    f"{hook.path!r} did not run in this call: nothing to capture or patch"
                )
            values = values.get_value()
            outputs[hook.path] = values[0] if len(values) == 1 else values
    finally:
        for ours, hook in reversed(placed):
            replace(model, ours, hook.module)
    return out, {path: outputs[path] for path in capture}


__all__ = ["Hook", "ModulePathError", "module_paths", "run"]
