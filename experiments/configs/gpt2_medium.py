"""GPT-2 medium (355M) as a pod run on a v5e-16 slice: gpt2_124m.py's run (1024 tokens, GPT-2's
vocabulary, bfloat16 compute, 8 sequences per chip, no dropout) at GPT-2 medium's size, on a mesh
of 2 data-parallel groups of 8 chips that shard the parameters and optimizer state.

polyformer compile experiments/configs/gpt2_medium.py --target v5e-16

The mesh is what `polyformer compile ... --search` is for: with the state sharded over all 16
chips (fsdp=16), XLA counts 149 GB of memory traffic a chip a step and the roofline MFU bound is
49%; with 2 x 8 it counts 111 GB and the bound is 66%, in less memory (benchmarks/RESULTS.md,
"Compiled for the hardware").
"""

import dataclasses

from experiments.configs import gpt2_124m
from polyformer.models.gpt import GPT2Config
from polyformer.training.config import RunConfig
from polyformer.training.sharding import MeshConfig

DEVICES = 16


def config() -> RunConfig:
    return dataclasses.replace(
        gpt2_124m.config(),
        model=GPT2Config.gpt2_medium(n_positions=gpt2_124m.SEQ_LEN, **gpt2_124m.NO_DROPOUT),
        mesh=MeshConfig(data=2, fsdp=8, tensor=1),
        batch_size=gpt2_124m.SEQUENCES_PER_DEVICE * DEVICES,
        out_dir="runs/gpt2_medium",
    )
