"""iGPT on 8x8 digits: a GPT trained on pixels, scored in bits per pixel, completing half images.

    python -m experiments.igpt [--quick] [--levels 17] [--samples 4] [--results PATH]
                               [--copies DIR] [--set key=value ...]

Data: the 1797 8x8 digit images that scikit-learn ships, gray values 0..16, from the embedded
TFDS set `sklearn_digits/gray8` (polyformer/datasets/digits.py; nothing downloaded) through the
data config `DigitPixels` (polyformer/training/data/vision.py). Each image is quantised to
`--levels` gray levels, `round(v * (levels - 1) / 16)`; the default, 17, is the identity: the
images have exactly 17 values, so nothing is lost and the bits per pixel are those of the dataset
itself (`--levels 8` gives a coarser, iGPT-style palette). One image is one sequence: a start
token (id `levels`) then its 64 pixels in raster order; the model reads the start token and
pixels 0..62 and predicts pixels 0..63, so every target is a pixel. The dataset holds out about
10% of the images by a hash of their index, the same on every run and machine.

Training: polyformer's Trainer on the run config experiments/configs/igpt.py (overridable with
`--set`; `polyformer train` runs it too). `--quick` trains a few minutes on two CPU cores (and
writes to runs/igpt_quick); a run whose out_dir holds checkpoints resumes.

Evaluation, on all held-out images:
- bits per pixel: the mean of -log2 p(pixel | start token, earlier pixels) over all 64 pixels,
  under the model's full softmax (the start token keeps a little mass, so this is an upper
  bound on the pixel-only figure); against the uniform baseline log2(levels) and a per-position
  histogram fitted on the training images (add-one smoothed, pixels independent).
- completions: the start token and the top 32 pixels (rows 0..3) condition `--samples` samples
  of the bottom 32, at temperature `--temperature` with top-k `--top-k` (default 1.0 and 0: the
  model's own distribution, unfiltered), seeded. A nearest-neighbour digit classifier over the
  training images scores how often a completed image still reads as its digit, against
  the bottom half left blank and the bottom half drawn from the histogram.
- completions.png: columns are held-out images; rows the original, the input with its bottom
  half masked, then the samples.

Outputs in the run's out_dir: the trainer's checkpoints, metrics.jsonl and loss.png, then
completions.png, igpt.json and igpt.md (experiments/templates/igpt.md filled from igpt.json).
igpt.md replaces the section between `<!-- igpt:start -->` and `<!-- igpt:end -->` of --results
(default benchmarks/RESULTS.md in full and quick mode; `--results none` writes none), and
--copies (default experiments/results; `none`: no copies) gets igpt.json and completions.png as
igpt[_quick].json and igpt_completions[_quick].png, the PNG the section links to.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks import harness
from polyformer.models.gpt import GPT2LMHeadModel
from polyformer.models.gpt.generate import generate
from polyformer.training import config as run_config
from polyformer.training.data import ArrayData
from polyformer.training.data.vision import DigitPixels, dequantise
from polyformer.training.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "experiments" / "configs" / "igpt.py"
TEMPLATE = ROOT / "experiments" / "templates" / "igpt.md"
COPIES = ROOT / "experiments" / "results"
MARKS = harness.marks("igpt")

SIDE = 8
PIXELS = SIDE * SIDE
CONDITION = PIXELS // 2  # the top four rows condition, the bottom four are sampled
# --quick: the run config's model, fewer steps, its own out_dir (so it never resumes a full run).
QUICK = ("steps=600", "eval_every=200", "checkpoint_every=200", "out_dir=runs/igpt_quick")


# ----------------------------------------------------------------------------------------------
# The images


@dataclasses.dataclass(frozen=True)
class Digits:
    """The run's images for the evaluation: int32 sequences `[n, 65]` (start token, then 64
    pixel levels) and the digit (0..9) of each, training and held-out."""

    train: np.ndarray
    heldout: np.ndarray
    train_labels: np.ndarray
    heldout_labels: np.ndarray
    levels: int


def load_digits(data: DigitPixels) -> Digits:
    """Both splits of the run's data config as sequences with their labels."""
    train, train_labels = data.sequences("train")
    heldout, heldout_labels = data.sequences("validation")
    return Digits(train, heldout, train_labels, heldout_labels, data.levels)


# ----------------------------------------------------------------------------------------------
# Bits per pixel


def pixel_bits(model: GPT2LMHeadModel, sequences: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """-log2 p(pixel | start token, earlier pixels) under `model`, float64 `[n, 64]`, for
    sequences `[n, 65]`; in batches of `batch_size` (the last one padded, so one compile)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def bits(state, batch):
        logits = nnx.merge(graphdef, state)(batch[:, :-1]).logits
        nats = optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:])
        return nats / jnp.log(2.0)

    out = []
    for begin in range(0, len(sequences), batch_size):
        chunk = sequences[begin : begin + batch_size]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), 0)])
        out.append(np.asarray(bits(state, padded), np.float64)[: len(chunk)])
    return np.concatenate(out)


def histogram_model(pixels: np.ndarray, levels: int, alpha: float = 1.0) -> np.ndarray:
    """Per-position level frequencies `[64, levels]` of training pixels `[n, 64]`, with `alpha`
    added to every count (add-one smoothing: no held-out pixel gets probability 0)."""
    pixels = np.asarray(pixels).reshape(-1, PIXELS)
    counts = np.stack([np.bincount(pixels[:, p], minlength=levels) for p in range(PIXELS)])
    counts = counts.astype(np.float64) + alpha
    return counts / counts.sum(axis=1, keepdims=True)


def histogram_bits(probs: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """-log2 of each pixel `[n, 64]` under the per-position histogram `[64, levels]`."""
    pixels = np.asarray(pixels).reshape(-1, PIXELS)
    return -np.log2(probs[np.arange(PIXELS), pixels])


# ----------------------------------------------------------------------------------------------
# Completions


@dataclasses.dataclass(frozen=True)
class Sampling:
    samples: int = 4
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    seed: int = 0


def complete_lower_half(
    model: GPT2LMHeadModel, sequences: np.ndarray, sampling: Sampling, batch_size: int = 512
) -> np.ndarray:
    """Samples the bottom half of each image given its start token and top half.

    sequences: `[n, 65]`. Returns int32 `[n, samples, 64]` tokens: the top 32 pixels copied, the
    bottom 32 sampled (a sampled start token, which the model should all but never emit, is
    left as it is: the caller counts it). Batches of `batch_size` rows (image x sample) each draw
    with `fold_in(key(seed), batch number)`.
    """
    prompts = np.repeat(sequences[:, : 1 + CONDITION], sampling.samples, axis=0)
    key = jax.random.key(sampling.seed)
    out = []
    for number, begin in enumerate(range(0, len(prompts), batch_size)):
        chunk = prompts[begin : begin + batch_size]
        tokens = generate(
            model,
            chunk,
            max_new_tokens=PIXELS - CONDITION,
            do_sample=True,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            eos_token_id=[],  # every image is 64 pixels: never stop early
            rng=jax.random.fold_in(key, number),
        )
        out.append(np.asarray(tokens)[:, 1:])
    return np.concatenate(out).reshape(len(sequences), sampling.samples, PIXELS)


def histogram_completions(
    probs: np.ndarray, pixels: np.ndarray, samples: int, seed: int
) -> np.ndarray:
    """The baseline's completions: top halves of `pixels` `[n, 64]` kept, every bottom pixel
    drawn independently from its position's histogram. Returns `[n, samples, 64]`."""
    rng = np.random.default_rng(seed)
    pixels = np.asarray(pixels).reshape(-1, PIXELS)
    out = np.repeat(pixels[:, None], samples, axis=1)
    cumulative = np.cumsum(probs[CONDITION:], axis=1)  # [32, levels]
    draws = rng.random((len(pixels), samples, PIXELS - CONDITION, 1))
    out[..., CONDITION:] = (draws > cumulative).sum(-1).clip(max=probs.shape[1] - 1)
    return out


def fit_digit_classifier(data: Digits):
    """A 5-nearest-neighbour digit classifier over the (dequantised) training images: "reads as
    digit d" means "lies among training images of d" (about 98% right on held-out originals)."""
    from sklearn.neighbors import KNeighborsClassifier

    features = dequantise(data.train[:, 1:], data.levels)
    return KNeighborsClassifier(n_neighbors=5).fit(features, data.train_labels)


def digit_agreement(classifier, pixels: np.ndarray, labels: np.ndarray, levels: int) -> float:
    """The fraction of images `[n, samples, 64]` (or `[n, 64]`) classified as their image's
    label `[n]`."""
    pixels = np.asarray(pixels).reshape(len(labels), -1, PIXELS)
    features = dequantise(pixels.reshape(-1, PIXELS), levels)
    predicted = classifier.predict(features).reshape(pixels.shape[:2])
    return float(np.mean(predicted == labels[:, None]))


# ----------------------------------------------------------------------------------------------
# The grid


def save_grid(
    path: Path, originals: np.ndarray, completions: np.ndarray, levels: int, scale: int = 12
) -> Path:
    """A PNG: one column per image; rows: the original `[n, 64]`, the input with its bottom half
    masked (hatched blue), then each sample of `completions` `[n, samples, 64]`, a red line at
    the conditioning boundary. Pixels are drawn as `scale` x `scale` blocks (nearest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, samples = completions.shape[:2]
    rows = 2 + samples
    cell = SIDE * scale / 100  # inches at dpi 100
    fig, axes = plt.subplots(
        rows, n, figsize=(n * cell * 1.1 + 0.9, rows * cell * 1.1), dpi=100, squeeze=False
    )
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="#4a78b5")
    style = dict(cmap=cmap, vmin=0, vmax=levels - 1, interpolation="nearest")
    for j in range(n):
        image = originals[j].reshape(SIDE, SIDE)
        masked = np.ma.masked_array(image, mask=np.arange(PIXELS).reshape(SIDE, SIDE) >= CONDITION)
        axes[0, j].imshow(image, **style)
        axes[1, j].imshow(masked, **style)
        for s in range(samples):
            ax = axes[2 + s, j]
            ax.imshow(completions[j, s].reshape(SIDE, SIDE).clip(0, levels - 1), **style)
            ax.axhline(CONDITION // SIDE - 0.5, color="#e0453a", linewidth=1.0)
    labels = ["original", "input", *(f"sample {s + 1}" for s in range(samples))]
    for i, ax_row in enumerate(axes):
        ax_row[0].set_ylabel(labels[i], fontsize=9)
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("iGPT on 8x8 digits: held-out images, bottom half sampled", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# Running it


def train(config: run_config.RunConfig, data: ArrayData, progress: bool = True):
    """Runs (or resumes) the Trainer; returns (trainer, its TrainResult, the step it began at)."""
    trainer = Trainer(config, data)
    begun = trainer.checkpointer.latest_step() or 0
    result = trainer.run(progress=progress)
    return trainer, result, begun


def evaluate(
    model: GPT2LMHeadModel, data: Digits, sampling: Sampling, shown: int, first: int
) -> dict:
    """Bits per pixel against the baselines, completions, digit agreement; all held-out images.
    `first`: how many held-out images (from the start) the trainer's evaluation read, to check
    the bits computed here against its loss."""
    pixels_train, pixels_held = data.train[:, 1:], data.heldout[:, 1:]
    probs = histogram_model(pixels_train, data.levels)
    model_bits = pixel_bits(model, data.heldout)
    hist_bits = histogram_bits(probs, pixels_held)
    completions = complete_lower_half(model, data.heldout, sampling)
    baseline = histogram_completions(probs, pixels_held, sampling.samples, sampling.seed)
    blank = pixels_held.copy()
    blank[:, CONDITION:] = 0
    classifier = fit_digit_classifier(data)
    labels = data.heldout_labels
    agree = functools.partial(digit_agreement, classifier, labels=labels, levels=data.levels)
    return {
        "bits_per_pixel": {
            "model": float(model_bits.mean()),
            "model_on_trainer_eval_images": float(model_bits[:first].mean()),
            "model_top_half": float(model_bits[:, :CONDITION].mean()),
            "model_bottom_half": float(model_bits[:, CONDITION:].mean()),
            "histogram": float(hist_bits.mean()),
            "uniform": math.log2(data.levels),
        },
        "digit_agreement": {
            "original": agree(pixels_held),
            "model_completion": agree(completions),
            "histogram_completion": agree(baseline),
            "bottom_half_blank": agree(blank),
        },
        "sampled_start_tokens": int(np.sum(completions == data.levels)),
        "completions": completions,
        "shown": shown,
    }


def describe_config(config: run_config.RunConfig, params: int) -> dict:
    """The run config's figures the report names."""
    m, o = config.model, config.optimizer
    return {
        "n_layer": m.n_layer,
        "n_embd": m.n_embd,
        "n_head": m.n_head,
        "params": params,
        "dropout": m.resid_pdrop,
        "learning_rate": o.learning_rate,
        "warmup_steps": o.warmup_steps,
        "end_lr_ratio": o.end_lr_ratio,
        "weight_decay": o.weight_decay,
        "steps": config.steps,
        "batch_size": config.batch_size,
        "precision": config.precision,
        "seed": config.seed,
    }


def _bits(loss: float | None, suffix: str = "") -> str:
    """A loss in nats per pixel as bits, "n/a (no step ran)" where there is none."""
    if loss is None or math.isnan(loss):
        return "n/a (no step ran)"
    return f"{loss / math.log(2):.3f}{suffix}"


def report(info: dict) -> str:
    """The markdown section (between the markers) for RESULTS.md, from `main`'s record."""
    m, c, s = info["machine"], info["config"], info["sampling"]
    bpp, agree = info["bits_per_pixel"], info["digit_agreement"]
    load_end = info["load_average_end"]
    begun = info["begun_at_step"]
    fields = {
        "command": info["command"],
        "machine": f"{m['cpu']}, {m['cores']} cores ({m['device']}); "
        + harness.versions_text(m, ("jax", "numpy")),
        "date": m["date"],
        "load_start": harness.fmt_load(m["load_average_start"]),
        "load_end": harness.fmt_load(load_end),
        "load_meaning": "above the core count, other work shared the machine and times are inflated"
        if max(m["load_average_start"][0], load_end[0]) > m["cores"]
        else "at or below the core count",
        "wall_s": f"{info['wall_s']:.0f}",
        "train_s": f"{info['train_s']:.0f}",
        "eval_s": f"{info['eval_s']:.0f}",
        "resumed": f" (resumed from the checkpoint of step {begun})" if begun else "",
        "levels": info["levels"],
        "levels_minus_one": info["levels"] - 1,
        "lossless": ", the identity: lossless" if info["levels"] == DigitPixels().levels else "",
        "train_images": info["train_images"],
        "heldout_images": info["heldout_images"],
        **c,
        "params": f"{c['params']:,}",
        "learning_rate": f"{c['learning_rate']:g}",
        "end_lr_ratio": f"{c['end_lr_ratio']:g}",
        "weight_decay": f"{c['weight_decay']:g}",
        "pixel_tokens": c["batch_size"] * PIXELS,
        "train_bits": _bits(info["train_loss"], " bits per pixel (with dropout)"),
        "trainer_eval_images": info["trainer_eval_images"],
        "trainer_bits": _bits(info["trainer_eval_loss"]),
        "samples": s["samples"],
        "temperature": f"{s['temperature']:g}",
        "top_k": s["top_k"] or "off",
        "sample_seed": s["seed"],
        "png": info["png"],
        "copy": f" (a copy: [{info['copy']}](../{info['copy']}))" if info["copy"] else "",
        "shown": info["shown"],
        "sampled_start_tokens": info["sampled_start_tokens"],
    }
    for name, bits in bpp.items():
        fields[f"bpp_{name}"] = f"{bits:.3f}"
        fields[f"rel_{name}"] = f"{bits / bpp['uniform']:.2f}"
    for name, share in agree.items():
        fields[f"agree_{name}"] = f"{share:.1%}"
    return harness.section(TEMPLATE, MARKS, **fields)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few minutes on 2 CPU cores")
    p.add_argument("--config", type=Path, default=CONFIG, help="the run config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    p.add_argument("--levels", type=int, help="gray levels, 2..17 (data.levels; default 17)")
    p.add_argument("--samples", type=int, default=4, help="completions per held-out image")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0: no top-k filter")
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--show", type=int, default=10, help="held-out images in the PNG")
    p.add_argument(
        "--results",
        default=str(harness.RESULTS),
        help="markdown file whose igpt section is replaced ('none': no file)",
    )
    p.add_argument(
        "--copies",
        default=str(COPIES),
        help="folder that gets igpt[_quick].json and its completions PNG ('none': no copies)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    start = time.perf_counter()
    machine = harness.machine_info()
    machine["device"] = jax.devices()[0].device_kind
    args = parse_args(argv)
    config = run_config.load(args.config)
    levels = [f"data.levels={args.levels}"] if args.levels else []
    overrides = [*(QUICK if args.quick else ()), *levels, *args.overrides]
    config = run_config.apply_overrides(config, overrides)
    if not isinstance(config.data, DigitPixels):
        raise ValueError(f"data must be DigitPixels, got {type(config.data).__name__}")
    sampling = Sampling(args.samples, args.temperature, args.top_k, args.sample_seed)
    data = load_digits(config.data)

    trainer, result, begun = train(config, config.data.load(), progress=not args.no_progress)
    trained = time.perf_counter()
    model = trainer.model()
    trainer_eval_images = config.batch_size * min(
        config.eval_batches, len(data.heldout) // config.batch_size
    )
    evaluation = evaluate(
        model, data, sampling, shown=min(args.show, len(data.heldout)), first=trainer_eval_images
    )
    out = Path(config.out_dir)
    png = save_grid(
        out.resolve() / "completions.png",
        data.heldout[: evaluation["shown"], 1:],
        evaluation.pop("completions")[: evaluation["shown"]],
        data.levels,
    )
    evaluated = time.perf_counter()

    suffix = "_quick" if args.quick else ""
    copies = None if args.copies.lower() == "none" else Path(args.copies)
    params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    info = {
        "command": harness.command_line("experiments.igpt", argv, python="python"),
        "machine": machine,
        "load_average_end": os.getloadavg(),
        "wall_s": time.perf_counter() - start,
        "train_s": trained - start,
        "eval_s": evaluated - trained,
        "begun_at_step": begun,
        "levels": data.levels,
        "train_images": len(data.train),
        "heldout_images": len(data.heldout),
        "config": describe_config(config, params),
        "train_loss": result.train_loss,
        "trainer_eval_loss": result.eval_loss,
        "trainer_eval_images": trainer_eval_images,
        "sampling": dataclasses.asdict(sampling),
        "png": _shown_path(png),
        "copy": None if copies is None else _shown_path(copies / f"igpt_completions{suffix}.png"),
        **evaluation,
    }
    section = report(info)
    record = json.dumps(info, indent=1)
    (out / "igpt.json").write_text(record)
    (out / "igpt.md").write_text(section)
    if copies is not None:
        copies.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, copies / f"igpt_completions{suffix}.png")
        (copies / f"igpt{suffix}.json").write_text(record)
    if args.results.lower() != "none":
        harness.write_section(Path(args.results), *MARKS, section)
    print(section)
    print(f"wrote {out} in {time.perf_counter() - start:.0f} s", flush=True)
    return info


def _shown_path(path: Path) -> str:
    """`path` relative to the repository where it lies inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


if __name__ == "__main__":
    main()
