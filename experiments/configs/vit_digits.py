"""A small ViT trained from scratch on scikit-learn's digits (32x32 pixels in 8x8 patches: 16
patches and CLS), a few minutes on 2 CPU cores.

polyformer train experiments/configs/vit_digits.py
polyformer train experiments/configs/vit_digits.py --set objective=image_classification

Data: `DigitImages` (polyformer/training/data/vision.py): the embedded `sklearn_digits/gray32`
TFDS set, about 1640 training and 150 held-out images, translated by up to 3 pixels in training.
The exported model (runs/vit_digits/model) is a ViTForImageClassification checkpoint with its
preprocessor_config.json; experiments/kernel_swap.py reads it.
"""

from polyformer.models.vit import ViTConfig
from polyformer.training.config import RunConfig
from polyformer.training.data.vision import DigitImages
from polyformer.training.optim import OptimizerConfig


def config() -> RunConfig:
    # image_size, num_channels and the ten labels are set by the data.
    model = ViTConfig(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        patch_size=8,
        image_size=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return RunConfig(
        model=model,
        data=DigitImages(dataset="sklearn_digits/gray32", image_size=32, patch_size=8),
        objective="image_classification_mixup",
        optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=50, weight_decay=0.05),
        steps=1000,
        batch_size=64,
        eval_every=250,
        eval_batches=2,  # 2 x 64 of the 154 held-out images (vision_eval.py: all of them)
        checkpoint_every=500,
        log_every=50,
        out_dir="runs/vit_digits",
    )
