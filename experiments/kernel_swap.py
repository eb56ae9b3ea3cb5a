"""Kernel swap: a trained ViT's softmax attention replaced, with no retraining, by FAVOR+ at
several feature counts and by sparse patterns (the Performer paper's backward-compatibility
question: how close does a model trained with exact attention stay when its kernel changes?).

    python -m experiments.kernel_swap [--model DIR] [--features 16 64 256 1024] [--seeds 3]
                                      [--images N] [--finetune-steps 200] [--out DIR]
                                      [--results PATH] [--quick]

Model: a ViTForImageClassification checkpoint, by default the one that
`polyformer train experiments/configs/vit_digits.py` exports (runs/vit_digits/model).
`--quick` instead builds a tiny ViT with random weights, 32 images, m = 16 and 64, one seed and
2 fine-tuning steps of m=16 (a check of the machinery, seconds).

Inputs: the held-out images of the embedded digits set (`sklearn_digits/gray32`, processed by
`DigitImages` at the model's image size), `--images` of them (default all).

Every parameter stays; only `kernel` of each MultiHeadAttention changes (the parameter tree is
the same for every kernel). Against the dense model's logits on the same images:
- cosine: the mean over images of the cosine similarity of the two logit vectors (min: the
  worst image);
- top-1 agreement: the share of images whose argmax class is the dense model's;
- accuracy: against the true digits.
FAVOR+ draws its orthogonal random features from `key=seed`; each feature count runs with
`--seeds` seeds and reports the mean and spread. Sparse patterns are exact softmax over the keys
they keep; `kept` is the share of the query x key pairs they keep at this sequence length.
Then (the paper's remedy) FAVOR+ m=16, m=64 and the band of one patch row are each fine-tuned
`--finetune-steps` steps on the training split under their new kernel and compared again.

Outputs in --out (default runs/kernel_swap): kernel_swap.json, kernel_swap.png,
kernel_swap.md; `--results PATH` also writes the report to PATH and the figure beside it
(experiments/results/kernel_swap.md in the full run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx

import polyformer as pf
from benchmarks import harness
from polyformer.attention import Dense, Favor, MultiHeadAttention, Sparse, patterns
from polyformer.models.vit import ViTConfig, ViTForImageClassification
from polyformer.training.data.arrays import ArrayData
from polyformer.training.data.vision import DigitImages
from polyformer.training.objectives.vision import image_classification

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "experiments" / "templates"
DEFAULT_MODEL = ROOT / "runs" / "vit_digits" / "model"
DATASET = "sklearn_digits/gray32"


# ----------------------------------------------------------------------------------------------
# The swap and the comparison


def with_kernel(model: nnx.Module, kernel) -> nnx.Module:
    """A copy of `model` whose every MultiHeadAttention computes with `kernel`."""
    model = nnx.clone(model)
    layers = [m for _, m in nnx.iter_graph(model) if isinstance(m, MultiHeadAttention)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no MultiHeadAttention layer to swap")
    for layer in layers:
        layer.kernel = kernel
    return model


def compare(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Logits `[images, classes]` of a swapped model against the dense model's `reference`."""
    reference, logits = np.asarray(reference, np.float64), np.asarray(logits, np.float64)
    cosine = np.sum(reference * logits, -1) / (
        np.linalg.norm(reference, axis=-1) * np.linalg.norm(logits, axis=-1)
    )
    return {
        "cosine": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "top1_agreement": float(np.mean(logits.argmax(-1) == reference.argmax(-1))),
        "accuracy": float(np.mean(logits.argmax(-1) == labels)),
    }


def sparse_variants(grid: int) -> list[tuple[str, patterns.Pattern]]:
    """Patterns for a ViT sequence (CLS, then a `grid` x `grid` raster of patches): a 1-D band
    of one neighbour, one of a patch row (the patches left, right, above and below are in it),
    the same with CLS global (Longformer's layout), and BigBird with blocks of half a row."""
    block = max(1, grid // 2)
    bigbird = patterns.bigbird(
        block=block, window=3, global_blocks=1, random_blocks=1, key=jax.random.key(0)
    )
    return [
        ("band(1)", patterns.band(1)),
        (f"band({grid})", patterns.band(grid)),
        (f"band({grid}) + global CLS", patterns.band(grid) | patterns.global_tokens([0])),
        (f"bigbird(block={block}, window=3, global=1, random=1)", bigbird),
    ]


@nnx.jit
def _forward(model: nnx.Module, pixel_values: jax.Array) -> jax.Array:
    return model(pixel_values=pixel_values).logits


def logits_of(model: nnx.Module, pixel_values: np.ndarray, batch: int = 64) -> np.ndarray:
    """The model's logits `[images, classes]` for pixel_values `[images, 3, size, size]`."""
    return np.concatenate(
        [
            np.asarray(_forward(model, pixel_values[i : i + batch]))
            for i in range(0, len(pixel_values), batch)
        ]
    )


def run_variants(
    model: nnx.Module,
    reference: np.ndarray,
    pixel_values: np.ndarray,
    labels: np.ndarray,
    features: Sequence[int],
    seeds: int,
) -> dict:
    """Every FAVOR+ feature count x seed and every sparse pattern against the dense model's
    logits `reference`."""
    start = time.perf_counter()
    config = model.config
    grid = config.image_grid_size[0]
    length = config.image_grid_size[0] * config.image_grid_size[1] + 1
    dense = {"accuracy": float(np.mean(reference.argmax(-1) == labels))}
    favor = []
    for m in features:
        draws = [
            compare(
                reference,
                logits_of(with_kernel(model, Favor(num_features=m, key=seed)), pixel_values),
                labels,
            )
            for seed in range(seeds)
        ]
        favor.append(
            {
                "num_features": m,
                **{k: float(np.mean([d[k] for d in draws])) for k in draws[0]},
                **{f"{k}_std": float(np.std([d[k] for d in draws])) for k in draws[0]},
                "draws": draws,
            }
        )
    sparse = []
    for name, pattern in sparse_variants(grid):
        result = compare(
            reference, logits_of(with_kernel(model, Sparse(pattern)), pixel_values), labels
        )
        kept = float(pattern.mask(length, length).mean())
        sparse.append({"pattern": name, "kept": kept, **result})
    return {
        "length": length,
        "head_dim": config.hidden_size // config.num_attention_heads,
        "images": len(labels),
        "dense": dense,
        "favor": favor,
        "sparse": sparse,
        "seconds": time.perf_counter() - start,
    }


def finetune(
    model: nnx.Module, kernel, train: ArrayData, steps: int, learning_rate: float = 5e-4
) -> nnx.Module:
    """A copy of `model` under `kernel`, trained `steps` AdamW steps (batches of 64 of the
    training split, shifted as in training) with plain cross-entropy."""
    model = with_kernel(model, kernel)
    optimizer = nnx.Optimizer(model, optax.adamw(learning_rate), wrt=nnx.Param)
    loss_fn = image_classification()

    @nnx.jit
    def step(model, optimizer, batch):
        # rngs mark training for the objective; the model itself has no dropout here.
        grads = nnx.grad(lambda m: loss_fn(m, batch, nnx.Rngs(dropout=0))[0])(model)
        optimizer.update(model, grads)

    batches = train.train_iterator(64, seed=0, shard_index=0, shard_count=1)
    for _ in range(steps):
        step(model, optimizer, next(batches))
    return model


def run_finetuning(
    model: nnx.Module,
    reference: np.ndarray,
    pixel_values: np.ndarray,
    labels: np.ndarray,
    kernels: Sequence[tuple[str, object]],
    train: ArrayData,
    steps: int,
) -> list[dict]:
    """Each named kernel swapped in, fine-tuned `steps` steps, compared with the dense model."""
    rows = []
    for name, kernel in kernels:
        start = time.perf_counter()
        tuned = finetune(model, kernel, train, steps)
        rows.append(
            {
                "kernel": name,
                "steps": steps,
                **compare(reference, logits_of(tuned, pixel_values), labels),
                "seconds": time.perf_counter() - start,
            }
        )
    return rows


# ----------------------------------------------------------------------------------------------
# Model and data


def quick_model() -> ViTForImageClassification:
    """A tiny ViT with random weights, for --quick."""
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        id2label={i: str(i) for i in range(10)},
    )
    return ViTForImageClassification(config, rngs=nnx.Rngs(0))


def load_model(path: Path) -> ViTForImageClassification:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}; train one with `polyformer train "
            "experiments/configs/vit_digits.py`, pass --model DIR, or use --quick"
        )
    model = pf.from_pretrained(path)
    if not isinstance(model, ViTForImageClassification):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a ViTForImageClassification")
    return model


def training_set(model: ViTForImageClassification, data_dir: str | None) -> ArrayData:
    """The digits' training split as the ViT run trained on it (shifts of up to 3 pixels)."""
    return DigitImages(dataset=DATASET, data_dir=data_dir, image_size=model.config.image_size,
                       patch_size=model.config.image_size // model.config.image_grid_size[0]
                       ).load()  # fmt: skip


def held_out(model: ViTForImageClassification, images: int | None, data_dir: str | None):
    image_size = model.config.image_size
    if not isinstance(image_size, int):
        raise ValueError(f"the model's image_size must be square, got {image_size}")
    data = DigitImages(dataset=DATASET, data_dir=data_dir, image_size=image_size, max_shift=0)
    arrays = data.arrays("validation")
    count = len(arrays["labels"]) if images is None else min(images, len(arrays["labels"]))
    return arrays["pixel_values"][:count], arrays["labels"][:count]


# ----------------------------------------------------------------------------------------------
# Report


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    favor = result["favor"]
    m = [row["num_features"] for row in favor]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key, title in (
        (axes[0], "cosine", "cosine similarity of logits to dense"),
        (axes[1], "top1_agreement", "top-1 agreement with dense"),
    ):
        values, spread = [r[key] for r in favor], [r[f"{key}_std"] for r in favor]
        label = "FAVOR+ (mean ± std over seeds)"
        ax.errorbar(m, values, yerr=spread, marker="o", capsize=3, color="black", label=label)
        for i, row in enumerate(result["sparse"]):
            ax.axhline(row[key], linestyle="--", color=colors[i % len(colors)],
                       label=f"{row['pattern']} (keeps {row['kept']:.0%})")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xlabel("FAVOR+ random features m")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="center right")
    fig.suptitle(
        f"ViT kernel swap without retraining ({result['model']}; {result['images']} held-out "
        f"digits, {result['length']} tokens, head_dim {result['head_dim']})",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(result: dict, figure: str) -> str:
    dense = f"{result['dense']['accuracy']:.3f}"
    rows = [f"| dense (reference) | 1 | 1 | {dense} |"]
    for row in result["favor"]:
        rows.append(
            f"| FAVOR+ m={row['num_features']} | {row['cosine']:.4f} ± {row['cosine_std']:.4f} "
            f"({row['cosine_min']:.3f}) | {row['top1_agreement']:.3f} ± "
            f"{row['top1_agreement_std']:.3f} | {row['accuracy']:.3f} |"
        )
    for row in result["sparse"]:
        rows.append(
            f"| {row['pattern']}, keeps {row['kept']:.0%} | {row['cosine']:.4f} "
            f"({row['cosine_min']:.3f}) | {row['top1_agreement']:.3f} | {row['accuracy']:.3f} |"
        )
    finetuned = ""
    if result.get("finetuned"):
        tuned = "\n".join(
            f"| {row['kernel']} | {row['cosine']:.4f} ({row['cosine_min']:.3f}) | "
            f"{row['top1_agreement']:.3f} | {row['accuracy']:.3f} | {row['seconds']:.0f} s |"
            for row in result["finetuned"]
        )
        steps = result["finetuned"][0]["steps"]
        finetuned = "\n\n" + harness.render(
            TEMPLATES / "kernel_swap_finetuned.md", steps=steps, rows=tuned
        )
    return harness.render(
        TEMPLATES / "kernel_swap.md",
        **{k: result[k] for k in ("command", "machine", "date", "model", "images", "length")},
        head_dim=result["head_dim"],
        seeds=result["seeds"],
        load_start=f"{result['load'][0]:.1f}",
        load_end=f"{result['load'][1]:.1f}",
        dense_accuracy=dense,
        seconds=f"{result['seconds']:.0f}",
        rows="\n".join(rows),
        finetuned=finetuned.rstrip("\n"),
        figure=figure,
    )


# ----------------------------------------------------------------------------------------------
# Entry point


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--features", type=int, nargs="+", default=[16, 64, 256, 1024])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--images", type=int, default=None, help="held-out images used (default all)")
    p.add_argument("--data-dir", default=None, help="TFDS data_dir (default polyformer's)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "kernel_swap")
    p.add_argument("--results", type=Path, default=None, help="also write the report here")
    p.add_argument(
        "--finetune-steps", type=int, default=200,
        help="fine-tune FAVOR+ m=16, m=64 and a band this many steps after the swap (0: none)",
    )  # fmt: skip
    p.add_argument("--quick", action="store_true", help="a tiny random ViT, 32 images, m=16,64")
    args = p.parse_args(argv)
    if args.quick:
        args.features = [16, 64]
        args.seeds = 1
        args.images = args.images or 32
        args.finetune_steps = min(args.finetune_steps, 2)  # FAVOR+ m=16 only
    if args.seeds < 1 or min(args.features) < 1 or args.finetune_steps < 0:
        p.error("--seeds and every --features value must be positive, --finetune-steps >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    if args.quick:
        model, name = quick_model(), "tiny random-weight ViT (--quick)"
    else:
        model = load_model(args.model)
        shown = args.model.resolve()
        shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
        name = f"ViTForImageClassification from {shown}"
    pixel_values, labels = held_out(model, args.images, args.data_dir)
    reference = logits_of(with_kernel(model, Dense()), pixel_values)
    result = run_variants(model, reference, pixel_values, labels, args.features, args.seeds)
    if args.finetune_steps:
        grid = model.config.image_grid_size[0]
        kernels = [
            ("FAVOR+ m=16", Favor(num_features=16)),
            ("FAVOR+ m=64", Favor(num_features=64)),
            (f"band({grid})", Sparse(patterns.band(grid))),
        ]
        train = training_set(model, args.data_dir)
        result["finetuned"] = run_finetuning(
            model, reference, pixel_values, labels, kernels[: 1 if args.quick else None],
            train, args.finetune_steps,
        )  # fmt: skip
    result.update(
        model=name,
        seeds=args.seeds,
        command=harness.command_line("experiments.kernel_swap", argv, python="python"),
        machine=harness.machine_summary(),
        date=harness.utc_now(),
        load=(load_start, os.getloadavg()[0]),
        seconds=time.perf_counter() - start,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernel_swap.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out / "kernel_swap.png")
    (args.out / "kernel_swap.md").write_text(report(result, "kernel_swap.png"))
    if args.results is not None:
        figure = args.results.with_suffix(".png")
        shutil.copyfile(args.out / "kernel_swap.png", figure)
        args.results.write_text(report(result, figure.name))
    return result


if __name__ == "__main__":
    main()
