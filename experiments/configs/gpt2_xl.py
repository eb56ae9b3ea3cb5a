"""GPT-2 XL (1.5B) as a pod run: gpt2_124m.py's run (1024 tokens, bfloat16, AdamW, fsdp over all
devices, no dropout) with the 48-layer model, at 8 sequences per chip of a v5e-16 slice (128 a
step).

polyformer compile experiments/configs/gpt2_xl.py --target v5e-16
polyformer compile experiments/configs/gpt2_xl.py --target h100x8 --set batch_size=64
"""

import dataclasses
from pathlib import Path

from polyformer.models.gpt import GPT2Config
from polyformer.training import config as run_config


def config() -> run_config.RunConfig:
    small = run_config.load(Path(__file__).with_name("gpt2_124m.py"))
    dropout = {f: getattr(small.model, f) for f in ("attn_pdrop", "resid_pdrop", "embd_pdrop")}
    return dataclasses.replace(
        small, model=GPT2Config.gpt2_xl(**dropout), batch_size=8 * 16, out_dir="runs/gpt2_xl"
    )
