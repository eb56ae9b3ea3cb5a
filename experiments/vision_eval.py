"""Trains (or resumes) and evaluates the two vision runs on held-out digits, and writes the report.

    python -m experiments.vision_eval [--train] [--vit DIR] [--clip DIR] [--results PATH]

--train first runs `polyformer train` on experiments/configs/vit_digits.py and
clip_captions.py (a finished run is not retrained; an unfinished one resumes) and times each.
Then, from each run's exported checkpoint (DIR/model, default runs/vit_digits and
runs/clip_captions) and its files (the processor and tokenizer saved beside it), on every
held-out image of the embedded digits set:

- ViT (`sklearn_digits/gray32`): top-1 accuracy, and per digit.
- CLIP (`sklearn_digits/color32`, captions "a red seven on a blue background"):
  zero-shot classification over all 560 captions the set can produce: the caption with the
  largest similarity to the image is read as (digit, ink color, background color), each scored
  against the truth, and exactly; retrieval within the held-out set: image -> caption and
  caption -> image top-1 (a hit when the retrieved caption's text is the true one, since a few
  held-out images share a caption).

The report (markdown) goes to --results (default experiments/results/vision_training.md), with
the training wall times of --train, or "not timed" without it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
import tensorflow_datasets as tfds

import polyformer as pf
from benchmarks import harness
from polyformer.datasets import default_data_dir, digits
from polyformer.models.clip.tokenizer import CLIPTokenizer
from polyformer.training import config as run_config
from polyformer.training.data.vision import DigitCaptions, DigitImages

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "experiments" / "templates"
CONFIGS = {
    "vit": ROOT / "experiments" / "configs" / "vit_digits.py",
    "clip": ROOT / "experiments" / "configs" / "clip_captions.py",
}


def train(name: str, out_dir: Path) -> dict:
    """`polyformer train` on the named config into `out_dir`; wall time and load averages."""
    command = [sys.executable, "-m", "polyformer.cli", "train", str(CONFIGS[name])]
    command += ["--set", f"out_dir={out_dir}"]
    metrics = out_dir / "metrics.jsonl"
    records = metrics.read_text().splitlines() if metrics.is_file() else []
    load = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    return {
        "seconds": time.perf_counter() - start,
        "load": (load, os.getloadavg()[0]),
        "command": f"polyformer train {CONFIGS[name].relative_to(ROOT)} --set out_dir={out_dir}",
        # A run that had already begun resumed: its time is that of the remaining steps only.
        "resumed_from_step": json.loads(records[-1])["step"] if records else 0,
    }


def final_metrics(run_dir: Path) -> dict:
    """The last train and eval records of the trainer's metrics.jsonl."""
    last = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        last[record["split"]] = record
    return last


def count_params(model) -> int:
    from flax import nnx

    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def evaluate_vit(run_dir: Path) -> dict:
    model = pf.from_pretrained(run_dir / "model")
    config = run_config.load(CONFIGS["vit"])
    data = DigitImages(dataset=config.data.dataset, image_size=model.config.image_size)
    arrays = data.arrays("validation")
    logits = np.concatenate(
        [
            np.asarray(model(pixel_values=arrays["pixel_values"][i : i + 64]).logits)
            for i in range(0, len(arrays["labels"]), 64)
        ]
    )
    predicted, labels = logits.argmax(-1), arrays["labels"]
    return {
        "images": len(labels),
        "accuracy": float(np.mean(predicted == labels)),
        "per_digit": [float(np.mean(predicted[labels == d] == d)) for d in range(10)],
        "params": count_params(model),
        "steps": config.steps,
        "batch_size": config.batch_size,
        "objective": config.objective,
        "trainer": final_metrics(run_dir),
    }


def evaluate_clip(run_dir: Path) -> dict:
    model = pf.from_pretrained(run_dir / "model")
    tokenizer = CLIPTokenizer.from_pretrained(run_dir / "model")
    config = run_config.load(CONFIGS["clip"])
    data: DigitCaptions = config.data
    arrays = data.arrays("validation")
    builder = tfds.builder(data.dataset, data_dir=data.data_dir or default_data_dir())
    num_colors = builder.builder_config.num_colors
    space = np.array(digits.caption_space(num_colors))  # (digit, ink, background) per caption
    captions = digits.all_captions(num_colors)
    prompts = tokenizer(captions, padding="max_length", max_length=data.max_length)
    out = model(
        input_ids=prompts["input_ids"],
        attention_mask=prompts["attention_mask"],
        pixel_values=arrays["pixel_values"],
    )
    best = space[np.asarray(out.logits_per_image).argmax(-1)]
    truth = np.stack([arrays["labels"], arrays["foreground"], arrays["background"]], -1)
    # Retrieval among the held-out pairs themselves.
    pairs = model(
        input_ids=arrays["input_ids"],
        attention_mask=arrays["attention_mask"],
        pixel_values=arrays["pixel_values"],
    )
    texts = np.array([digits.caption(d, digits.COLORS[f], digits.COLORS[b]) for d, f, b in truth])
    image_to_text = np.asarray(pairs.logits_per_image).argmax(-1)
    text_to_image = np.asarray(pairs.logits_per_text).argmax(-1)
    n = len(texts)
    return {
        "images": n,
        "dataset": data.dataset,
        "caption_space": len(captions),
        "distinct_captions_held_out": len(set(texts.tolist())),
        "zero_shot": {
            "caption_exact": float(np.mean(np.all(best == truth, -1))),
            "digit": float(np.mean(best[:, 0] == truth[:, 0])),
            "ink_color": float(np.mean(best[:, 1] == truth[:, 1])),
            "background_color": float(np.mean(best[:, 2] == truth[:, 2])),
        },
        "retrieval": {
            "image_to_text_top1": float(np.mean(texts[image_to_text] == texts)),
            "text_to_image_top1": float(np.mean(texts[text_to_image] == texts)),
            "chance": float(np.mean([np.mean(texts == t) for t in texts])),
        },
        "logit_scale": float(np.exp(np.asarray(model.logit_scale[...]))),
        "params": count_params(model),
        "steps": config.steps,
        "batch_size": config.batch_size,
        "trainer": final_metrics(run_dir),
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _timing(timing: dict | None) -> str:
    if timing is None:
        return "not timed (run with --train)"
    if timing.get("resumed_from_step"):
        return (
            f"resumed at step {timing['resumed_from_step']}, so not timed from the start "
            f"({timing['seconds'] / 60:.1f} min for the rest)"
        )
    return (
        f"{timing['seconds'] / 60:.1f} min wall for `{timing['command']}` (compilation and "
        f"data preparation included; load average {timing['load'][0]:.1f} at the start, "
        f"{timing['load'][1]:.1f} at the end, on 2 shared cores)"
    )


def report(result: dict) -> str:
    parts = [
        harness.render(
            TEMPLATES / "vision_eval.md", **{k: result[k] for k in ("command", "machine", "date")}
        )
    ]
    if "vit" in result:
        v = result["vit"]
        parts.append(
            harness.render(
                TEMPLATES / "vision_eval_vit.md",
                **{k: v[k] for k in ("steps", "batch_size", "objective", "images")},
                params=f"{v['params']:,}",
                timing=_timing(result.get("vit_timing")),
                accuracy=_pct(v["accuracy"]),
                eval_accuracy=_pct(v["trainer"]["eval"]["accuracy"]),
                eval_loss=f"{v['trainer']['eval']['loss']:.3f}",
                per_digit=", ".join(f"{d}: {_pct(a)}" for d, a in enumerate(v["per_digit"])),
            )
        )
    if "clip" in result:
        c = result["clip"]
        z, r = c["zero_shot"], c["retrieval"]
        parts.append(
            harness.render(
                TEMPLATES / "vision_eval_clip.md",
                **{k: c[k] for k in ("steps", "batch_size", "dataset", "caption_space", "images")},
                params=f"{c['params']:,}",
                logit_scale=f"{c['logit_scale']:.1f}",
                timing=_timing(result.get("clip_timing")),
                caption_chance=_pct(1 / c["caption_space"]),
                caption_exact=_pct(z["caption_exact"]),
                digit=_pct(z["digit"]),
                ink_color=_pct(z["ink_color"]),
                background_color=_pct(z["background_color"]),
                distinct_captions=c["distinct_captions_held_out"],
                retrieval_chance=_pct(r["chance"]),
                image_to_text=_pct(r["image_to_text_top1"]),
                text_to_image=_pct(r["text_to_image_top1"]),
            )
        )
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", action="store_true", help="train (or resume) both runs first")
    p.add_argument("--vit", type=Path, default=ROOT / "runs" / "vit_digits")
    p.add_argument("--clip", type=Path, default=ROOT / "runs" / "clip_captions")
    p.add_argument("--only", choices=("vit", "clip"), default=None)
    p.add_argument(
        "--results", type=Path, default=ROOT / "experiments" / "results" / "vision_training.md"
    )
    args = p.parse_args(argv)
    result = {
        "command": harness.command_line("experiments.vision_eval", argv, python="python"),
        "machine": harness.machine_summary(),
        "date": harness.utc_now(),
    }
    for name, run_dir, evaluate in (
        ("vit", args.vit, evaluate_vit),
        ("clip", args.clip, evaluate_clip),
    ):
        if args.only not in (None, name):
            continue
        if args.train:
            result[f"{name}_timing"] = train(name, run_dir)
        result[name] = evaluate(run_dir)
        print(json.dumps(result[name], indent=1))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(report(result))
    args.results.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
