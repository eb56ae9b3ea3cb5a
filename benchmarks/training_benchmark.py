"""Training throughput on CPU: polyformer's train step against transformers + torch AdamW.

    python benchmarks/training_benchmark.py [--quick] [--repeats N] [--dropout P]
                                            [--results PATH] [--json PATH]

The same small GPT-2 on both sides (n_layer 4, n_embd 256, n_head 4, vocab 4096, 256 positions),
batch 8 x 256 tokens of random ids (one fixed batch: no data loading is timed), float32, dropout
at GPT-2's 0.1 unless --dropout says otherwise.

Ours: `polyformer.training.step.make_train_step` with `optim.make_optimizer(OptimizerConfig)`
(AdamW, lr 3e-4, betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices only, global-norm
clipping at 1.0) and `objectives.causal_lm`, under `jax.jit` with the state donated, as the
Trainer compiles it. It also computes what the Trainer logs (accuracy, gradient and parameter
norms, the finiteness check). transformers: `GPT2LMHeadModel` in train mode, cross-entropy on
the logits, `loss.backward()`, `clip_grad_norm_(1.0)` and `torch.optim.AdamW` with the same
hyper-parameters and the same decay groups (torch's default AdamW implementation).

Target: our tokens/s at least 1.3x theirs. MFU: achieved training FLOP/s, Kaplan et al.'s
6 N + 6 n_layer T d per token (N: non-embedding parameters; the tied head is not counted), over
the float32 matmul peak measured in this run (gpt_benchmark.matmul_peak, once per round).

Protocol as in gpt_benchmark.py: warm-up, then rounds of one step per contestant in rotating
order; medians of wall-clock and process CPU time; transformers at torch.set_num_threads(cores)
(the protocol) and at 1 thread (often faster on a loaded machine), a verdict against each.
Outputs: --json (default benchmarks/training_benchmark.json) and the section between
`<!-- training-benchmark:start -->` and `<!-- training-benchmark:end -->` of --results (default
benchmarks/RESULTS.md; --quick writes neither unless they are given).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Run as a script, this directory is on sys.path: the measuring and reporting helpers are shared.
from gpt_benchmark import (
    begin_run,
    load_note,
    matmul_peak,
    median,
    output_paths,
    publish,
    run_rounds,
    torch_thread_counts,
)

from polyformer.models.gpt import GPT2Config, GPT2LMHeadModel
from polyformer.training import metrics, objectives, optim
from polyformer.training.step import init_state, make_train_step

HERE = Path(__file__).resolve().parent
MARK_START = "<!-- training-benchmark:start -->"
MARK_END = "<!-- training-benchmark:end -->"
SIZES = dict(n_layer=4, n_embd=256, n_head=4, n_positions=256, vocab_size=4096)
BATCH, SEQ_LEN = 8, 256
TARGET = 1.3
OPTIMIZER = optim.OptimizerConfig(
    learning_rate=3e-4, warmup_steps=0, weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8, grad_clip=1.0
)


def model_fields(dropout: float) -> dict:
    end = SIZES["vocab_size"] - 1
    return dict(
        SIZES,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=end,
        eos_token_id=end,
    )


def make_batch() -> tuple[np.ndarray, np.ndarray]:
    tokens = np.random.default_rng(0).integers(0, SIZES["vocab_size"], (BATCH, SEQ_LEN + 1))
    return tokens[:, :-1], tokens[:, 1:]


def ours_step(dropout: float, inputs: np.ndarray, targets: np.ndarray, log=print):
    """(one training step, blocking; the number of non-embedding parameters; compile seconds;
    the losses so far)."""
    model = GPT2LMHeadModel(GPT2Config(**model_fields(dropout)), rngs=nnx.Rngs(0))
    model.train()
    graphdef, params = nnx.split(model, nnx.Param)
    non_embedding = sum(x.size for x in jax.tree.leaves(params)) - (
        model.wte.embedding[...].size + model.wpe.embedding[...].size
    )
    optimizer = optim.make_optimizer(OPTIMIZER, total_steps=1000)
    state = init_state(params, optimizer, jax.random.key(1))
    step = jax.jit(make_train_step(graphdef, objectives.causal_lm, optimizer), donate_argnums=0)
    batch = {"inputs": jnp.asarray(inputs, jnp.int32), "targets": jnp.asarray(targets, jnp.int32)}
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    log(f"ours: compiled the train step in {compile_s:.1f}s")
    holder = {"state": state}
    losses: list = []

    def run():
        holder["state"], m = compiled(holder["state"], batch)
        losses.append(m["loss"])
        jax.block_until_ready((holder["state"], m))

    return run, non_embedding, compile_s, losses


def hf_step(dropout: float, inputs: np.ndarray, targets: np.ndarray):
    """(one training step at a given torch thread count, the losses so far)."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**model_fields(dropout)))
    model.train()
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    c = OPTIMIZER
    optimizer = torch.optim.AdamW(
        [
            {"params": matrices, "weight_decay": c.weight_decay},
            {"params": vectors, "weight_decay": 0.0},
        ],
        lr=c.learning_rate,
        betas=(c.b1, c.b2),
        eps=c.eps,
    )
    x, y = torch.as_tensor(inputs), torch.as_tensor(targets)
    losses: list = []

    def run(threads: int):
        torch.set_num_threads(threads)
        optimizer.zero_grad(set_to_none=True)
        logits = model(x).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        optimizer.step()
        losses.append(loss.detach())

    return run, losses, model.config._attn_implementation


def report(info: dict, res: dict) -> str:
    v = info["versions"]
    s = res["summary"]
    peak = res["peak_flops"]
    fpt = res["flops_per_token"]
    lines = [
        MARK_START,
        "## Training throughput on CPU: polyformer's train step against transformers + AdamW",
        "",
        f"Command: `{info['command']}`  ",
        f"Machine: {info['cpu']}, {info['cores']} cores; python {v['python']}, jax {v['jax']}, "
        f"jaxlib {v['jaxlib']}, flax {v['flax']}, optax {v['optax']}, torch {v['torch']}, "
        f"transformers {v['transformers']}.  ",
        f"Date: {info['date']}. " + load_note(info, res["round_loads"]) + "  ",
        f"Run time: {info['run_time_s']:.0f} s; {res['rounds']} rounds of one step per "
        "contestant, in an order rotating by one; medians. CPU = process CPU time per step; cores "
        "used = CPU / wall.",
        "",
        f"GPT-2 n_layer {SIZES['n_layer']}, n_embd {SIZES['n_embd']}, n_head {SIZES['n_head']}, "
        f"vocab {SIZES['vocab_size']}, batch {BATCH} x {SEQ_LEN} tokens, float32, dropout "
        f"{res['dropout']}; N = {res['non_embedding_params'] / 1e6:.2f}M non-embedding parameters. "
        "AdamW lr 3e-4, betas 0.9/0.95, eps 1e-8, weight decay 0.1 (matrices), clip 1.0 on both "
        f"sides; transformers attention `{res['hf_attention']}`, torch's default AdamW.",
        "",
        "| | step wall (s) | tokens/s | step CPU (s) | cores used | MFU | ours / this, tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in s["median_s"].items():
        tps = BATCH * SEQ_LEN / m["wall"]
        speedup = s["speedups"].get(name)
        lines.append(
            f"| {name} | {m['wall']:.3f} | {tps:.0f} | {m['cpu']:.3f} | "
            f"{m['cpu'] / m['wall']:.2f} | {tps * fpt / peak:.0%} | "
            f"{'' if speedup is None else f'{speedup:.2f}x'} |"
        )
    best = s["fastest_anchor"]
    lines += [
        "",
        f"Our compile time: {res['compile_s']:.1f} s (once). MFU = tokens/s x "
        f"{fpt / 1e6:.1f} MFLOP/token (Kaplan: 6N + 6·n_layer·T·d; with the tied head's "
        f"6·d·vocab it would be {res['flops_per_token_with_head'] / 1e6:.1f}) / the float32 "
        f"matmul peak measured in this run, {peak / 1e9:.1f} GFLOP/s (jnp 2048³, best of 3, median "
        "over rounds).  ",
        f"Sanity: first-step loss ours {res['losses']['ours'][0]:.3f}, transformers "
        f"{res['losses']['transformers'][0]:.3f} (ln {SIZES['vocab_size']} = "
        f"{math.log(SIZES['vocab_size']):.3f}); after {len(res['losses']['ours'])} and "
        f"{len(res['losses']['transformers'])} steps on the one batch, "
        f"{res['losses']['ours'][-1]:.3f} and {res['losses']['transformers'][-1]:.3f} (different "
        "initial weights and dropout masks).",
        "",
        "Ours / transformers in tokens/s, from median step times of the same rounds (then the "
        "ratio of CPU times per step).",
        "",
        "| Target | Against | Measured | Verdict |",
        "|---|---|---|---|",
    ]
    for name, speedup in s["speedups"].items():
        fastest = " (the faster here)" if name == best else ""
        lines.append(
            f"| tokens/s >= {TARGET}x transformers + AdamW | {name}{fastest} | {speedup:.2f}x "
            f"(CPU {s['cpu_speedups'][name]:.2f}x) | {'met' if s['met'][name] else '**not met**'} |"
        )
    lines += ["", MARK_END]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run: fewer rounds")
    parser.add_argument("--repeats", type=int, help="rounds (default 9, quick 2)")
    parser.add_argument("--dropout", type=float, default=0.1, help="GPT-2's dropout rates")
    parser.add_argument("--results", type=Path, help="RESULTS.md to update")
    parser.add_argument("--json", type=Path, help="where the measurements go")
    args = parser.parse_args(argv)
    rounds = args.repeats or (2 if args.quick else 9)
    results, json_path = output_paths(args, "training_benchmark.json")

    info, log = begin_run()
    cores = info["cores"]
    start = time.perf_counter()
    inputs, targets = make_batch()
    ours, non_embedding, compile_s, ours_losses = ours_step(args.dropout, inputs, targets, log)
    hf, hf_losses, hf_attention = hf_step(args.dropout, inputs, targets)
    peak_probe = matmul_peak()
    peaks: list[float] = []
    contestants = {"ours": ours}
    for n in torch_thread_counts(cores):
        contestants[f"transformers ({n} thread{'s' * (n > 1)})"] = lambda n=n: hf(n)
    contestants["matmul peak"] = lambda: peaks.append(peak_probe())
    for fn in contestants.values():  # warm-up
        fn()
    peaks.clear()
    samples = run_rounds(contestants, rounds, log)
    samples.pop("matmul peak")
    round_loads = samples.pop("load_1min")
    info["load_average_end"] = os.getloadavg()
    info["run_time_s"] = time.perf_counter() - start
    import torch

    torch.set_num_threads(cores)

    med = {name: {k: median(v) for k, v in s.items()} for name, s in samples.items()}
    anchors = [n for n in med if n != "ours"]
    best = min(anchors, key=lambda n: med[n]["wall"])
    speedups = {n: med[n]["wall"] / med["ours"]["wall"] for n in anchors}
    fpt = metrics.transformer_train_flops_per_token(
        non_embedding, SIZES["n_layer"], SEQ_LEN, SIZES["n_embd"]
    )
    res = {
        "dropout": args.dropout,
        "rounds": rounds,
        "round_loads": round_loads,
        "non_embedding_params": int(non_embedding),
        "compile_s": compile_s,
        "hf_attention": hf_attention,
        "flops_per_token": fpt,
        "flops_per_token_with_head": fpt + 6 * SIZES["n_embd"] * SIZES["vocab_size"],
        "peak_flops": median(peaks),
        "peak_flops_samples": peaks,
        "samples": samples,
        "losses": {
            "ours": [float(x) for x in ours_losses],
            "transformers": [float(x) for x in hf_losses],
        },
        "summary": {
            "median_s": med,
            "tokens_per_s": {n: BATCH * SEQ_LEN / m["wall"] for n, m in med.items()},
            "speedups": speedups,
            "cpu_speedups": {n: med[n]["cpu"] / med["ours"]["cpu"] for n in anchors},
            "fastest_anchor": best,
            "target": TARGET,
            "met": {n: speedups[n] >= TARGET for n in anchors},
        },
    }
    section = report(info, res)
    out = {"machine": info, "training": res}
    publish(section, out, json_path, results, (MARK_START, MARK_END), log)
    return out


if __name__ == "__main__":
    main()
