"""One rung of the scaling-laws ladder (experiments/scaling_laws.py): the base run every size
is derived from, and on its own a ~100k non-embedding-parameter GPT for a few hundred steps.

python experiments/scaling_laws.py --quick     # the whole ladder, fits and figures
polyformer train experiments/configs/scaling_laws.py --set model.n_layer=3   # one rung by hand

The ladder script replaces the model's depth and width, the learning rate (Kaplan et al.'s
LR(N)), the step count and the batch shape; everything else (dropout off, AdamW, the schedule's
shape, the corpus) comes from here.
"""

from polyformer.models.gpt import GPT2Config
from polyformer.training.config import RunConfig
from polyformer.training.data import TextData
from polyformer.training.optim import OptimizerConfig


def config() -> RunConfig:
    # Dropout off: Kaplan et al. train without it, and these runs see each token about once.
    model = GPT2Config.tiny(
        n_positions=64,
        n_embd=64,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return RunConfig(
        model=model,
        data=TextData(dataset="python_stdlib", vocab_size=4096, seq_len=64),
        # Kaplan et al.'s LR(N) = 0.003239 - 0.0001395 ln N for this size's N = 100,096.
        optimizer=OptimizerConfig(learning_rate=1.633e-3, warmup_steps=15, weight_decay=0.1),
        steps=300,
        batch_size=16,
        eval_every=20,
        eval_batches=8,
        checkpoint_every=300,
        keep_checkpoints=1,
        log_every=20,
        out_dir="runs/scaling_laws/runs/L2_d64",
    )
