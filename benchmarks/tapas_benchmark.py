"""TAPAS-base (WTQ heads) on CPU: our jitted forward pass against transformers'.

    python -m benchmarks.tapas_benchmark [--quick] [--repeats N] [--results PATH] [--json PATH]

Both models hold the same weights: transformers' TapasForQuestionAnswering built with
torch.manual_seed(0) at google/tapas-base-finetuned-wtq's configuration (12 layers, 768 wide,
aggregation head, temperature 0.0352513, one-column selection), its cell-selection weights set
random (the WTQ config initialises them to zero), written with save_pretrained and read back with
polyformer.from_pretrained. Float32 throughout.

Forward: batch 1, 512 tokens laid out as TapasTokenizer lays them out: `[CLS]`, a 20-token
question, `[SEP]`, then a table of 8 columns and 60 data rows below a header, one token per cell
(so 490 table tokens: per-cell position ids, 488 cells to average, 8 columns to choose from).
Everything the model returns is computed: encoder, pooler, cell logits averaged per cell, column
logits, the selected column's mask, aggregation logits. Ours is `jax.jit` of the model's call
(compile time measured apart); transformers' runs under torch.no_grad in eval mode, at
torch.set_num_threads(cores) (the protocol) and at 1 thread. Target: our time <= 0.8x theirs.

Protocol (benchmarks/harness.py's): warm-up calls, then rounds, each running every contestant
once in an order rotating by one; medians of wall-clock and process CPU time; load averages
recorded. Outputs: --json (default benchmarks/tapas_benchmark.json) and the section between the
`tapas-benchmark` markers of --results (default benchmarks/RESULTS.md; --quick writes neither
unless they are given).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import polyformer as pf
from benchmarks import harness
from polyformer.models.tapas import TapasConfig

TEMPLATE = Path(__file__).resolve().parent / "templates" / "tapas_benchmark.md"
MARKS = harness.marks("tapas-benchmark")
SEQ_LEN, QUESTION, COLUMNS, ROWS = 512, 20, 8, 60
TARGET = 0.8


def build_models(log=print):
    """(transformers' model, ours) with the same random weights, both in evaluation mode."""
    import torch
    import transformers

    hf_config = TapasConfig.base_wtq().to_hf()
    torch.manual_seed(0)
    hf = transformers.TapasForQuestionAnswering(transformers.TapasConfig(**hf_config)).eval()
    with torch.no_grad():
        hf.output_weights.normal_(0, 0.02)
        hf.column_output_weights.normal_(0, 0.02)
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        ours = pf.from_pretrained(directory)
    log(f"built tapas-base (WTQ): transformers attention {hf.config._attn_implementation!r}")
    return hf, ours


def table_inputs(vocab_size: int) -> dict[str, np.ndarray]:
    """input_ids, attention_mask `[1, 512]` and token_type_ids `[1, 512, 7]` (module docstring)."""
    rng = np.random.default_rng(0)
    types = np.zeros((1, SEQ_LEN, 7), np.int64)
    start = QUESTION + 2
    for row in range(ROWS + 1):
        for column in range(1, COLUMNS + 1):
            i = start + row * COLUMNS + column - 1
            types[0, i, :3] = 1, column, row
            if row:
                types[0, i, 4] = rng.integers(1, ROWS + 1)  # column rank
                types[0, i, 5] = ROWS + 1 - types[0, i, 4]
                types[0, i, 6] = rng.integers(0, 8)
    used = start + (ROWS + 1) * COLUMNS
    if used > SEQ_LEN:
        raise ValueError(f"the table needs {used} tokens, more than {SEQ_LEN}")
    ids = rng.integers(1000, vocab_size, (1, SEQ_LEN))
    mask = (np.arange(SEQ_LEN) < used)[None].astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types}


def bench_forward(hf, ours, rounds: int, cores: int, log=print) -> dict:
    import torch

    x = table_inputs(ours.config.vocab_size)
    graphdef, state = nnx.split(ours)

    def forward(state, input_ids, attention_mask, token_type_ids):
        out = nnx.merge(graphdef, state)(input_ids, attention_mask, token_type_ids)
        return out.logits, out.logits_aggregation

    args = [jnp.asarray(x[k], jnp.int32) for k in ("input_ids", "attention_mask", "token_type_ids")]
    start = time.perf_counter()
    compiled = jax.jit(forward).lower(state, *args).compile()
    compile_s = time.perf_counter() - start
    log(f"forward compiled in {compile_s:.1f}s")

    torch_inputs = {k: torch.as_tensor(v) for k, v in x.items()}
    ours_logits, ours_aggregation = (np.asarray(a) for a in compiled(state, *args))
    with torch.no_grad():
        want = hf(**torch_inputs)
    hf_logits, hf_aggregation = want.logits.numpy(), want.logits_aggregation.numpy()
    real = x["attention_mask"].astype(bool)
    ruled_out = hf_logits < -5000
    kept = real & ~ruled_out
    parity = {
        "same_ruled_out_tokens": bool(np.array_equal((ours_logits < -5000)[real], ruled_out[real])),
        "kept_tokens": int(kept.sum()),
        "max_abs_diff_kept_logits": float(np.abs(ours_logits - hf_logits)[kept].max()),
        "max_rel_diff_ruled_out_logits": float(
            (np.abs(ours_logits - hf_logits) / np.abs(hf_logits))[real & ruled_out].max()
        ),
        "max_abs_diff_aggregation_logits": float(np.abs(ours_aggregation - hf_aggregation).max()),
    }
    log(f"parity: {parity}")

    def ours_forward():
        jax.block_until_ready(compiled(state, *args))

    contestants = harness.contestants(ours_forward, lambda: hf(**torch_inputs), cores)
    samples, loads, _ = harness.measure(contestants, rounds, log)
    return {"round_loads": loads, "compile_s": compile_s, "parity": parity, "samples": samples}


def report(info: dict, fwd: dict, rounds: int) -> str:
    s, p = fwd["summary"], fwd["parity"]
    label = f"forward time <= {TARGET}x transformers'"
    libraries = ("jax", "jaxlib", "flax", "torch", "transformers", "numpy")
    return harness.section(
        TEMPLATE,
        MARKS,
        **harness.header(info, libraries, fwd["round_loads"]),
        rounds=rounds,
        hf_attention=info["hf_attention"],
        forward_rows="\n".join(harness.timing_rows(s)),
        compile_s=f"{fwd['compile_s']:.1f}",
        same_ruled_out="yes" if p["same_ruled_out_tokens"] else "**NO**",
        kept_tokens=p["kept_tokens"],
        kept_diff=f"{p['max_abs_diff_kept_logits']:.1e}",
        ruled_out_diff=f"{p['max_rel_diff_ruled_out_logits']:.1e}",
        aggregation_diff=f"{p['max_abs_diff_aggregation_logits']:.1e}",
        verdicts="\n".join(harness.verdict_row(label, name, s) for name in s["ratios"]),
    )


def main(argv=None) -> dict:
    parser = harness.arguments(__doc__.split("\n\n")[0], "rounds (default 9, quick 2)")
    args = parser.parse_args(argv)
    rounds = args.repeats or (2 if args.quick else 9)
    results, json_path = harness.output_paths(args, "tapas_benchmark.json")

    info, log = harness.begin_run("benchmarks.tapas_benchmark")
    cores = info["cores"]
    start = time.perf_counter()
    hf, ours = build_models(log)
    info["hf_attention"] = hf.config._attn_implementation
    fwd = bench_forward(hf, ours, rounds, cores, log)
    fwd["summary"] = harness.summarise(fwd, TARGET)
    harness.finish(info, start)

    section = report(info, fwd, rounds)
    out = {"machine": info, "forward": fwd}
    harness.publish(section, out, json_path, results, MARKS, log)
    return out


if __name__ == "__main__":
    main()
