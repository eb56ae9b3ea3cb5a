"""iGPT on scikit-learn's 8x8 digits: a small GPT over 64 pixel tokens, run by experiments/igpt.py.

python -m experiments.igpt --quick                   # a few minutes on 2 CPU cores
python -m experiments.igpt                           # the full run: 3000 steps
python -m experiments.igpt --set model.n_layer=4     # any field of this config, from the CLI

polyformer train experiments/configs/igpt.py      # training alone, no evaluation

Data: `DigitPixels` (polyformer/training/data/vision.py): the embedded `sklearn_digits/gray8`
TFDS set as 65-token sequences (a start token, then 64 pixel levels); the model reads the start
token and pixels 0..62 and predicts pixels 0..63.
"""

import dataclasses

from polyformer.models.gpt import GPT2Config
from polyformer.training.config import RunConfig
from polyformer.training.data.vision import DigitPixels
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
        data=DigitPixels(levels=17),
        optimizer=OptimizerConfig(learning_rate=2e-3, warmup_steps=50, weight_decay=0.1),
        steps=3000,
        batch_size=32,
        eval_every=250,
        eval_batches=4,  # 4 x 32 = 128 of the held-out images; the report uses all of them
        checkpoint_every=500,
        log_every=25,
        out_dir="runs/igpt",
    )
