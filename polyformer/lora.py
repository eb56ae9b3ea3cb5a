"""LoRA adapters on the Linear layers of any family, saved and loaded in PEFT's format.

    model = pf.from_pretrained("gpt2-dir")
    model = lora.apply(model, lora.LoraConfig(rank=8, alpha=16, target_modules=("c_attn",)))
    nnx.state(model, lora.LoRAParam)            # the adapters only: what fine-tuning trains
    lora.save_adapter(model, "adapter/")         # PeftModel.from_pretrained(hf_gpt2, "adapter/")
    model = lora.load_adapter(pf.from_pretrained("gpt2-dir"), "adapter/")
    plain = lora.merge(model)                    # the adapters folded into the base weights

A targeted `nnx.Linear` is replaced in place by a `LoRALinear`, a Linear with the same `kernel`
and `bias` variables (so the base parameters keep their state paths and their logical axes) plus
`lora_A` `[in, rank]` and `lora_B` `[rank, out]`: y = x @ kernel + bias + alpha / rank *
dropout(x) @ lora_A @ lora_B. `pf.save_pretrained` takes the merged model, not the adapted one.

Target names are matched, as PEFT matches them, against the module paths of the transformers
class that the family's conversion table writes (`transformer.h.0.attn.c_attn` for GPT-2), so an
adapter trained here is named as PEFT names it there. Where one HF module is split into several of
ours (GPT-2's fused c_attn -> query, key, value), the parts share one `lora_A` variable and each
holds its rows of HF's `lora_B`: the same adapter exactly, trained as one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.flax
from flax import nnx

from polyformer.models import FAMILIES
from polyformer.models.convert import CheckpointError, CheckpointMismatchError, Entry
from polyformer.models.module_paths import node, rename, replace, require_layers

LoRAParam = nnx.LoRAParam  # a Param, so that optimizers and savers of all parameters see it

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."

# What `target_modules=()` adapts: the attention's query and value projections, PEFT's default
# for GPT-2 and BERT (it has none for the other families).
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "gpt2": ("c_attn",),
    "vit": ("q_proj", "v_proj"),
    "clip": ("q_proj", "v_proj"),
    "tapas": ("query", "value"),
    "wav2vec2": ("q_proj", "v_proj"),
}

# Linear layers that a family's model multiplies by their kernel array instead of calling them
# (the output heads, for float32 logits): an adapter there would never run, so none is placed.
NOT_CALLED: dict[str, frozenset[tuple[str, ...]]] = {
    "gpt2": frozenset({("lm_head",)}),
    "wav2vec2": frozenset({("lm_head",)}),
}

# PEFT LoraConfig fields that change what the adapter computes and that we do not implement:
# their value when unused. An adapter_config.json with any other value is refused.
UNSUPPORTED_PEFT_FIELDS: dict[str, Any] = {
    "bias": "none",
    "use_dora": False,
    "lora_bias": False,
    "rank_pattern": {},
    "alpha_pattern": {},
    "layers_to_transform": None,
    "layers_pattern": None,
    "modules_to_save": None,
    "exclude_modules": None,
    "target_parameters": None,
    "layer_replication": None,
    "trainable_token_indices": None,
}


class LoraConfigError(ValueError):
    """A LoRA configuration that cannot be applied to the model or is not one we implement."""


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """A LoRA adapter's shape: PEFT's LoraConfig fields under shorter names, with PEFT's
    defaults (rank 8, alpha 8, no dropout, the family's default targets).

    Attributes:
      rank: PEFT's `r`, the inner width of each adapter (positive).
      alpha: PEFT's `lora_alpha`; the update is scaled by alpha / rank (alpha / sqrt(rank) with
        use_rslora).
      dropout: PEFT's `lora_dropout`, on the adapter's input in training mode only.
      target_modules: module names as PEFT spells them for the transformers class: a tuple of
        names, each matching a module path equal to it or ending in "." + it (e.g. ("c_attn",)
        for GPT-2, ("q_proj", "v_proj") for ViT under transformers 5), or one string that must
        match a whole path as a regular expression. Empty: the family's DEFAULT_TARGETS.
      use_rslora: PEFT's rank-stabilised scaling.
    """

    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | str = ()
    use_rslora: bool = False

    def __post_init__(self):
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise LoraConfigError(f"rank must be a positive integer, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float):
            raise LoraConfigError(f"alpha must be a number, got {self.alpha!r}")
        if not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise LoraConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    @property
    def names(self) -> tuple[str, ...]:
        """target_modules as a tuple (one regular expression when given as a string)."""
        targets = self.target_modules
        return (targets,) if isinstance(targets, str) else targets

    def matches(self, module: str, name: str | None = None) -> bool:
        """Whether PEFT would adapt the module at transformers path `module` (for target `name`
        only, when given)."""
        regex = isinstance(self.target_modules, str)
        return any(
            re.fullmatch(t, module) is not None
            if regex
            else module == t or module.endswith("." + t)
            for t in (self.names if name is None else (name,))
        )

    def to_peft(self) -> dict[str, Any]:
        """The fields of PEFT's adapter_config.json that describe this adapter."""
        targets = self.target_modules
        return {
            "peft_type": "LORA",
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": targets if isinstance(targets, str) else list(targets),
            "use_rslora": self.use_rslora,
            "inference_mode": True,
            "task_type": None,
            "base_model_name_or_path": None,
            **UNSUPPORTED_PEFT_FIELDS,
        }

    @classmethod
    def from_peft(cls, config: Mapping[str, Any]) -> LoraConfig:
        """Reads PEFT's adapter_config.json; raises LoraConfigError for a PEFT type or option
        that we do not implement."""
        if config.get("peft_type") != "LORA":
            raise LoraConfigError(f"peft_type must be 'LORA', got {config.get('peft_type')!r}")
        for field, unused in UNSUPPORTED_PEFT_FIELDS.items():
            value = config.get(field, unused)
            if value != unused and not (unused is None and value in ({}, [], "")):
                raise LoraConfigError(f"{field}={value!r} is not supported (only {unused!r})")
        return cls(
            rank=config.get("r", 8),  # PEFT's defaults
            alpha=config.get("lora_alpha", 8),
            dropout=config.get("lora_dropout", 0.0),
            target_modules=config.get("target_modules") or (),  # None: the family's default
            use_rslora=config.get("use_rslora", False),
        )


class LoRALinear(nnx.Linear):
    """An nnx.Linear with a low-rank update; the base `kernel` and `bias` are the very variables
    of the Linear it replaces.

    x `[..., in_features]` -> x @ kernel + bias + scaling * dropout(x) @ lora_A @ lora_B
    `[..., out_features]`.

    Args:
      base: the Linear replaced; its variables and settings (dtype, precision) are taken over.
      lora_A: a LoRAParam `[in_features, rank]` (one variable may serve several layers).
      lora_B: a LoRAParam `[rank, out_features]`.
      scaling: the factor on the update (LoraConfig.scaling).
      dropout: on the update's input; it follows model.train() / model.eval().
    """

    def __init__(
        self,
        base: nnx.Linear,
        lora_A: nnx.Variable,
        lora_B: nnx.Variable,
        *,
        scaling: float,
        dropout: nnx.Dropout | None,
    ):
        super().__init__(**_linear_args(base), rngs=nnx.Rngs(0))
        self.kernel, self.bias = base.kernel, base.bias
        self.lora_A, self.lora_B = lora_A, lora_B
        self.scaling = scaling
        self.lora_dropout = dropout

    def __call__(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
        y = super().__call__(inputs, out_sharding=out_sharding)
        x = inputs if self.lora_dropout is None else self.lora_dropout(inputs)
        x, a, b = self.promote_dtype((x, self.lora_A[...], self.lora_B[...]), dtype=self.dtype)
        return y + (self.scaling * ((x @ a) @ b)).astype(y.dtype)

    def merged(self) -> nnx.Linear:
        """A plain nnx.Linear computing the same function (without dropout)."""
        linear = nnx.Linear(**_linear_args(self), rngs=nnx.Rngs(0))
        kernel = self.kernel[...]
        delta = self.scaling * (self.lora_A[...].astype(jnp.float32) @ self.lora_B[...])
        linear.kernel = nnx.clone(self.kernel)
        linear.kernel.set_value((kernel + delta).astype(kernel.dtype))
        linear.bias = nnx.clone(self.bias) if self.bias is not None else None
        return linear


_LINEAR_FIELDS = (
    "in_features",
    "out_features",
    "use_bias",
    "dtype",
    "param_dtype",
    "precision",
    "dot_general",
    "promote_dtype",
    "preferred_element_type",
)


def _linear_args(linear: nnx.Linear) -> dict[str, Any]:
    """The constructor arguments that rebuild `linear`, its parameters zero-initialised (the
    caller puts the real variables in)."""
    zeros = nnx.initializers.zeros_init()
    return {f: getattr(linear, f) for f in _LINEAR_FIELDS} | dict(
        kernel_init=zeros, bias_init=zeros
    )


@dataclasses.dataclass(frozen=True)
class Site:
    """One HF module that LoRA can adapt, and the Linear layers of ours that it is.

    Attributes:
      module: its transformers module path, e.g. `transformer.h.0.attn.c_attn`.
      paths: our Linear modules' state paths; HF's output features are theirs concatenated.
      fan_in_fan_out: HF stores the weight `[in, out]` (GPT-2's Conv1D), not `[out, in]`.
    """

    module: str
    paths: tuple[tuple[str | int, ...], ...]
    fan_in_fan_out: bool


def _layout(entry: Entry, shapes: list[tuple[int, int]]) -> bool | None:
    """Probes the entry's transform with distinct values: True if the HF tensor is our kernels
    `[in, out_i]` concatenated along out, False if that transposed (a torch nn.Linear), None if
    neither (then LoRA's two factors have no HF counterpart)."""
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    with jax.ensure_compile_time_eval():  # concrete values even where apply runs under jit
        hf = np.asarray(entry.to_hf(*map(jnp.asarray, parts)))
    joined = np.concatenate(parts, axis=1)
    if hf.shape == joined.shape and np.array_equal(hf, joined):
        return True
    if hf.shape == joined.T.shape and np.array_equal(hf, joined.T):
        return False
    return None


def sites(model: nnx.Module) -> list[Site]:
    """Every HF module of the model's family that is one or several of our nnx.Linear layers
    (those its model calls), in the conversion table's order. ModulePathError (a ValueError)
    for a model with scanned layers."""
    require_layers(model, "LoRA")
    config = model.config
    table = FAMILIES[config.model_type].table(config)
    skipped = NOT_CALLED.get(config.model_type, frozenset())
    linears = {
        path: node
        for path, node in nnx.iter_graph(model)
        if isinstance(node, nnx.Linear) and path not in skipped
    }
    found = []
    for entry in table.entries:
        modules = [path[:-1] for path in entry.ours]
        if not entry.hf.endswith(".weight") or not all(
            path[-1] == "kernel" and path[:-1] in linears for path in entry.ours
        ):
            continue
        shapes = [linears[m].kernel.shape for m in modules]
        fan_in_fan_out = _layout(entry, shapes)
        if fan_in_fan_out is not None:
            module = rename(config.model_type, entry.hf.removesuffix(".weight"))
            found.append(Site(module, tuple(modules), fan_in_fan_out))
    return found


def _check_names(config: LoraConfig, modules: list[str], owner: str) -> None:
    unmatched = [n for n in config.names if not any(config.matches(m, n) for m in modules)]
    if unmatched and isinstance(config.target_modules, str):
        raise LoraConfigError(
            f"target_modules {config.target_modules!r}, a string, is a regular expression that "
            f"must match a whole module path (as in PEFT), and matches no module of {owner}, e.g. "
            f"{modules[0]}; give names as a tuple, e.g. {(modules[0].rsplit('.', 1)[-1],)}"
        )
    if unmatched:
        endings = sorted({m.rsplit(".", 1)[-1] for m in modules})
        raise LoraConfigError(
            f"target_modules {unmatched} match no Linear layer of {owner}; "
            f"its adaptable modules end in: {', '.join(endings)}"
        )


def _targets(model: nnx.Module, config: LoraConfig) -> list[Site]:
    adaptable = sites(model)
    _check_names(config, [s.module for s in adaptable], type(model).__name__)
    return [site for site in adaptable if config.matches(site.module)]


def _with_defaults(config: LoraConfig, model_type: str) -> LoraConfig:
    if config.target_modules:
        return config
    return dataclasses.replace(config, target_modules=DEFAULT_TARGETS[model_type])


def check_targets(model_config: Any, config: LoraConfig) -> None:
    """Raises LoraConfigError naming the target names that match no module of the model that
    `model_config` builds, from the family's conversion table alone (building the model to
    find its Linear layers takes seconds): what a run config checks when it is built. `apply`
    checks the rest (that each match is a Linear layer the model calls), and a model with
    scan_layers=True."""
    if model_config.scan_layers:
        raise LoraConfigError(
            "LoRA adapts each layer's own Linear modules, which scanned layers do not have: set "
            "model.scan_layers=False"
        )
    model_type = model_config.model_type
    skipped = NOT_CALLED.get(model_type, frozenset())
    modules = [
        rename(model_type, entry.hf.removesuffix(".weight"))
        for entry in FAMILIES[model_type].table(model_config).entries
        if entry.hf.endswith(".weight")
        and all(path[-1] == "kernel" and path[:-1] not in skipped for path in entry.ours)
    ]
    _check_names(_with_defaults(config, model_type), modules, f"{model_type} models")


def _axes(variable: nnx.Variable) -> tuple[Any, Any]:
    """The base kernel's logical axes `(in, out)`, (None, None) if it has none."""
    return tuple(variable.get_metadata().get("out_sharding") or (None, None))


def apply(model: nnx.Module, config: LoraConfig, *, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """Replaces the targeted Linear layers of `model` (in place; also returned) by LoRALinear.

    lora_A is initialised as PEFT initialises it (uniform in +-1/sqrt(in_features)) from
    `rngs.params`, lora_B with zeros, so the adapted model computes what it did. Dropout, when
    config.dropout > 0, draws from `rngs.dropout` and runs in training mode only (model.train()).
    Raises LoraConfigError for a target name that matches no adaptable module.
    """
    if getattr(model, "lora_config", None) is not None:
        raise LoraConfigError(f"{type(model).__name__} already has LoRA adapters")
    config = _with_defaults(config, model.config.model_type)
    rngs = nnx.Rngs(0) if rngs is None else rngs
    deterministic = getattr(model, "deterministic", True)
    for site in _targets(model, config):
        bases = [node(model, path) for path in site.paths]
        in_axis, _ = _axes(bases[0].kernel)
        in_features = bases[0].in_features
        bound = 1 / math.sqrt(in_features)
        lora_A = LoRAParam(
            jax.random.uniform(
                rngs.params(), (in_features, config.rank), bases[0].param_dtype, -bound, bound
            ),
            out_sharding=(in_axis, None),
            eager_sharding=False,  # placed by the trainer's rules, as the base weights are
        )
        for path, base in zip(site.paths, bases, strict=True):
            lora_B = LoRAParam(
                jnp.zeros((config.rank, base.out_features), base.param_dtype),
                out_sharding=(None, _axes(base.kernel)[1]),
                eager_sharding=False,
            )
            dropout = None
            if config.dropout:
                dropout = nnx.Dropout(config.dropout, deterministic=deterministic, rngs=rngs)
            layer = LoRALinear(base, lora_A, lora_B, scaling=config.scaling, dropout=dropout)
            replace(model, path, layer)
    model.lora_config = config
    return model


def _adapted(model: nnx.Module) -> Iterator[tuple[Site, list[LoRALinear]]]:
    """Each adapted site with its LoRALinear layers (one per part)."""
    for site in sites(model):
        layers = [node(model, path) for path in site.paths]
        adapted = [isinstance(layer, LoRALinear) for layer in layers]
        if any(adapted) and not all(adapted):
            raise LoraConfigError(f"{site.module}: only some of its parts {site.paths} adapted")
        if all(adapted):
            yield site, layers


def _config(model: nnx.Module) -> LoraConfig:
    config = getattr(model, "lora_config", None)
    if config is None:
        raise LoraConfigError(
            f"{type(model).__name__} has no LoRA adapters: lora.apply or lora.load_adapter first"
        )
    return config


def _shared_A(site: Site, layers: list[LoRALinear]) -> jax.Array:
    """The lora_A of a site: one for all its parts, as PEFT has one per HF module."""
    first = layers[0].lora_A[...]
    for layer in layers[1:]:
        if layer.lora_A is not layers[0].lora_A and not np.array_equal(layer.lora_A[...], first):
            raise LoraConfigError(
                f"{site.module}: its parts {site.paths} have different lora_A; PEFT's format "
                "holds one per module (lora.apply makes the parts share it)"
            )
    return first


def adapter_tensors(model: nnx.Module) -> dict[str, jax.Array]:
    """The adapters under PEFT's names for the transformers class: `base_model.model.<module>.
    lora_A.weight` `[rank, in]` and `.lora_B.weight` `[out, rank]`, as torch nn.Linear."""
    _config(model)
    tensors = {}
    for site, layers in _adapted(model):
        name = PEFT_PREFIX + site.module
        tensors[f"{name}.lora_A.weight"] = _shared_A(site, layers).T
        parts = [layer.lora_B[...] for layer in layers]
        tensors[f"{name}.lora_B.weight"] = jnp.concatenate(parts, axis=1).T
    return tensors


def save_adapter(model: nnx.Module, path: str | os.PathLike) -> None:
    """Writes `adapter_config.json` and `adapter_model.safetensors` into directory `path`
    (created if needed), as PEFT's `save_pretrained` writes them, so that
    `peft.PeftModel.from_pretrained(transformers_model, path)` loads the adapter."""
    config = _config(model)
    tensors = adapter_tensors(model)
    fan_in_fan_out = all(site.fan_in_fan_out for site, _ in _adapted(model))
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    # jnp.asarray: safetensors writes a NumPy view's buffer as it lies in memory, so a transposed
    # view of host parameters (a gathered model's) would be saved scrambled.
    tensors = {name: jnp.asarray(value) for name, value in tensors.items()}
    safetensors.flax.save_file(tensors, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    peft_config = config.to_peft() | {"fan_in_fan_out": fan_in_fan_out}
    (directory / ADAPTER_CONFIG).write_text(json.dumps(peft_config, indent=2, sort_keys=True))


def _read_adapter(directory: Path) -> tuple[LoraConfig, dict[str, jax.Array]]:
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"no {name} in {directory}: not a PEFT adapter directory")
    try:
        config = json.loads((directory / ADAPTER_CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{directory / ADAPTER_CONFIG} is not valid JSON: {e}") from e
    try:
        tensors = safetensors.flax.load_file(directory / ADAPTER_WEIGHTS)
    except Exception as e:  # safetensors raises its own error type or OSError
        raise CheckpointError(
            f"{directory / ADAPTER_WEIGHTS} is not a safetensors file: {e}"
        ) from e
    return LoraConfig.from_peft(config), tensors


def load_adapter(
    model: nnx.Module, path: str | os.PathLike, *, rngs: nnx.Rngs | None = None
) -> nnx.Module:
    """Adds the PEFT adapter saved in directory `path` to `model` (in place; also returned).

    Reads what PEFT's `save_pretrained` writes for the transformers class of the model's family
    (names with or without the base-model prefix, and the pre-transformers-5 module names).
    Raises CheckpointMismatchError listing every missing, unexpected and wrong-shape tensor,
    LoraConfigError for an adapter type or option we do not implement.
    """
    directory = Path(path)
    config, tensors = _read_adapter(directory)
    apply(model, config, rngs=rngs)
    prefix = FAMILIES[model.config.model_type].table(model.config).optional_prefix
    expected = adapter_tensors(model)
    by_name, unexpected = {}, []
    for name, value in tensors.items():
        full = rename(model.config.model_type, name)
        if full not in expected and full.startswith(PEFT_PREFIX):
            full = PEFT_PREFIX + prefix + full.removeprefix(PEFT_PREFIX)
        if full in expected and full not in by_name:
            by_name[full] = value
        else:
            unexpected.append(name)
    missing = [name for name in expected if name not in by_name]
    wrong_shape = [
        f"{name}: adapter {tuple(value.shape)}, model {tuple(expected[name].shape)}"
        for name, value in by_name.items()
        if value.shape != expected[name].shape
    ]
    if missing or unexpected or wrong_shape:
        raise CheckpointMismatchError(
            str(directory / ADAPTER_WEIGHTS), missing, unexpected, wrong_shape
        )
    for site, layers in _adapted(model):
        name = PEFT_PREFIX + site.module
        a = by_name[f"{name}.lora_A.weight"].T
        layers[0].lora_A.set_value(a.astype(layers[0].lora_A[...].dtype))
        sizes = np.cumsum([layer.out_features for layer in layers])[:-1]
        parts = jnp.split(by_name[f"{name}.lora_B.weight"].T, sizes, axis=1)
        for layer, b in zip(layers, parts, strict=True):
            layer.lora_B.set_value(b.astype(layer.lora_B[...].dtype))
    return model


def merge(model: nnx.Module) -> nnx.Module:
    """A copy of `model` with every adapter folded into its base kernel (kernel + scaling *
    lora_A @ lora_B) and plain nnx.Linear layers again: the model `apply` started from, with the
    same outputs as the adapted one in evaluation mode. `model` is left as it is."""
    _config(model)
    merged = nnx.clone(model)
    for site, layers in list(_adapted(merged)):
        for path, layer in zip(site.paths, layers, strict=True):
            replace(merged, path, layer.merged())
    del merged.lora_config
    return merged


__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "LoRALinear",
    "LoRAParam",
    "LoraConfig",
    "LoraConfigError",
    "Site",
    "adapter_tensors",
    "apply",
    "check_targets",
    "load_adapter",
    "merge",
    "save_adapter",
    "sites",
]
