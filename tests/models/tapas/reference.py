"""Random-weight transformers TAPAS models and hand-built table inputs: the reference of every
parity test here."""

import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

# The TAPAS fields of google/tapas-base-finetuned-wtq's config.json (weak supervision).
WTQ = dict(
    aggregation_labels={0: "NONE", 1: "SUM", 2: "AVERAGE", 3: "COUNT"},
    aggregation_loss_weight=1.0, aggregation_temperature=1.0, allow_empty_column_selection=False,
    answer_loss_cutoff=0.664694, answer_loss_importance=1.0,
    architectures=["TapasForQuestionAnswering"], attention_probs_dropout_prob=0.1,
    average_approximation_function="ratio", average_logits_per_cell=False,
    cell_selection_preference=0.207951, disable_per_token_loss=False, hidden_act="gelu",
    hidden_dropout_prob=0.1, hidden_size=768, huber_loss_delta=0.121194,
    init_cell_selection_weights_to_zero=True, initializer_range=0.02, intermediate_size=3072,
    layer_norm_eps=1e-12, max_num_columns=32, max_num_rows=64, max_position_embeddings=1024,
    no_aggregation_label_index=0, num_aggregation_labels=4, num_attention_heads=12,
    num_hidden_layers=12, pad_token_id=0, positive_label_weight=10.0,
    reset_position_index_per_cell=True, select_one_column=True, temperature=0.0352513,
    type_vocab_sizes=[3, 256, 256, 2, 256, 256, 10], use_answer_as_supervision=True,
    use_gumbel_for_aggregation=False, use_gumbel_for_cells=False,
    use_normalized_answer_loss=False, vocab_size=30522,
)  # fmt: skip
# google/tapas-base-finetuned-wikisql-supervised: strong supervision of the aggregation.
WIKISQL_SUPERVISED = dict(
    WTQ, allow_empty_column_selection=True, answer_loss_cutoff=36.4519,
    cell_selection_preference=0.903421, huber_loss_delta=222.088, temperature=0.763141,
    use_answer_as_supervision=False,
)  # fmt: skip
# Odd sizes; rows and columns beyond max_num_rows/columns exercise the heads' clipping.
TINY = dict(
    vocab_size=101, hidden_size=36, num_hidden_layers=2, num_attention_heads=3,
    intermediate_size=53, max_position_embeddings=67, type_vocab_sizes=[3, 11, 13, 2, 12, 12, 10],
    max_num_rows=9, max_num_columns=7,
)  # fmt: skip


def random_hf_model(cls=transformers.TapasForQuestionAnswering, **config):
    """transformers' TAPAS (`cls`, WTQ heads at TINY sizes unless overridden) in eval mode with
    every parameter random: HF initialises LayerNorms, biases and (WTQ) the cell-selection
    weights to constants, which would hide a swapped or dropped tensor."""
    torch.manual_seed(0)
    model = cls(transformers.TapasConfig(**{**WTQ, **TINY, **config}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        if isinstance(model, transformers.TapasForQuestionAnswering):
            # Cell-selection weights large enough that the temperature matters and the selected
            # column and cells differ between examples.
            model.output_weights.normal_(0, 0.1)
            model.column_output_weights.normal_(0, 0.5)
    return model.eval()


# (columns, data rows, tokens per question) per example of `table_inputs`.
SHAPES = [(3, 4, 5), (8, 2, 3), (2, 10, 4), (4, 3, 6)]


def table_inputs(vocab_size, type_vocab_sizes, length, shapes=SHAPES, seed=0, unanswered=(3,)):
    """Inputs for a batch of questions about tables, built as TapasTokenizer lays them out:
    `[CLS] question [SEP]` (segment 0, cell (0, 0)), then the table row by row, header first
    (row 0), each cell 1-3 tokens, then padding. Every column but the first is numeric.

    Returns numpy arrays: input_ids, attention_mask, labels, numeric_values,
    numeric_values_scale `[batch, length]`, token_type_ids `[batch, length, 7]`, float_answer
    and aggregation_labels `[batch]`. The answer cells are in one column; the examples
    `unanswered` have none. Float answers: numbers for examples 0 and 2, NaN for the others.
    """
    rng = np.random.default_rng(seed)
    batch = len(shapes)
    out = dict(
        input_ids=np.zeros((batch, length), np.int64),
        attention_mask=np.zeros((batch, length), np.int64),
        token_type_ids=np.zeros((batch, length, 7), np.int64),
        labels=np.zeros((batch, length), np.int64),
        numeric_values=np.full((batch, length), np.nan, np.float32),
        numeric_values_scale=np.ones((batch, length), np.float32),
    )
    for b, (columns, rows, question) in enumerate(shapes):
        answer_column = 1 + b % columns
        answer_rows = set(rng.choice(np.arange(1, rows + 1), size=min(2, rows), replace=False))
        tokens = [(0, 0, 0, None)] * (question + 2)  # (segment, column, row, value)
        for row in range(rows + 1):
            for column in range(1, columns + 1):
                value = float(rng.integers(-50, 100)) if row and column > 1 else None
                tokens += [(1, column, row, value)] * int(rng.integers(1, 4))
        if len(tokens) > length:
            raise ValueError(f"example {b} has {len(tokens)} tokens, more than {length}")
        n = len(tokens)
        out["input_ids"][b, :n] = rng.integers(1, vocab_size, n)
        out["attention_mask"][b, :n] = 1
        types = out["token_type_ids"][b]
        for i, (segment, column, row, value) in enumerate(tokens):
            types[i, :3] = segment, column, row
            if segment:
                types[i, 3] = rng.integers(0, type_vocab_sizes[3])
                types[i, 4:6] = rng.integers(0, min(type_vocab_sizes[4:6]), 2)
                types[i, 6] = rng.integers(0, type_vocab_sizes[6])
            if value is not None:
                out["numeric_values"][b, i] = value
                out["numeric_values_scale"][b, i] = sum(t[1:3] == (column, row) for t in tokens)
            if b not in unanswered and column == answer_column and row in answer_rows:
                out["labels"][b, i] = 1
    out["float_answer"] = np.array([7.0, np.nan, 3.0, np.nan], np.float32)[:batch]
    out["aggregation_labels"] = np.array([1, 0, 3, 0], np.int64)[:batch]
    return out


def hf_forward(model, inputs, **extra):
    torch_inputs = {
        k: torch.as_tensor(v)
        for k, v in inputs.items()
        if k in ("input_ids", "attention_mask", "token_type_ids")
    }
    torch_inputs.update({k: torch.as_tensor(v) for k, v in extra.items()})
    with torch.no_grad():
        return model(**torch_inputs)


@nnx.jit
def forward(model, input_ids, attention_mask, token_type_ids, **answers):
    """Our model's output, with its loss when given the `answers` (labels, float_answer, ...),
    compiled (it compiles faster than eager mode runs on CPU)."""
    return model(input_ids, attention_mask, token_type_ids, **answers)


def assert_logits_match(got, want, attention_mask, temperature):
    """Cell logits `[batch, length]` compared on real tokens, in the three ways their size
    allows: the same tokens ruled out (about -10000, where float32 steps are 1e-3 apart, so an
    absolute 1e-4 is below one ulp); the others within 1e-4 absolute before the head divides them
    by `temperature` (WTQ's 0.0352 multiplies the encoder's float32 rounding by 28: at the
    official size, logits near 64 differ by 1.6e-4, 2.5e-6 relative, on an AVX-512 Xeon, where
    XLA vectorises its sums differently than on the AMD machines); the ruled-out ones within
    1e-6 relative (a few ulp)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == np.float32
    real = np.asarray(attention_mask).astype(bool)
    ruled_out = want < -5000
    np.testing.assert_array_equal((got < -5000)[real], ruled_out[real])
    kept = real & ~ruled_out
    assert kept.any() and (real & ruled_out).any()
    np.testing.assert_allclose(got[kept] * temperature, want[kept] * temperature, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got[real & ruled_out], want[real & ruled_out], rtol=1e-6, atol=0)


LENGTH = TINY["max_position_embeddings"]


INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def inputs(**kwargs):
    return table_inputs(TINY["vocab_size"], TINY["type_vocab_sizes"], LENGTH, **kwargs)


encode = nnx.jit(lambda model, *args: model(*args))


def ours_forward(model, x):
    return forward(model, *(jnp.asarray(x[k]) for k in INPUT_NAMES))
