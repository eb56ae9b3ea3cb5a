"""GPT-2's conversion table: transformers' GPT2LMHeadModel state dict <-> our nnx state.

HF's GPT-2 uses Conv1D, whose weight is already [in, out] like nnx.Linear's kernel: no transposes
except lm_head, a torch nn.Linear ([out, in]). The fused attention projection `attn.c_attn`
([n_embd, 3 * n_embd], columns q | k | v) splits into our query, key and value.
"""

from __future__ import annotations

from polyformer.models import convert
from polyformer.models.convert import embedding, layer_norm, linear, split, transpose
from polyformer.models.gpt.config import GPT2Config

BASE = "transformer."  # GPT2LMHeadModel's prefix; GPT2Model checkpoints have none


def _conv1d(hf: str, ours: tuple) -> list[convert.Entry]:
    """HF's Conv1D: a linear layer whose weight is stored [in, out] already."""
    return linear(hf, ours, transposed=False)


def _block(i: int) -> list[convert.Entry]:
    hf, ours = f"{BASE}h.{i}.", ("h", i)
    qkv = tuple((*ours, "attn", name) for name in ("query", "key", "value"))
    return [
        *layer_norm(hf + "ln_1", (*ours, "ln_1")),
        split(hf + "attn.c_attn.weight", tuple((*p, "kernel") for p in qkv), axis=1),
        split(hf + "attn.c_attn.bias", tuple((*p, "bias") for p in qkv), axis=0),
        *_conv1d(hf + "attn.c_proj", (*ours, "attn", "out")),
        *layer_norm(hf + "ln_2", (*ours, "ln_2")),
        *_conv1d(hf + "mlp.c_fc", (*ours, "mlp", "c_fc")),
        *_conv1d(hf + "mlp.c_proj", (*ours, "mlp", "c_proj")),
    ]


def table(config: GPT2Config) -> convert.Table:
    """The table for one configuration (its number of layers, tied or separate lm_head)."""
    entries = [
        *embedding(BASE + "wte", ("wte",)),
        *embedding(BASE + "wpe", ("wpe",)),
        *(entry for i in range(config.n_layer) for entry in _block(i)),
        *layer_norm(BASE + "ln_f", ("ln_f",)),
    ]
    if not config.tie_word_embeddings:
        entries.append(transpose("lm_head.weight", ("lm_head", "kernel")))
    # Older checkpoints (the official ones among them) store each layer's causal mask buffers.
    buffers = {
        f"{BASE}h.{i}.attn.{b}" for i in range(config.n_layer) for b in ("bias", "masked_bias")
    }
    # HF writes only wte for a tied head; a plain torch state dict repeats it as lm_head.weight.
    tied = (("lm_head.weight", BASE + "wte.weight"),) if config.tie_word_embeddings else ()
    return convert.Table(
        tuple(entries), optional_prefix=BASE, ignored=frozenset(buffers), tied=tied
    )
