"""Random-weight transformers GPT-2 models, the reference of every parity test here, and our
model's forward pass compiled (it compiles faster than eager mode runs it on CPU)."""

import numpy as np
import torch
import transformers
from flax import nnx

TINY = dict(
    vocab_size=1031, n_positions=37, n_embd=96, n_layer=3, n_head=6,
    bos_token_id=1030, eos_token_id=1030,
)  # fmt: skip
# gpt2's configuration (124M parameters).
OFFICIAL = dict(
    vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
    bos_token_id=50256, eos_token_id=50256,
)  # fmt: skip


def random_hf_model(**config) -> transformers.GPT2LMHeadModel:
    """transformers' GPT-2 (TINY sizes unless overridden) in eval mode with every parameter
    random: HF initialises LayerNorms and biases to constants, which would hide a swapped or
    dropped tensor."""
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**TINY, **config}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def hf_logits(model, input_ids, attention_mask=None) -> np.ndarray:
    mask = None if attention_mask is None else torch.as_tensor(attention_mask)
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(input_ids), attention_mask=mask).logits.numpy()


def left_padded(vocab_size: int, lengths: list[int], seed: int = 0):
    """input_ids and attention_mask `[len(lengths), max(lengths)]` int64, rows left-padded with
    token 0 to the longest."""
    rng = np.random.default_rng(seed)
    width = max(lengths)
    input_ids = rng.integers(0, vocab_size, (len(lengths), width))
    mask = np.zeros((len(lengths), width), np.int64)
    for row, n in enumerate(lengths):
        input_ids[row, : width - n] = 0
        mask[row, width - n :] = 1
    return input_ids, mask


@nnx.jit
def logits(model, input_ids, attention_mask=None, position_ids=None):
    """Our model's logits, as `model(...).logits` computes them."""
    return model(input_ids, attention_mask, position_ids).logits
