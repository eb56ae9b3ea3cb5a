"""The main job: a small GPT on the Python standard library's source, a few minutes on 2 CPU cores.

polyformer train experiments/configs/gpt_stdlib_demo.py
polyformer train experiments/configs/gpt_stdlib_demo.py --set steps=2000   # continue it
"""

import dataclasses

from polyformer.models.gpt import GPT2Config
from polyformer.training.config import RunConfig
from polyformer.training.data import TextData
from polyformer.training.optim import OptimizerConfig


def config() -> RunConfig:
    model = dataclasses.replace(
        GPT2Config.tiny(),
        n_positions=128,
        n_embd=128,
        n_layer=4,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return RunConfig(
        model=model,
        data=TextData(dataset="python_stdlib", vocab_size=4096, seq_len=128),
        optimizer=OptimizerConfig(learning_rate=2e-3, warmup_steps=50, weight_decay=0.1),
        steps=600,
        batch_size=16,
        eval_every=200,
        eval_batches=8,
        checkpoint_every=200,
        log_every=10,
        out_dir="runs/gpt_stdlib_demo",
    )
