"""TAPAS's configuration: Hugging Face's `TapasConfig` fields plus ours (kernel, dtypes, head)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax.numpy as jnp

from polyformer.attention import AttentionKernel, Dense
from polyformer.models.activations import check_activation

# The seven token-type channels of `token_type_ids[..., i]`, in order.
TOKEN_TYPES = (
    "segment_ids",
    "column_ids",
    "row_ids",
    "prev_labels",
    "column_ranks",
    "inv_column_ranks",
    "numeric_relations",
)
# The HF classes whose checkpoints this port reads and writes (config.json's `architectures`).
ARCHITECTURES = ("TapasForQuestionAnswering", "TapasModel")
AVERAGE_APPROXIMATIONS = ("ratio", "first_order", "second_order")
# config.json fields that change the architecture in ways this port does not implement.
_UNSUPPORTED = {
    "add_cross_attention": "cross-attention blocks",
    "is_decoder": "TAPAS as a causal decoder",
}
_OURS = ("attention", "dtype", "param_dtype", "architecture")
# The fine-tuning fields of the official checkpoints' config.json files.
_WTQ = dict(
    num_aggregation_labels=4,
    aggregation_labels=("NONE", "SUM", "AVERAGE", "COUNT"),
    no_aggregation_label_index=0,
    use_answer_as_supervision=True,
    answer_loss_cutoff=0.664694,
    cell_selection_preference=0.207951,
    huber_loss_delta=0.121194,
    init_cell_selection_weights_to_zero=True,
    select_one_column=True,
    allow_empty_column_selection=False,
    temperature=0.0352513,
)
_WIKISQL_SUPERVISED = dict(
    _WTQ,
    use_answer_as_supervision=False,
    answer_loss_cutoff=36.4519,
    cell_selection_preference=0.903421,
    huber_loss_delta=222.088,
    allow_empty_column_selection=True,
    temperature=0.763141,
)


@dataclasses.dataclass(frozen=True)
class TapasConfig:
    """Field names and defaults are transformers' `TapasConfig` (the SQA base model);
    `attention`, `dtype`, `param_dtype` and `architecture` are ours.

    Attributes:
      attention: the kernel of every attention layer; None means
        `Dense(dropout_rate=attention_probs_dropout_prob)`.
      dtype: computation dtype; logits, the segmented cell averages and the loss stay float32.
      param_dtype: storage dtype of the parameters.
      aggregation_labels: the name of each aggregation, indexed by its id (config.json's
        {"0": "NONE", ...} dict, kept as a tuple so that the config stays hashable).
      architecture: the HF class the model corresponds to, read from and written to
        config.json's `architectures`: "TapasForQuestionAnswering" (encoder, pooler and the
        cell-selection and aggregation heads) or "TapasModel" (encoder and pooler).
    """

    model_type: ClassVar[str] = "tapas"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 1024
    type_vocab_sizes: tuple[int, ...] = (3, 256, 256, 2, 256, 256, 10)
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    # Fine-tuning hyperparameters: the loss (polyformer.models.tapas.loss) reads them.
    positive_label_weight: float = 10.0
    num_aggregation_labels: int = 0
    aggregation_loss_weight: float = 1.0
    use_answer_as_supervision: bool | None = None
    answer_loss_importance: float = 1.0
    use_normalized_answer_loss: bool = False
    huber_loss_delta: float | None = None
    temperature: float = 1.0
    aggregation_temperature: float = 1.0
    use_gumbel_for_cells: bool = False
    use_gumbel_for_aggregation: bool = False
    average_approximation_function: str = "ratio"
    cell_selection_preference: float | None = None
    answer_loss_cutoff: float | None = None
    max_num_rows: int = 64
    max_num_columns: int = 32
    average_logits_per_cell: bool = False
    select_one_column: bool = True
    allow_empty_column_selection: bool = False
    init_cell_selection_weights_to_zero: bool = False
    reset_position_index_per_cell: bool = True
    disable_per_token_loss: bool = False
    aggregation_labels: tuple[str, ...] | None = None
    no_aggregation_label_index: int | None = None

    attention: AttentionKernel | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    architecture: str = "TapasForQuestionAnswering"

    def __post_init__(self):
        # Tuples, so that the config hashes (jit's static arguments): HF gives lists and dicts.
        object.__setattr__(self, "type_vocab_sizes", tuple(self.type_vocab_sizes))
        if isinstance(self.aggregation_labels, dict):
            labels = {int(k): v for k, v in self.aggregation_labels.items()}
            if sorted(labels) != list(range(len(labels))):
                raise ValueError(
                    f"aggregation_labels must have the ids 0..n-1, got {sorted(labels)}"
                )
            object.__setattr__(
                self, "aggregation_labels", tuple(labels[i] for i in range(len(labels)))
            )
        elif self.aggregation_labels is not None:
            object.__setattr__(self, "aggregation_labels", tuple(self.aggregation_labels))
        check_activation(self.hidden_act)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        for name in (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "max_position_embeddings", "max_num_rows", "max_num_columns",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if len(self.type_vocab_sizes) != len(TOKEN_TYPES):
            raise ValueError(
                f"type_vocab_sizes must have {len(TOKEN_TYPES)} entries ({', '.join(TOKEN_TYPES)})"
                f", got {list(self.type_vocab_sizes)}"
            )
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture {self.architecture!r} is not supported; known: "
                f"{', '.join(ARCHITECTURES)}"
            )
        if self.average_approximation_function not in AVERAGE_APPROXIMATIONS:
            raise ValueError(
                f"average_approximation_function must be one of {AVERAGE_APPROXIMATIONS}, got "
                f"{self.average_approximation_function!r}"
            )
        if self.num_aggregation_labels < 0:
            raise ValueError(
                f"num_aggregation_labels must be >= 0, got {self.num_aggregation_labels}"
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    @property
    def kernel(self) -> AttentionKernel:
        if self.attention is None:
            return Dense(dropout_rate=self.attention_probs_dropout_prob)
        return self.attention

    # Named constructors: the official configurations and the one the tests use.
    @classmethod
    def base(cls, **overrides) -> TapasConfig:
        """google/tapas-base (the pre-trained encoder, no fine-tuning head)."""
        return cls(**{"architecture": "TapasModel", **overrides})

    @classmethod
    def base_wtq(cls, **overrides) -> TapasConfig:
        """google/tapas-base-finetuned-wtq: weak supervision (the answer only) with aggregation."""
        return cls(**{**_WTQ, **overrides})

    @classmethod
    def base_wikisql_supervised(cls, **overrides) -> TapasConfig:
        """google/tapas-base-finetuned-wikisql-supervised: strong supervision (aggregation
        labels given)."""
        return cls(**{**_WIKISQL_SUPERVISED, **overrides})

    @classmethod
    def tiny(cls, **overrides) -> TapasConfig:
        """Odd sizes so that a transposed or mis-split weight cannot go unnoticed; WTQ heads."""
        defaults = dict(
            vocab_size=101, hidden_size=36, num_hidden_layers=2, num_attention_heads=3,
            intermediate_size=53, max_position_embeddings=67,
            type_vocab_sizes=(3, 11, 13, 2, 12, 12, 10), max_num_rows=9, max_num_columns=7,
        )  # fmt: skip
        return cls.base_wtq(**{**defaults, **overrides})

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> TapasConfig:
        """From a config.json dict; generic HF keys are ignored, `architectures` picks the head,
        architecture changes this port lacks raise ValueError."""
        for key, what in _UNSUPPORTED.items():
            if hf.get(key):
                raise ValueError(f"config.json sets {key}: {what} are not supported")
        fields = {f.name for f in dataclasses.fields(cls)} - set(_OURS)
        kwargs = {k: v for k, v in hf.items() if k in fields}
        if "type_vocab_sizes" not in kwargs and isinstance(hf.get("type_vocab_size"), list):
            kwargs["type_vocab_sizes"] = hf["type_vocab_size"]  # the legacy key
        architectures = hf.get("architectures") or ["TapasForQuestionAnswering"]
        known = [a for a in architectures if a in ARCHITECTURES]
        if not known:
            raise ValueError(
                f"config.json's architectures {architectures} name no supported TAPAS class; "
                f"known: {', '.join(ARCHITECTURES)}"
            )
        return cls(**kwargs, architecture=known[0])

    def to_hf(self) -> dict[str, Any]:
        """The config.json dict that transformers' `self.architecture` class reads."""
        hf = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _OURS
        }
        hf["type_vocab_sizes"] = list(self.type_vocab_sizes)
        if self.aggregation_labels is not None:
            hf["aggregation_labels"] = {str(i): v for i, v in enumerate(self.aggregation_labels)}
        return {
            "model_type": self.model_type,
            "architectures": [self.architecture],
            "dtype": jnp.dtype(self.param_dtype).name,
            **hf,
        }
