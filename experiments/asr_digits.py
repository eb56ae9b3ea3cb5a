"""Speech recognition from scratch: a small Wav2Vec2-CTC on espeak-ng's spoken digits and letters.

    python -m experiments.asr_digits [--quick] [--results PATH] [--set key=value ...]

Data: `SpokenDigitsData` (polyformer/training/data/speech.py): sequences of 2-4 symbols of 0-9
and A-Z, read by ten espeak-ng voices and variants at random speeds (160-260 words a minute) and
pitches, 16 kHz. 10% of the distinct sequences are held out: the evaluation utterances are
sequences never heard in training, in any voice. The transcript is the symbols separated by
spaces ("3 7 A"), so the model learns to write `3` for the spoken word "three".

Training: polyformer's Trainer on experiments/configs/asr_digits.py (CTC objective, AdamW),
which saves a checkpoint every `checkpoint_every` steps. Afterwards every checkpoint is decoded
greedily with the CTC tokenizer on all held-out utterances, giving the character error rate
against training wall time (read from the trainer's throughput records, so compilation and the
periodic evaluations count). The exported model is also run through the speech-recognition
pipeline on a long recording (held-out utterances joined) whole and in overlapping chunks.

Outputs: the run directory (checkpoints, metrics.jsonl, the exported model), and --results
(default experiments/results/asr_digits.md, with asr_digits.png beside it; quick mode writes
into its run directory only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import jax
import numpy as np
from flax import nnx

import polyformer as pf
from benchmarks import harness
from polyformer.models.wav2vec2 import feat_extract_output_lengths
from polyformer.training import checkpoint, metrics, trainer
from polyformer.training import config as run_config

ROOT = Path(__file__).resolve().parent
CONFIG = ROOT / "configs" / "asr_digits.py"
TEMPLATE = ROOT / "templates" / "asr_digits.md"
# What the report quotes of the summary as it is.
SUMMARY_FIELDS = (
    "command", "machine", "load_before", "load_after", "train_utterances", "eval_utterances",
    "steps", "batch_size",
)  # fmt: skip


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings (insertions, deletions, substitutions)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def error_rate(hypotheses: list[str], references: list[str]) -> float:
    """Total edit distance over total reference length: the character error rate (as jiwer's
    `cer`, spaces included)."""
    errors = sum(edit_distance(h, r) for h, r in zip(hypotheses, references, strict=True))
    return errors / max(sum(len(r) for r in references), 1)


def quick_config(run: run_config.RunConfig, out_dir: str) -> run_config.RunConfig:
    """A few steps of a smaller model on a few dozen utterances: the whole path in seconds."""
    model = dataclasses.replace(
        run.model, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=48, conv_dim=(16, 16, 16, 32, 32),
    )  # fmt: skip
    data = dataclasses.replace(run.data, num_utterances=48, validation_percent=25)
    return dataclasses.replace(
        run, model=model, data=data, steps=2, batch_size=8, eval_every=2, eval_batches=1,
        checkpoint_every=2, log_every=1, out_dir=out_dir,
    )  # fmt: skip


def training_seconds(metrics_path: Path, tokens_per_step: int) -> dict[int, float]:
    """Wall time of the training loop up to each logged step, from the trainer's records of
    throughput per logging window (compilation, evaluations and checkpoint saves included)."""
    elapsed, last_step, times = 0.0, 0, {}
    for record in metrics.read_metrics(metrics_path):
        if record["split"] == "train" and "tokens_per_s" in record:
            steps = record["step"] - last_step
            elapsed += steps * tokens_per_step / record["tokens_per_s"]
            last_step = record["step"]
            times[last_step] = elapsed
    return times


@nnx.jit
def _logits(model, input_values, attention_mask):
    return model(input_values, attention_mask=attention_mask).logits


def greedy_transcripts(model, config, tokenizer, input_values, attention_mask, batch_size=32):
    """Greedy CTC transcripts of `[examples, samples]` audio, decoded by `tokenizer` over each
    utterance's real frames."""
    logits = np.concatenate(
        [
            np.asarray(
                _logits(model, input_values[i : i + batch_size], attention_mask[i : i + batch_size])
            )  # fmt: skip
            for i in range(0, len(input_values), batch_size)
        ]
    )
    frames = feat_extract_output_lengths(config, attention_mask.sum(-1))
    return tokenizer.decode_logits(logits, frames)


def evaluate_checkpoints(job: trainer.Trainer, data, steps: list[int]) -> list[dict]:
    """Character and symbol error rates of the checkpoints of `steps` on all held-out
    utterances, decoded with the run's CTC tokenizer."""
    tokenizer = job.config.data.tokenizer()
    references = [
        tokenizer.decode(row[row >= 0], group_tokens=False) for row in data.eval["labels"]
    ]
    checkpointer = checkpoint.Checkpointer(job.checkpointer.directory, keep=len(steps))
    rows = []
    for step in steps:
        state, _ = checkpointer.restore(job.abstract_state, step)
        model = nnx.merge(job.eval_graphdef, state.params)
        hypotheses = greedy_transcripts(
            model, job.model_config, tokenizer, data.eval["input_values"],
            data.eval["attention_mask"],
        )  # fmt: skip
        symbols = [h.replace(" ", "") for h in hypotheses]
        rows.append(
            {
                "step": step,
                "cer": error_rate(hypotheses, references),
                "symbol_error_rate": error_rate(symbols, [r.replace(" ", "") for r in references]),
                "examples": [
                    list(pair) for pair in zip(references[:6], hypotheses[:6], strict=True)
                ],
            }
        )
    checkpointer.close()
    return rows


def long_recording(data, tokenizer, count: int) -> tuple[np.ndarray, str]:
    """The first `count` held-out utterances joined (real samples only, re-normalised by the
    pipeline) into one recording, and its transcript."""
    pieces, texts = [], []
    for values, mask, labels in zip(
        data.eval["input_values"][:count], data.eval["attention_mask"][:count],
        data.eval["labels"][:count], strict=True,
    ):  # fmt: skip
        pieces.append(values[: mask.sum()])
        texts.append(tokenizer.decode(labels[labels >= 0], group_tokens=False))
    return np.concatenate(pieces), " ".join(texts)


def chunking_check(model_dir: Path, data, tokenizer, count: int) -> dict:
    """The exported model through the pipeline on a long recording, whole and chunked."""
    pipe = pf.pipeline("automatic-speech-recognition", model_dir)
    audio, reference = long_recording(data, tokenizer, count)
    seconds = len(audio) / pipe.sampling_rate
    whole = pipe(audio, chunk_length_s=0)["text"]
    chunked = pipe(audio, chunk_length_s=seconds / 3, stride_length_s=seconds / 15)["text"]
    return {
        "seconds": seconds,
        "chunk_length_s": seconds / 3,
        "stride_length_s": seconds / 15,
        "reference": reference,
        "whole": whole,
        "chunked": chunked,
        "same": whole == chunked,
        "cer_whole": error_rate([whole], [reference]),
        "cer_chunked": error_rate([chunked], [reference]),
    }


def plot(rows: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    minutes = [r["seconds"] / 60 for r in rows]
    ax.plot(minutes, [100 * r["cer"] for r in rows], "o-", label="character error rate")
    ax.plot(minutes, [100 * r["symbol_error_rate"] for r in rows], "s--", label="symbol error rate")
    ax.axhline(10, color="gray", linestyle=":", label="target: 10%")
    ax.set_xlabel("training wall time (minutes)")
    ax.set_ylabel("error rate on held-out audio (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report(summary: dict, png: Path) -> str:
    rows = summary["checkpoints"]
    best = min(rows, key=lambda r: r["cer"])
    reached = [r for r in rows if r["cer"] <= 0.10]
    check = summary["chunking"]
    return harness.render(
        TEMPLATE,
        **{k: summary[k] for k in SUMMARY_FIELDS},
        parameters=f"{summary['parameters']:,}",
        png=png.name,
        rows="\n".join(
            f"| {r['step']} | {r['seconds'] / 60:.1f} | {100 * r['cer']:.1f}% | "
            f"{100 * r['symbol_error_rate']:.1f}% |"
            for r in rows
        ),
        best_cer=f"{100 * best['cer']:.1f}%",
        best_step=best["step"],
        best_min=f"{best['seconds'] / 60:.1f}",
        target=f"met at step {reached[0]['step']} ({reached[0]['seconds'] / 60:.1f} min)."
        if reached and reached[0]["seconds"] <= 900
        else "not met.",
        examples="\n".join(f"- `{ref}` -> `{hyp}`" for ref, hyp in rows[-1]["examples"]),
        chunk_seconds=f"{check['seconds']:.1f}",
        chunk_length=f"{check['chunk_length_s']:.2f}",
        stride_length=f"{check['stride_length_s']:.2f}",
        same="identical" if check["same"] else "differ",
        cer_whole=f"{100 * check['cer_whole']:.1f}%",
        cer_chunked=f"{100 * check['cer_chunked']:.1f}%",
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few steps on a tiny set")
    parser.add_argument("--results", help="markdown report path (default: see above)")
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    run = run_config.load(CONFIG)
    if args.quick:
        run = quick_config(run, "runs/asr_digits_quick")
    run = run_config.apply_overrides(run, args.set)
    out_dir = Path(run.out_dir)
    if args.results:
        results = Path(args.results)
    elif args.quick:
        results = out_dir / "asr_digits.md"
    else:
        results = ROOT / "results" / "asr_digits.md"
    load_before = [round(x, 1) for x in os.getloadavg()]

    data = run.data.load()
    job = trainer.Trainer(run, data)
    if job.checkpointer.latest_step():
        raise ValueError(f"{job.checkpointer.directory} holds a run already; remove it first")
    result = job.run(progress=not args.quick)
    model_dir = trainer.export(job, out_dir / "model")

    every = run.checkpoint_every
    steps = sorted({*range(every, run.steps + 1, every), run.steps})
    rows = evaluate_checkpoints(job, data, steps)
    tokens_per_step = run.batch_size * data.tokens_per_example
    times = training_seconds(result.metrics_path, tokens_per_step)
    for row in rows:
        row["seconds"] = times[row["step"]]
    tokenizer = run.data.tokenizer()
    summary = {
        "command": harness.command_line("experiments.asr_digits", argv, python="python"),
        "machine": harness.machine_summary(),
        "load_before": load_before,
        "load_after": [round(x, 1) for x in os.getloadavg()],
        "train_utterances": len(data.train["labels"]),
        "eval_utterances": len(data.eval["labels"]),
        "parameters": sum(x.size for x in jax.tree.leaves(job.state.params)),
        "steps": run.steps,
        "batch_size": run.batch_size,
        "checkpoints": rows,
        "chunking": chunking_check(model_dir, data, tokenizer, 3 if args.quick else 8),
        "model": str(model_dir),
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    png = plot(rows, results.with_suffix(".png"), f"{summary['machine']}, load {load_before}")
    results.write_text(report(summary, png))
    results.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    print(results.read_text())
    return summary


if __name__ == "__main__":
    main()
