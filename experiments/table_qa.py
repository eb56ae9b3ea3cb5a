"""Table question answering: train a small TAPAS from scratch on questions about generated tables.

    python -m experiments.table_qa [--quick] [--steps N] [--results PATH] [--out DIR]
                                   [--set key=value ...]

Data: the embedded `table_questions` TFDS set (polyformer/datasets/table_questions.py, nothing
downloaded) through `TableQuestionsData`: tables of 4-6 rows cut from scikit-learn's iris and
wine measurements, with lookup, SUM, AVERAGE and COUNT questions and WikiSQL-style strong
supervision (answer cells and the aggregation operator given); held-out tables share no row with
the training tables.

Training: polyformer's Trainer on the run config experiments/configs/table_qa.py (overridable
with `--set`): TapasForQuestionAnswering from scratch, 2 layers of width 64, WikiSQL-supervised
heads, no dropout, 4000 steps of 32 questions, AdamW at 2e-3 with warmup and cosine decay, the
"tapas" objective. `--quick` trains a smaller model for 10 steps on a few tables.

Evaluation on the held-out tables: cells selected by `convert_logits_to_predictions` (mean
probability > 0.5) and the argmax operator, turned into an answer: for NONE the selected cell
texts must equal the gold cells; for SUM, AVERAGE, COUNT the operator applied to the selected
cells must equal the gold number (relative 1e-6). Accuracy per gold operator, and overall,
before and after training.

Outputs: the run's out_dir (default runs/table_qa, quick runs/table_qa_quick; `--out`) gets the
trainer's checkpoints, metrics.jsonl and loss.png, then table_qa.json and table_qa.md; the
markdown also goes to --results (default experiments/results/table_qa.md; --quick writes it only
when given).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from polyformer.datasets.table_questions import AGGREGATIONS
from polyformer.models import FAMILIES
from polyformer.models.tapas.decoding import answer, convert_logits_to_predictions
from polyformer.training import config as run_config
from polyformer.training import metrics, trainer
from polyformer.training.data.tables import TableQuestion

ROOT = Path(__file__).resolve().parent
CONFIG = ROOT / "configs" / "table_qa.py"
# --quick: a smaller model for a few steps on a few tables, in its own out_dir.
QUICK = (
    "steps=10", "batch_size=8", "model.num_hidden_layers=1", "model.hidden_size=32",
    "model.intermediate_size=128", "data.train_tables=4", "data.validation_tables=2",
    "eval_every=10", "eval_batches=2", "checkpoint_every=10", "log_every=1",
    "out_dir=runs/table_qa_quick",
)  # fmt: skip


def is_correct(asked: TableQuestion, coordinates, aggregation: int) -> bool:
    """Whether the predicted cells and operator answer `asked`: for NONE the selected cells are
    the gold cells, for SUM, AVERAGE and COUNT the operator gives the gold number."""
    predicted = answer(asked.cells, coordinates, aggregation, dict(enumerate(AGGREGATIONS)))
    if asked.question.aggregation == 0:
        return aggregation == 0 and sorted(predicted.cells) == sorted(asked.gold_cells)
    if predicted.result is None:
        return False
    return bool(np.isclose(predicted.result, asked.question.float_answer, rtol=1e-6, atol=1e-9))


@nnx.jit
def forward(model, batch):
    return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


def evaluate(model, data: dict, questions: list[TableQuestion], batch_size: int) -> dict:
    """Answer accuracy per gold operator and overall, and the first few answers."""
    keys = ("input_ids", "attention_mask", "token_type_ids")
    correct = {name: [] for name in AGGREGATIONS}
    examples = []
    for start in range(0, len(questions), batch_size):
        batch = {k: data[k][start : start + batch_size] for k in keys}
        out = forward(model, {k: jnp.asarray(v) for k, v in batch.items()})
        coordinates, aggregations = convert_logits_to_predictions(
            batch, np.asarray(out.logits), np.asarray(out.logits_aggregation)
        )
        for asked, coords, agg in zip(
            questions[start : start + batch_size], coordinates, aggregations, strict=True
        ):
            ok = is_correct(asked, coords, agg)
            correct[AGGREGATIONS[asked.question.aggregation]].append(ok)
            if len(examples) < 8:
                predicted = answer(asked.cells, coords, agg, dict(enumerate(AGGREGATIONS)))
                text = asked.question.text
                examples.append({"question": text, "predicted": str(predicted), "correct": ok})
    per_type = {k: {"accuracy": float(np.mean(v)), "count": len(v)} for k, v in correct.items()}
    overall = float(np.mean([x for v in correct.values() for x in v]))
    return {"per_type": per_type, "overall": overall, "examples": examples}


def report(result: dict) -> str:
    r, s = result, result["settings"]
    lines = [
        "# Table question answering with TAPAS on generated tables",
        "",
        f"Command: `{r['command']}`  ",
        f"Date: {r['date']}; {r['cores']} CPU cores, load average at the start "
        f"{r['load_start']:.2f}, at the end {r['load_end']:.2f}"
        + (" (other work shared the machine)" if r["load_end"] > r["cores"] else "")
        + f". Training time {r['train_s']:.0f} s for {s['steps']} steps "
        f"(batch {s['batch_size']}).",
        "",
        f"Model: TapasForQuestionAnswering from scratch, {s['layers']} layers, width "
        f"{s['hidden']}, WikiSQL-supervised heads (strong supervision: answer cells and "
        f"operator given), vocabulary of {s['vocab']} WordPiece entries, inputs of "
        f"{s['length']} tokens. AdamW, peak learning rate {s['learning_rate']}, warmup "
        f"{s['warmup']} steps, cosine decay.  ",
        f"Data: iris and wine tables of 4-6 rows; {r['train_examples']} training questions on "
        f"{r['train_tables']} tables, {r['eval_examples']} held-out questions on "
        f"{r['eval_tables']} tables built from rows no training table uses.",
        "",
        f"Training loss: first logged {r['loss_first']:.3f}, mean over the last 50 steps' "
        f"records {r['loss_last']:.3f}.",
        "",
        "## Answer accuracy on held-out tables",
        "",
        "| gold operator | questions | accuracy before training | accuracy after training |",
        "|---|---|---|---|",
    ]
    for name in AGGREGATIONS:
        before, after = r["before"]["per_type"][name], r["after"]["per_type"][name]
        lines.append(
            f"| {name} | {after['count']} | {before['accuracy']:.1%} | {after['accuracy']:.1%} |"
        )
    lines += [
        f"| all | {r['eval_examples']} | {r['before']['overall']:.1%} | "
        f"**{r['after']['overall']:.1%}** |",
        "",
        "A lookup counts when the operator is NONE and the selected cells are exactly the gold "
        "cells; SUM, AVERAGE and COUNT when the predicted operator applied to the selected cells "
        "gives the gold number (relative 1e-6).",
        "",
        "## Examples (held-out)",
        "",
        "| question | predicted answer | correct |",
        "|---|---|---|",
    ]
    for e in r["after"]["examples"]:
        lines.append(f"| {e['question']} | {e['predicted']} | {'yes' if e['correct'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--steps", type=int, help="training steps (default 4000, quick 10)")
    parser.add_argument("--results", type=Path, help="markdown report to write")
    parser.add_argument("--out", type=Path, help="output directory")
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    overrides = [*(QUICK if args.quick else ()), *args.set]
    overrides += [f"steps={args.steps}"] if args.steps else []
    overrides += [f"out_dir={args.out}"] if args.out else []
    run = run_config.apply_overrides(run_config.load(CONFIG), overrides)
    out = Path(run.out_dir)
    results = args.results or (None if args.quick else ROOT / "results" / "table_qa.md")
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    load_start = os.getloadavg()[0]

    data = run.data.load()
    held_out, questions = run.data.encode("validation")
    log(f"{len(data.train['input_ids'])} training, {len(questions)} held-out questions")
    job = trainer.Trainer(run, data)
    # The model the trainer starts from: its family's build with the run's seed.
    untrained = FAMILIES[run.model.model_type].build(job.model_config, rngs=nnx.Rngs(run.seed))
    untrained.eval()
    before = evaluate(untrained, held_out, questions, 64)
    start = time.perf_counter()
    trained = job.run(progress=not args.quick)
    train_s = time.perf_counter() - start
    after = evaluate(job.model(), held_out, questions, 64)

    logged = [r for r in metrics.read_metrics(trained.metrics_path) if r["split"] == "train"]
    losses = [r["loss"] for r in logged]
    model = job.model_config
    settings = dict(
        steps=run.steps,
        batch_size=run.batch_size,
        layers=model.num_hidden_layers,
        hidden=model.hidden_size,
        length=run.data.max_length,
        learning_rate=run.optimizer.learning_rate,
        warmup=min(run.optimizer.warmup_steps, run.steps - 1),
        vocab=model.vocab_size,
    )
    result = {
        "command": " ".join(["python", "-m", "experiments.table_qa", *(argv or sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": len(os.sched_getaffinity(0)),
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "settings": settings,
        "train_examples": len(data.train["input_ids"]),
        "train_tables": 2 * run.data.train_tables,
        "eval_examples": len(questions),
        "eval_tables": 2 * run.data.validation_tables,
        "train_s": train_s,
        "losses": losses,
        "loss_steps": [r["step"] for r in logged],
        "loss_first": losses[0],
        "loss_last": float(np.mean([r["loss"] for r in logged if r["step"] > run.steps - 50])),
        "before": before,
        "after": after,
    }
    text = report(result)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table_qa.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "table_qa.md").write_text(text)
    if results:
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(text)
    log(text)
    return result


if __name__ == "__main__":
    main()
