"""Sequence packing on CPU: the stdlib demo's tokens/s on packed rows against one document a row.

    python -m benchmarks.packing_benchmark [--quick] [--repeats N] [--results PATH] [--json PATH]

The demo run (experiments/configs/gpt_stdlib_demo.py: GPT-2 n_layer 4, n_embd 128, batch 16 x
128, BPE 4096 on the Python standard library's source), through the Trainer's own compiled train
step and data iterator, on two layouts of the same "train" split that both give every document
the loss it has alone:
- packed: `TextData(pack=True)`, documents end to end with segment ids, restarting positions and
  the boundary pairs weighted 0; no padding;
- padded: one document a row (a longer one over as many rows as it needs), right-padded with 0s
  whose targets are weighted 0 (`padded_rows`).

Tokens/s counts trained tokens only: the targets of weight 1, the same count for a document in
either layout. Protocol as in benchmarks/harness.py: one warm-up (compiling) step each, then
rounds of one step per layout in rotating order; tokens/s is a layout's trained tokens over its
steps' wall time. The padding fraction (padding slots over all slots of the padded layout) is the
gain packing can give; packing itself leaves one untrained slot a document (its last token).
Outputs: --json (default benchmarks/packing_benchmark.json) and the section between
`<!-- packing-benchmark:start -->` and `<!-- packing-benchmark:end -->` of --results (default
benchmarks/RESULTS.md; --quick writes neither unless they are given).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks import harness
from polyformer.training import config as run_config
from polyformer.training import data as lm_data
from polyformer.training.trainer import Trainer

TEMPLATE = Path(__file__).resolve().parent / "templates" / "packing_benchmark.md"
MARKS = harness.marks("packing-benchmark")
DEMO = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "gpt_stdlib_demo.py"
# Sequence lengths the padding fraction is reported at besides the demo's.
OTHER_LENGTHS = (512, 2048)


def padded_rows(tokens: np.ndarray, end_of_text: int, seq_len: int) -> dict[str, np.ndarray]:
    """One document a row: "inputs", "targets" int32 and "weights" float32 `[rows, seq_len]`.

    A document (its tokens up to and including `end_of_text`) of n tokens has n - 1 targets and
    takes ceil((n - 1) / seq_len) rows; the last one is right-padded with 0s of weight 0.
    """
    ends = np.flatnonzero(np.asarray(tokens) == end_of_text)
    starts = np.concatenate([[0], ends[:-1] + 1])
    counts = -(-(ends - starts) // seq_len)
    row_doc = np.repeat(np.arange(len(ends)), counts)
    row_in_doc = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    index = (starts[row_doc] + row_in_doc * seq_len)[:, None] + np.arange(seq_len)
    real = index < ends[row_doc, None]
    tokens = np.asarray(tokens, np.int32)
    return {
        "inputs": np.where(real, tokens[np.minimum(index, len(tokens) - 1)], 0),
        "targets": np.where(real, tokens[np.minimum(index + 1, len(tokens) - 1)], 0),
        "weights": real.astype(np.float32),
    }


def padding_fraction(tokens: np.ndarray, end_of_text: int, seq_len: int) -> float:
    """Padding slots over all slots when `padded_rows` lays out `tokens`."""
    ends = np.flatnonzero(np.asarray(tokens) == end_of_text)
    targets = np.diff(np.concatenate([[-1], ends])) - 1
    slots = -(-targets // seq_len) * seq_len
    return 1 - targets.sum() / slots.sum()


def stepper(trainer: Trainer, counts: list[float], losses: list[float]):
    """One blocking train step of `trainer` on its next batch; appends the batch's trained tokens
    to `counts` and the step's loss to `losses`."""
    state, iterator = trainer.initial_state()
    box = {"state": state}

    def step() -> None:
        batch = next(iterator)
        box["state"], metrics = trainer.train_step(box["state"], trainer.global_batch(batch))
        losses.append(float(jax.device_get(metrics["loss"])))
        counts.append(float(batch["weights"].sum()))

    return step


def main(argv=None) -> dict:
    parser = harness.arguments(__doc__.split("\n\n")[0], "rounds (default 40, quick 4)")
    args = parser.parse_args(argv)
    rounds = args.repeats or (4 if args.quick else 40)
    results, json_path = harness.output_paths(args, "packing_benchmark.json")

    info, log = harness.begin_run("benchmarks.packing_benchmark")
    start = time.perf_counter()
    config = run_config.load(DEMO)
    packed = dataclasses.replace(config.data, pack=True).load()
    seq_len, end = packed.seq_len, packed.end_of_text_id
    split = {name: packed.corpus.tokens[name] for name in ("train", "validation")}
    padded = lm_data.ArrayData(
        padded_rows(split["train"], end, seq_len),
        padded_rows(split["validation"], end, seq_len),
        seq_len,
        model_overrides=dict(packed.model_overrides),
    )
    counts = {"packed": [], "padded": []}
    losses = {"packed": [], "padded": []}
    with tempfile.TemporaryDirectory() as out:
        contestants = {
            name: stepper(
                Trainer(dataclasses.replace(config, out_dir=f"{out}/{name}"), data),
                counts[name],
                losses[name],
            )
            for name, data in (("packed", packed), ("padded", padded))
        }
        samples, round_loads, _ = harness.measure(contestants, rounds, log)
    harness.finish(info, start)
    res = {
        "rounds": rounds,
        "round_loads": round_loads,
        "seq_len": seq_len,
        "batch_size": config.batch_size,
        "model": {k: getattr(config.model, k) for k in ("n_layer", "n_embd", "n_head")},
        "vocab_size": packed.vocab_size,
        "train_tokens": len(split["train"]),
        "documents": int(np.sum(np.asarray(split["train"]) == end)),
        "padding_fraction": {
            str(n): padding_fraction(split["train"], end, n) for n in (seq_len, *OTHER_LENGTHS)
        },
        # The warm-up step is the first of each list: leave it out.
        "wall": {name: s["wall"] for name, s in samples.items()},
        "trained_tokens": {name: c[1:] for name, c in counts.items()},
        "losses": losses,
    }
    section = report(info, res)
    harness.publish(section, {"machine": info, "packing": res}, json_path, results, MARKS, log)
    return res


def report(info: dict, res: dict) -> str:
    tokens_per_s = {
        name: sum(res["trained_tokens"][name]) / sum(wall) for name, wall in res["wall"].items()
    }
    median_rate = {
        name: np.mean(res["trained_tokens"][name]) / harness.median(wall)
        for name, wall in res["wall"].items()
    }
    slots = res["batch_size"] * res["seq_len"]
    rows = []
    for name, wall in res["wall"].items():
        trained = np.mean(res["trained_tokens"][name])
        rows.append(
            f"| {name} | {harness.median(wall):.3f} | {trained:.0f} of {slots} "
            f"({trained / slots:.1%}) | {tokens_per_s[name]:.0f} |"
        )
    fractions = res["padding_fraction"]
    padding = fractions[str(res["seq_len"])]
    packed_trained = 1 - res["documents"] / res["train_tokens"]
    return harness.section(
        TEMPLATE,
        MARKS,
        **harness.header(info, ("jax", "jaxlib", "flax"), res["round_loads"]),
        rounds=res["rounds"],
        **res["model"],
        vocab_size=res["vocab_size"],
        batch=res["batch_size"],
        seq_len=res["seq_len"],
        train_tokens=f"{res['train_tokens']:,}",
        documents=res["documents"],
        mean_document=f"{res['train_tokens'] / res['documents']:,.0f}",
        padding=f"{padding:.2%}",
        other_lengths=", ".join(f"{fractions[str(n)]:.1%} at {n}" for n in OTHER_LENGTHS),
        rows="\n".join(rows),
        expected=f"{packed_trained / (1 - padding):.3f}",
        measured=f"{tokens_per_s['packed'] / tokens_per_s['padded']:.3f}",
        measured_median=f"{median_rate['packed'] / median_rate['padded']:.3f}",
        first_losses=", ".join(f"{n} {res['losses'][n][0]:.3f}" for n in res["losses"]),
        last_losses=", ".join(f"{n} {res['losses'][n][-1]:.3f}" for n in res["losses"]),
    )


if __name__ == "__main__":
    main()
