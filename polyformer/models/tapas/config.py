"""TAPAS's configuration: Hugging Face's `TapasConfig` fields plus ours (kernel, dtypes, head)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from polyformer.models.config import EncoderConfig

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
AVERAGE_APPROXIMATIONS = ("ratio", "first_order", "second_order")
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
class TapasConfig(EncoderConfig):
    """Field names and defaults are transformers' `TapasConfig` (the SQA base model); the fields
    of ModelConfig (`attention`, `dtype`, `param_dtype`, `architectures`) are ours.

    Attributes:
      attention: the kernel of every attention layer; None means
        `Dense(dropout_rate=attention_probs_dropout_prob)`.
      dtype: computation dtype; logits, the segmented cell averages and the loss stay float32.
      aggregation_labels: the name of each aggregation, indexed by its id (config.json's
        {"0": "NONE", ...} dict, kept as a tuple so that the config stays hashable).
      architectures: the HF class the model corresponds to: "TapasForQuestionAnswering"
        (encoder, pooler and the cell-selection and aggregation heads) or "TapasModel" (encoder
        and pooler).
    """

    model_type: ClassVar[str] = "tapas"
    ARCHITECTURES: ClassVar[tuple[str, ...]] = ("TapasForQuestionAnswering", "TapasModel")
    ATTENTION_DROPOUT: ClassVar[str] = "attention_probs_dropout_prob"
    UNSUPPORTED: ClassVar[dict[str, str]] = {
        "add_cross_attention": "cross-attention blocks",
        "is_decoder": "TAPAS as a causal decoder",
    }
    OURS: ClassVar[tuple[str, ...]] = (*EncoderConfig.OURS, "aggregation_labels")
    TUPLES: ClassVar[tuple[str, ...]] = (*EncoderConfig.TUPLES, "type_vocab_sizes")
    # Older config.json files (the official ones among them) call type_vocab_sizes this.
    RENAMED: ClassVar[dict[str, str]] = {"type_vocab_size": "type_vocab_sizes"}
    POSITIVE: ClassVar[tuple[str, ...]] = (
        *EncoderConfig.POSITIVE, "vocab_size", "max_position_embeddings", "max_num_rows",
        "max_num_columns",
    )  # fmt: skip

    vocab_size: int = 30522
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 1024
    type_vocab_sizes: tuple[int, ...] = (3, 256, 256, 2, 256, 256, 10)
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

    def __post_init__(self):
        # A tuple, so that the config hashes (jit's static arguments): HF gives a dict.
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
        super().__post_init__()
        if len(self.type_vocab_sizes) != len(TOKEN_TYPES):
            raise ValueError(
                f"type_vocab_sizes must have {len(TOKEN_TYPES)} entries ({', '.join(TOKEN_TYPES)})"
                f", got {list(self.type_vocab_sizes)}"
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

    # Named constructors: the official configurations and the one the tests use.
    @classmethod
    def base(cls, **overrides) -> TapasConfig:
        """google/tapas-base (the pre-trained encoder, no fine-tuning head)."""
        return cls(**{"architectures": ("TapasModel",), **overrides})

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
    def kwargs_from_hf(cls, hf: Mapping[str, Any]) -> dict[str, Any]:
        """ModelConfig's, plus `aggregation_labels` (a JSON object of id -> name)."""
        kwargs = super().kwargs_from_hf(hf)
        labels = hf.get("aggregation_labels")
        if labels is not None and not isinstance(labels, (dict, list)):
            raise ValueError(
                f"config.json: aggregation_labels must be an object of id -> name, got {labels!r}"
            )
        if labels is not None:
            kwargs["aggregation_labels"] = labels
        return kwargs

    def to_hf(self) -> dict[str, Any]:
        """The config.json dict that transformers' `self.architecture` class reads."""
        labels = self.aggregation_labels
        ids = None if labels is None else {str(i): label for i, label in enumerate(labels)}
        return {**super().to_hf(), "aggregation_labels": ids}
