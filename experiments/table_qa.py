"""Table question answering: fine-tune a small TAPAS on questions about generated tables.

    python experiments/table_qa.py [--quick] [--steps N] [--results PATH] [--out DIR]

Data (nothing downloaded): tables of 4-6 rows cut from scikit-learn's bundled iris and wine
measurements (`sklearn.datasets.load_iris`, `load_wine`). Each table has a `name` column (a
distinct name per row from a fixed set of 60 Python standard-library module names,
`sys.stdlib_module_names`), a category
column (iris species; wine cultivars relabelled alpha/beta/gamma) and two or three measurement
columns, all cells strings as TAPAS expects. Each dataset's rows are split once (seed 0) into 70%
for training tables and 30% for held-out tables, so evaluation tables share no row with training.

Questions, with the supervision of WikiSQL-supervised TAPAS (answer cells and the aggregation
operator given):
* lookup (NONE): "what is the {column} of {name}?", "which name has {column} {value}?" (the
  value unique in its column);
* SUM / AVERAGE: "what is the total / average {column} of {category}?" over the rows of that
  category;
* COUNT: "how many rows are {category}?" (the answer cells: the category cells of those rows).

Model: TapasForQuestionAnswering from scratch (no pre-training), 2 layers of width 64, WikiSQL-
supervised heads (`TapasConfig.base_wikisql_supervised`), no dropout, trained for 4000 steps of
32 questions (1000 training tables per dataset, 10,000 questions) with polyformer's train step
(`make_train_step`, AdamW at 2e-3 with warmup and cosine decay, `OBJECTIVES["tapas"]`). Inputs
come from polyformer's TapasTokenizer over a WordPiece vocabulary written for these tables (the
template words, the column and category words, the module names, the numbers 0-1999 and 00-09).

Evaluation on the held-out tables: cells selected by `convert_logits_to_predictions` (mean
probability > 0.5) and the argmax operator, turned into an answer: for NONE the selected cell
texts must equal the gold cells; for SUM, AVERAGE, COUNT the operator applied to the selected
cells must equal the gold number (relative 1e-6). Accuracy per gold operator, and overall.

Outputs: `--out` (default runs/table_qa, quick runs/table_qa_quick) gets table_qa.json and
table_qa.md; the markdown also goes to --results (default experiments/results/table_qa.md;
--quick writes it only when given).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from flax import nnx

from polyformer.models.tapas import TapasConfig, TapasForQuestionAnswering
from polyformer.models.tapas.decoding import answer, convert_logits_to_predictions
from polyformer.models.tapas.tokenizer import TapasTokenizer
from polyformer.training import objectives
from polyformer.training.optim import OptimizerConfig, make_optimizer
from polyformer.training.step import init_state, make_train_step

AGGREGATIONS = ("NONE", "SUM", "AVERAGE", "COUNT")
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[EMPTY]")
TEMPLATE_WORDS = ["what", "is", "the", "of", "which", "name", "has", "total", "average", "how"]
TEMPLATE_WORDS += ["many", "rows", "are", "?"]


@dataclasses.dataclass(frozen=True)
class Source:
    """One sklearn dataset as table material: measurement columns and a category per row."""

    columns: dict[str, np.ndarray]  # column name -> values as cell strings
    category_column: str
    categories: np.ndarray  # per row


def sources() -> list[Source]:
    from sklearn.datasets import load_iris, load_wine

    iris = load_iris()
    iris_columns = ("sepal length", "sepal width", "petal length", "petal width")
    wine = load_wine()
    picked = {"alcohol": "alcohol", "magnesium": "magnesium", "hue": "hue", "proline": "proline"}
    features = list(wine.feature_names)

    def cells(values: np.ndarray) -> np.ndarray:
        return np.array([f"{v:g}" for v in values])

    return [
        Source(
            {name: cells(iris.data[:, i]) for i, name in enumerate(iris_columns)},
            "species",
            np.asarray(iris.target_names)[iris.target],
        ),
        Source(
            {ours: cells(wine.data[:, features.index(f)]) for f, ours in picked.items()},
            "cultivar",
            np.array(["alpha", "beta", "gamma"])[wine.target],
        ),
    ]


def module_names(count: int = 60) -> list[str]:
    """`count` standard-library module names (a fixed choice): few enough that each one occurs
    in many training questions, as a model trained from scratch needs to learn to match it."""
    names = sorted(
        n for n in sys.stdlib_module_names if n.isalpha() and n.islower() and len(n) < 11
    )
    return sorted(np.random.default_rng(0).choice(names, size=count, replace=False).tolist())


def vocabulary(sources_: list[Source], names: list[str]) -> dict[str, int]:
    words = list(SPECIALS) + TEMPLATE_WORDS + names + [".", "-"]
    for source in sources_:
        words += [w for column in source.columns for w in column.split()]
        words += source.category_column.split() + sorted(set(source.categories))
    words += [str(i) for i in range(2000)] + [f"{i:02d}" for i in range(10)]
    return {word: i for i, word in enumerate(dict.fromkeys(words))}


@dataclasses.dataclass(frozen=True)
class Question:
    text: str
    coordinates: list[tuple[int, int]]
    aggregation: int
    float_answer: float  # NaN for lookups
    gold_cells: list[str]


def make_table(source: Source, rows: np.ndarray, names: list[str], rng) -> pd.DataFrame:
    count = int(rng.integers(4, 7))
    chosen = rng.choice(rows, size=count, replace=False)
    measure = rng.choice(list(source.columns), size=int(rng.integers(2, 4)), replace=False)
    table = {"name": rng.choice(names, size=count, replace=False)}
    table[source.category_column] = source.categories[chosen]
    for column in measure:
        table[column] = source.columns[column][chosen]
    return pd.DataFrame(table).astype(str)


def make_questions(table: pd.DataFrame, category_column: str, rng) -> list[Question]:
    cells = table.to_numpy()
    columns = list(table.columns)
    measures = [c for c in columns if c not in ("name", category_column)]
    cat = columns.index(category_column)
    questions = []
    r = int(rng.integers(len(table)))
    column = str(rng.choice(measures))
    c = columns.index(column)
    questions.append(
        Question(f"what is the {column} of {cells[r, 0]}?", [(r, c)], 0, np.nan, [cells[r, c]])
    )
    column = str(rng.choice(measures))
    c = columns.index(column)
    values = list(cells[:, c])
    unique = [i for i, v in enumerate(values) if values.count(v) == 1]
    if unique:
        r = int(rng.choice(unique))
        text = f"which name has {column} {cells[r, c]}?"
        questions.append(Question(text, [(r, 0)], 0, np.nan, [cells[r, 0]]))
    for aggregation, word in ((1, "total"), (2, "average")):
        category = str(rng.choice(cells[:, cat]))
        column = str(rng.choice(measures))
        c = columns.index(column)
        rows = [i for i in range(len(table)) if cells[i, cat] == category]
        numbers = [float(cells[i, c]) for i in rows]
        result = sum(numbers) if aggregation == 1 else sum(numbers) / len(numbers)
        questions.append(
            Question(
                f"what is the {word} {column} of {category}?",
                [(i, c) for i in rows],
                aggregation,
                result,
                [cells[i, c] for i in rows],
            )
        )
    category = str(rng.choice(cells[:, cat]))
    rows = [i for i in range(len(table)) if cells[i, cat] == category]
    questions.append(
        Question(
            f"how many rows are {category}?",
            [(i, cat) for i in rows],
            3,
            float(len(rows)),
            [cells[i, cat] for i in rows],
        )
    )
    return questions


def build_set(tokenizer, sources_, splits, names, tables_per_source, length, rng):
    """Encoded examples (dict of arrays) and, per example, (table cells, Question)."""
    parts, meta = [], []
    for source, rows in zip(sources_, splits, strict=True):
        for _ in range(tables_per_source):
            table = make_table(source, rows, names, rng)
            questions = make_questions(table, source.category_column, rng)
            encoded = tokenizer(
                table,
                [q.text for q in questions],
                answer_coordinates=[q.coordinates for q in questions],
                answer_text=[q.gold_cells for q in questions],
                float_answer=[q.float_answer for q in questions],
                padding="max_length",
                max_length=length,
            )
            encoded["aggregation_labels"] = np.array([q.aggregation for q in questions], np.int32)
            parts.append(encoded)
            meta += [(table.to_numpy().tolist(), q) for q in questions]
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return data, meta


def is_correct(cells_table, question: Question, coordinates, aggregation: int) -> bool:
    predicted = answer(cells_table, coordinates, aggregation, dict(enumerate(AGGREGATIONS)))
    if question.aggregation == 0:
        return aggregation == 0 and sorted(predicted.cells) == sorted(question.gold_cells)
    if predicted.result is None:
        return False
    return bool(np.isclose(predicted.result, question.float_answer, rtol=1e-6, atol=1e-9))


@nnx.jit
def forward(model, batch):
    return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


def evaluate(model, data, meta, batch_size: int) -> dict:
    keys = ("input_ids", "attention_mask", "token_type_ids")
    correct = {name: [] for name in AGGREGATIONS}
    examples = []
    for start in range(0, len(meta), batch_size):
        batch = {k: data[k][start : start + batch_size] for k in keys}
        out = forward(model, {k: jnp.asarray(v) for k, v in batch.items()})
        coordinates, aggregations = convert_logits_to_predictions(
            batch, np.asarray(out.logits), np.asarray(out.logits_aggregation)
        )
        for (cells_table, question), coords, agg in zip(
            meta[start : start + batch_size], coordinates, aggregations, strict=True
        ):
            ok = is_correct(cells_table, question, coords, agg)
            correct[AGGREGATIONS[question.aggregation]].append(ok)
            if len(examples) < 8:
                predicted = answer(cells_table, coords, agg, dict(enumerate(AGGREGATIONS)))
                examples.append(
                    {"question": question.text, "predicted": str(predicted), "correct": ok}
                )
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
        f"Training loss: first {r['loss_first']:.3f}, last 50 steps' mean {r['loss_last']:.3f}.",
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
    args = parser.parse_args(argv)
    quick = args.quick
    steps = args.steps or (10 if quick else 4000)
    out = args.out or Path("runs/table_qa_quick" if quick else "runs/table_qa")
    results = args.results or (None if quick else Path("experiments/results/table_qa.md"))
    settings = dict(
        steps=steps,
        batch_size=8 if quick else 32,
        layers=1 if quick else 2,
        hidden=32 if quick else 64,
        length=112,
        learning_rate=2e-3,
        warmup=min(200, steps // 10),
    )
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    load_start = os.getloadavg()[0]

    rng = np.random.default_rng(0)
    sources_ = sources()
    names = module_names()
    splits = []
    for source in sources_:
        rows = rng.permutation(len(source.categories))
        cut = int(0.7 * len(rows))
        splits.append((rows[:cut], rows[cut:]))
    vocab = vocabulary(sources_, names)
    settings["vocab"] = len(vocab)
    tokenizer = TapasTokenizer(vocab, model_max_length=settings["length"])
    train_tables, eval_tables = (4, 2) if quick else (1000, 40)
    train, _ = build_set(
        tokenizer, sources_, [s[0] for s in splits], names, train_tables, settings["length"], rng
    )
    held_out, meta = build_set(
        tokenizer, sources_, [s[1] for s in splits], names, eval_tables, settings["length"], rng
    )
    log(f"{len(train['input_ids'])} training, {len(meta)} held-out questions")

    config = TapasConfig.base_wikisql_supervised(
        vocab_size=len(vocab),
        hidden_size=settings["hidden"],
        num_hidden_layers=settings["layers"],
        num_attention_heads=4,
        intermediate_size=4 * settings["hidden"],
        max_position_embeddings=settings["length"],
        # 10,000 generated questions for a few epochs: no dropout.
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = TapasForQuestionAnswering(config, rngs=nnx.Rngs(0))
    before = evaluate(model, held_out, meta, 64)
    model.train()
    graphdef, params = nnx.split(model)
    optimizer = make_optimizer(
        OptimizerConfig(
            learning_rate=settings["learning_rate"],
            warmup_steps=settings["warmup"],
            weight_decay=0.01,
            b2=0.999,
        ),
        steps,
    )
    state = init_state(params, optimizer, jax.random.key(0))
    step = jax.jit(make_train_step(graphdef, objectives.OBJECTIVES["tapas"], optimizer))
    keys = ("input_ids", "attention_mask", "token_type_ids", "labels", "aggregation_labels")
    size, batch_size = len(train["input_ids"]), settings["batch_size"]
    losses = []
    start = time.perf_counter()
    order = np.random.default_rng(1).permutation(size)
    for i in range(steps):
        index = np.take(order, np.arange(i * batch_size, (i + 1) * batch_size), mode="wrap")
        batch = {k: jnp.asarray(train[k][index]) for k in keys}
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        if i % 100 == 0 or i == steps - 1:
            accuracy = float(metrics["cell_accuracy"])
            log(f"step {i}: loss {losses[-1]:.4f}, cell accuracy {accuracy:.2f}")
    train_s = time.perf_counter() - start
    trained = nnx.merge(graphdef, state.params)
    trained.eval()
    after = evaluate(trained, held_out, meta, 64)

    result = {
        "command": " ".join(
            [".venv/bin/python", "experiments/table_qa.py", *(argv or sys.argv[1:])]
        ),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": len(os.sched_getaffinity(0)),
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "settings": settings,
        "train_examples": size,
        "train_tables": 2 * train_tables,
        "eval_examples": len(meta),
        "eval_tables": 2 * eval_tables,
        "train_s": train_s,
        "losses": losses,
        "loss_first": losses[0],
        "loss_last": float(np.mean(losses[-50:])),
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
