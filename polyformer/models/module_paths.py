"""transformers module paths on our models: which nnx module computes what a transformers module
(`transformer.h.3.attn`, `vit.layers.5.mlp`) computes, derived from the family's conversion table.

A transformers module's parameters are the table's tensors whose names start with its path; ours
are the parameters those tensors fill. The two modules correspond when our module holds exactly
those parameters. Where several nested modules hold the same parameters (a wrapper around one
Linear, HF's `intermediate` around `intermediate.dense`), they pair outermost to outermost when
both sides nest equally deep; otherwise which of them computes what is unknowable from the table,
and none is mapped. Modules without parameters (activations, dropout) have no counterpart.
"""

from __future__ import annotations

import difflib
import re
from collections import defaultdict
from typing import Any

from flax import nnx

from polyformer.models import FAMILIES
from polyformer.models.convert import Path
from polyformer.models.layers import layer_stacks

# transformers 5 renamed some families' modules; it still reads and writes checkpoints under the
# old tensor names (which our tables use), but its live modules (what PEFT names adapters by and
# what forward hooks attach to) have the new names.
MODULE_RENAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "vit": (
        (r"encoder\.layer\.", "layers."),
        (r"attention\.attention\.query", "attention.q_proj"),
        (r"attention\.attention\.key", "attention.k_proj"),
        (r"attention\.attention\.value", "attention.v_proj"),
        (r"attention\.output\.dense", "attention.o_proj"),
        (r"intermediate\.dense", "mlp.fc1"),
        (r"(?<!attention\.)output\.dense", "mlp.fc2"),
    ),
}


class ModulePathError(ValueError):
    """A transformers module path that names no module of the model we can run."""


def rename(model_type: str, name: str) -> str:
    """A checkpoint tensor or module name -> the installed transformers' live module name."""
    for pattern, replacement in MODULE_RENAMES.get(model_type, ()):
        name = re.sub(pattern, replacement, name)
    return name


def node(model: nnx.Module, path: Path) -> Any:
    """The attribute or list item of `model` at state path `path`."""
    for key in path:
        model = model[key] if isinstance(key, int) else getattr(model, key)
    return model


def replace(model: nnx.Module, path: Path, module: nnx.Module) -> None:
    """Puts `module` at state path `path` of `model` (in place)."""
    parent, key = node(model, path[:-1]), path[-1]
    if isinstance(key, int):
        parent[key] = module
    else:
        setattr(parent, key, module)


def _by_parameters(paths: dict[Any, frozenset[Path]]) -> dict[frozenset[Path], list[Any]]:
    """Parameter set -> the modules holding exactly it, outermost first."""
    groups = defaultdict(list)
    for path, params in paths.items():
        if params:
            groups[params].append(path)
    return {params: sorted(group, key=len) for params, group in groups.items()}


def require_layers(model: nnx.Module, what: str) -> None:
    """Raises ModulePathError when `model`'s layers are scanned (scan_layers=True): each stack is
    one module with stacked parameters, so no module is one layer's and per-layer paths name
    nothing. `what` is what needs them."""
    if layer_stacks(model):
        raise ModulePathError(
            f"{what} needs each layer as its own module, and this {type(model).__name__} has "
            "scanned layers (scan_layers=True: one module with stacked parameters); load or build "
            "it with scan_layers=False (pf.from_pretrained(path, scan_layers=False))"
        )


def module_paths(model: nnx.Module) -> dict[str, Path]:
    """transformers module path -> the state path of our module computing the same output, for
    every module of the model's transformers class that can be derived (see the module
    docstring); the models themselves (ours and transformers' root) are not included.
    ModulePathError for a model with scanned layers (`require_layers`)."""
    require_layers(model, "a transformers module path")
    config = model.config
    table = FAMILIES[config.model_type].table(config)
    theirs = defaultdict(set)  # HF module (split on ".") -> our parameters
    for entry in table.entries:
        parts = tuple(rename(config.model_type, entry.hf).split("."))
        for depth in range(1, len(parts)):
            theirs[parts[:depth]].update(entry.ours)
    params = {path for entry in table.entries for path in entry.ours}
    modules = {path: m for path, m in nnx.iter_graph(model) if isinstance(m, nnx.Module)}
    ours = {path: frozenset(p for p in params if p[: len(path)] == path) for path in modules}
    our_groups = _by_parameters(ours)
    found = {}
    for held, group in _by_parameters({k: frozenset(v) for k, v in theirs.items()}).items():
        counterparts = our_groups.get(held, [])
        if len(counterparts) != len(group):
            continue
        for hf, path in zip(group, counterparts, strict=True):
            if path and callable(modules[path]):  # not our root, not a List
                found[".".join(hf)] = path
    return found


def resolve(model: nnx.Module, path: str, paths: dict[str, Path] | None = None) -> Path:
    """The state path of our module for transformers module `path` (also accepted under the
    names of transformers before 5, e.g. `vit.encoder.layer.5.attention`).

    Raises ModulePathError naming the path and the valid ones nearest it.
    """
    paths = module_paths(model) if paths is None else paths
    for name in (path, rename(model.config.model_type, path)):
        if name in paths:
            return paths[name]
    raise ModulePathError(
        f"{path!r} is no module of {type(model).__name__} that can be captured or patched (it "
        "has no parameters, or none of our modules computes exactly it); nearest valid paths: "
        + ", ".join(nearest(rename(model.config.model_type, path), paths))
    )


def nearest(path: str, valid: dict[str, Any] | list[str], n: int = 6) -> list[str]:
    """Up to `n` valid paths nearest `path`: those inside its deepest valid-looking ancestor
    first (`transformer.h.3.mlp.act` -> `transformer.h.3.mlp`, its c_fc, ...), by similarity."""
    parts = path.split(".")
    for depth in range(len(parts), 0, -1):
        prefix = ".".join(parts[:depth])
        near = [p for p in valid if p == prefix or p.startswith(prefix + ".")]
        if near:
            break
    else:
        near = list(valid)
    return sorted(near, key=lambda p: -difflib.SequenceMatcher(None, path, p).ratio())[:n]
