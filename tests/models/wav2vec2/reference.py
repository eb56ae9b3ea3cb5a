"""Random-weight transformers Wav2Vec2 models, the reference of the parity tests, padded audio
batches, and our forward pass compiled."""

import numpy as np
import torch
import transformers
from flax import nnx

from polyformer.models import wav2vec2

# Odd sizes (our Wav2Vec2Config.tiny()) so that a transposed or mis-split weight shows.
TINY = dict(
    vocab_size=37, hidden_size=36, num_hidden_layers=2, num_attention_heads=3,
    intermediate_size=43, conv_dim=[24, 20, 28], conv_kernel=[10, 3, 2], conv_stride=[5, 2, 2],
    num_conv_pos_embeddings=12, num_conv_pos_embedding_groups=3,
)  # fmt: skip

_COMMON = dict(
    activation_dropout=0.1, apply_spec_augment=True, architectures=["Wav2Vec2ForCTC"],
    attention_dropout=0.1, bos_token_id=1, conv_dim=[512] * 7,
    conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
    ctc_loss_reduction="sum", ctc_zero_infinity=False, eos_token_id=2,
    feat_extract_activation="gelu", feat_extract_dropout=0.0, feat_proj_dropout=0.1,
    final_dropout=0.1, gradient_checkpointing=False, hidden_act="gelu", hidden_dropout=0.1,
    hidden_dropout_prob=0.1, initializer_range=0.02, layer_norm_eps=1e-05, layerdrop=0.1,
    mask_feature_length=10, mask_feature_prob=0.0, mask_time_length=10, mask_time_prob=0.05,
    model_type="wav2vec2", num_conv_pos_embedding_groups=16, num_conv_pos_embeddings=128,
    num_feat_extract_layers=7, pad_token_id=0, transformers_version="4.7.0.dev0", vocab_size=32,
)  # fmt: skip

# config.json of facebook/wav2vec2-base-960h (GroupNorm feature encoder, post-LN encoder).
BASE_960H = dict(
    _COMMON, conv_bias=False, do_stable_layer_norm=False, feat_extract_norm="group",
    hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
)  # fmt: skip

# config.json of facebook/wav2vec2-large-960h-lv60-self (LayerNorm feature encoder with conv
# biases, pre-LN "stable layer norm" encoder).
LARGE_LV60_SELF = dict(
    _COMMON, conv_bias=True, do_stable_layer_norm=True, feat_extract_norm="layer",
    hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
)  # fmt: skip

_GENERIC = ("architectures", "model_type", "transformers_version")


def random_hf_model(config: dict, head: str = "Wav2Vec2ForCTC", seed: int = 0):
    """transformers' model of class `head` at `config` (a config.json dict), in eval mode with
    every parameter random: HF initialises norms and biases to constants, which would hide a
    swapped or dropped tensor. The weight-norm magnitude g stays positive."""
    torch.manual_seed(seed)
    hf_config = transformers.Wav2Vec2Config(
        **{k: v for k, v in config.items() if k not in _GENERIC}
    )
    model = getattr(transformers, head)(hf_config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = 0.02 * torch.randn_like(p)
            p.add_(noise.abs() if name.endswith("original0") else noise)
    return model.eval()


def padded_audio(lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """input_values float32 and attention_mask int64 `[len(lengths), max(lengths)]`: unit-variance
    noise, each row zero-padded at the end to the longest."""
    rng = np.random.default_rng(seed)
    width = max(lengths)
    audio = np.zeros((len(lengths), width), np.float32)
    mask = np.zeros((len(lengths), width), np.int64)
    for row, n in enumerate(lengths):
        audio[row, :n] = rng.standard_normal(n)
        mask[row, :n] = 1
    return audio, mask


def hf_forward(model, input_values, attention_mask=None, **kwargs):
    mask = None if attention_mask is None else torch.as_tensor(attention_mask)
    with torch.no_grad():
        return model(torch.as_tensor(input_values), attention_mask=mask, **kwargs)


@nnx.jit
def logits(model, input_values, attention_mask=None):
    """Our CTC model's logits, as `model(...).logits` computes them."""
    return model(input_values, attention_mask).logits


ATOL = 1e-4


LENGTHS = [1600, 1111]  # 0.1 s and 0.07 s: 79 and 55 frames at TINY's strides


# group: GroupNorm feature encoder + post-LN encoder (base-960h, large-960h);
# layer: LayerNorm feature encoder with conv biases + pre-LN encoder (lv60).
VARIANTS = {
    "group": dict(TINY),
    "layer": dict(TINY, feat_extract_norm="layer", conv_bias=True, do_stable_layer_norm=True),
}


def real_frames(config, attention_mask) -> np.ndarray:
    """Boolean `[batch, frames]`: the frames HF treats as real for this sample mask."""
    lengths = wav2vec2.feat_extract_output_lengths(config, attention_mask.sum(-1))
    frames = wav2vec2.feat_extract_output_lengths(config, attention_mask.shape[1])
    return np.arange(frames)[None] < lengths[:, None]


def assert_close(ours, theirs, where=None, atol=ATOL):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape
    if where is not None:
        ours, theirs = ours[where], theirs[where]
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=atol)
