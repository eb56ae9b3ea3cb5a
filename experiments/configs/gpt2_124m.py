"""GPT-2 small (124M) as a pod run: 1024 tokens, GPT-2's vocabulary of 50257, bfloat16 compute,
8 sequences of 1024 tokens per device, parameters and optimizer state sharded over all devices,
no dropout.

polyformer compile experiments/configs/gpt2_124m.py --target v5e-4
polyformer compile experiments/configs/gpt2_124m.py --target h100x8 --json gpt2_124m.json
polyformer compile experiments/configs/gpt2_124m.py --target v5e-16 --set batch_size=128

The global batch is 8 x the device count: `--set batch_size=...` for another target than v5e-4
(4 chips) and h100x8 (8 GPUs, 64 sequences). The data are random tokens of the right shapes
(`token_windows`), so compiling and timing need nothing on disk; train on text with
`data=TextData(...)` (polyformer.training.data).
"""

from polyformer.models.gpt import GPT2Config
from polyformer.training.config import RunConfig
from polyformer.training.data.synthetic import token_windows
from polyformer.training.optim import OptimizerConfig
from polyformer.training.sharding import MeshConfig

SEQUENCES_PER_DEVICE = 8
SEQ_LEN = 1024
DEVICES = 8  # h100x8; other targets: --set batch_size=...

# Pretraining without dropout, as nanoGPT's GPT-2 reproduction does. It also lets the attention
# take the Pallas flash kernels, which have no attention dropout (with attn_pdrop > 0 the train
# step takes XLA's attention and keeps each layer's probabilities for the backward pass).
NO_DROPOUT = {"attn_pdrop": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0}


def config() -> RunConfig:
    model = GPT2Config.gpt2(n_positions=SEQ_LEN, **NO_DROPOUT)
    return RunConfig(
        model=model,
        precision="bfloat16",
        data=token_windows(SEQ_LEN, model.vocab_size),
        mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
        optimizer=OptimizerConfig(learning_rate=6e-4, warmup_steps=2000, weight_decay=0.1),
        steps=600_000,
        batch_size=SEQUENCES_PER_DEVICE * DEVICES,
        eval_every=1000,
        eval_batches=20,
        checkpoint_every=1000,
        log_every=100,
        out_dir="runs/gpt2_124m",
    )
