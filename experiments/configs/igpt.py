"""iGPT on scikit-learn's 8x8 digits: a small GPT over 64 pixel tokens, run by experiments/igpt.py.

python experiments/igpt.py --quick                   # a few minutes on 2 CPU cores
python experiments/igpt.py                           # the full run: 3000 steps
python experiments/igpt.py --set model.n_layer=4     # any field of this config, from the CLI

Not for `polyformer train`: that reads text corpora through `data`. Here the data object is
experiments/igpt.py's DigitsData, and of `data` only `seq_len` counts (64: one target per
pixel, the inputs being the start token and the first 63 pixels); `dataset` is a label.
"""

import dataclasses

from polyformer.models.gpt import GPT2Config
from polyformer.training.config import DataConfig, RunConfig
from polyformer.training.optim import OptimizerConfig


def config() -> RunConfig:
    # vocab_size and the start / end token are set by the trainer from the data (levels + 1).
    model = dataclasses.replace(
        GPT2Config.tiny(),
        n_positions=65,  # generate() feeds the last sampled pixel at position 64
        n_embd=96,
        n_layer=3,
        n_head=4,
        resid_pdrop=0.1,
        embd_pdrop=0.1,
        attn_pdrop=0.1,
    )
    return RunConfig(
        model=model,
        data=DataConfig(dataset="sklearn_digits", tokenizer="bytes", seq_len=64),
        optimizer=OptimizerConfig(learning_rate=2e-3, warmup_steps=50, weight_decay=0.1),
        steps=3000,
        batch_size=32,
        eval_every=250,
        eval_batches=5,  # 5 x 32 = 160 of the 180 held-out images; the report uses all 180
        checkpoint_every=500,
        log_every=25,
        out_dir="runs/igpt",
    )
