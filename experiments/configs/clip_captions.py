"""A small CLIP trained from scratch on digit images and their generated captions ("a red seven
on a blue background"), a few minutes on 2 CPU cores.

polyformer train experiments/configs/clip_captions.py
python experiments/vision_eval.py clip runs/clip_captions/model     # zero-shot and retrieval

Data: `DigitCaptions` (polyformer/training/data/vision.py): the embedded
`sklearn_digits/color4_32` TFDS set, each digit painted in one of 4 colors over another (120
distinct captions), tokenised by a CLIP-format BPE learned from the captions. With 4 colors a
batch of 64 holds about five images of each color pair, which only the digit tells apart; with
the 8-color set (`--set data.dataset=sklearn_digits/color32`, 560 captions) the same run learns
the colors perfectly and the digits hardly (20% zero-shot digit accuracy against 53%, both at
800 steps). The text tower's vocabulary and special tokens come from the tokenizer
(`DigitCaptions.text_config`). The loss is CLIP's symmetric contrastive loss over the global
batch, temperature learned and clamped at 100.
"""

from polyformer.models.clip import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from polyformer.training.config import RunConfig
from polyformer.training.data.vision import DigitCaptions
from polyformer.training.optim import OptimizerConfig


def config() -> RunConfig:
    data = DigitCaptions(dataset="sklearn_digits/color4_32", image_size=32, patch_size=8)
    towers = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  projection_dim=64)  # fmt: skip
    text = data.text_config(CLIPTextConfig(num_hidden_layers=2, **towers))
    vision = CLIPVisionConfig(num_hidden_layers=4, image_size=32, patch_size=8, **towers)
    model = CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)
    return RunConfig(
        model=model,
        data=data,
        objective="clip_contrastive",
        optimizer=OptimizerConfig(learning_rate=2e-3, warmup_steps=50, weight_decay=0.1),
        steps=1200,
        batch_size=64,
        eval_every=300,
        eval_batches=2,  # 2 x 64 of the 154 held-out pairs (vision_eval.py: all of them)
        checkpoint_every=600,
        log_every=50,
        out_dir="runs/clip_captions",
    )
