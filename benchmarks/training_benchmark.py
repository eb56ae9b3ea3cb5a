"""Training throughput on CPU: polyformer's train step against transformers + torch AdamW.

    python -m benchmarks.training_benchmark [--quick] [--repeats N] [--dropout P]
                                            [--results PATH] [--json PATH]

The same small GPT-2 on both sides (n_layer 4, n_embd 256, n_head 4, vocab 4096, 256 positions),
batch 8 x 256 tokens of random ids (one fixed batch: no data loading is timed), float32, dropout
at GPT-2's 0.1 unless --dropout says otherwise.

Ours: `polyformer.training.step.make_train_step` with `optim.make_optimizer(OptimizerConfig)`
(AdamW, lr 3e-4, betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices only, global-norm
clipping at 1.0) and the `causal_lm` objective, under `jax.jit` with the state donated, as the
Trainer compiles it. It also computes what the Trainer logs (accuracy, gradient and parameter
norms, the finiteness check). transformers: `GPT2LMHeadModel` in train mode, cross-entropy on
the logits, `loss.backward()`, `clip_grad_norm_(1.0)` and `torch.optim.AdamW` with the same
hyper-parameters and the same decay groups (torch's default AdamW implementation).

Target: our tokens/s at least 1.3x theirs. MFU: achieved training FLOP/s, Kaplan et al.'s
6 N + 6 n_layer T d per token (N: non-embedding parameters; the tied head is not counted), over
the float32 matmul peak measured in this run (harness.matmul_peak, once per round).

Protocol as in benchmarks/harness.py: warm-up, then rounds of one step per contestant in rotating
order; medians of wall-clock and process CPU time; transformers at torch.set_num_threads(cores)
(the protocol) and at 1 thread (often faster on a loaded machine), a verdict against each.
Outputs: --json (default benchmarks/training_benchmark.json) and the section between
`<!-- training-benchmark:start -->` and `<!-- training-benchmark:end -->` of --results (default
benchmarks/RESULTS.md; --quick writes neither unless they are given).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import harness
from benchmarks.harness import median, thread_label, torch_thread_counts
from polyformer.models.gpt import GPT2Config, GPT2LMHeadModel
from polyformer.training import metrics, objectives, optim
from polyformer.training.step import init_state, make_train_step

TEMPLATE = Path(__file__).resolve().parent / "templates" / "training_benchmark.md"
MARKS = harness.marks("training-benchmark")
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
    loss = objectives.OBJECTIVES["causal_lm"]
    step = jax.jit(make_train_step(graphdef, loss, optimizer), donate_argnums=0)
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
    s = res["summary"]
    peak = res["peak_flops"]
    fpt = res["flops_per_token"]
    losses = res["losses"]
    step_rows = []
    for name, m in s["median_s"].items():
        tps = BATCH * SEQ_LEN / m["wall"]
        speedup = s["speedups"].get(name)
        step_rows.append(
            f"| {name} | {m['wall']:.3f} | {tps:.0f} | {m['cpu']:.3f} | "
            f"{m['cpu'] / m['wall']:.2f} | {tps * fpt / peak:.0%} | "
            f"{'' if speedup is None else f'{speedup:.2f}x'} |"
        )
    verdicts = []
    for name, speedup in s["speedups"].items():
        fastest = " (the faster here)" if name == s["fastest_anchor"] else ""
        verdicts.append(
            f"| tokens/s >= {TARGET}x transformers + AdamW | {name}{fastest} | {speedup:.2f}x "
            f"(CPU {s['cpu_speedups'][name]:.2f}x) | {'met' if s['met'][name] else '**not met**'} |"
        )
    libraries = ("jax", "jaxlib", "flax", "optax", "torch", "transformers")
    return harness.section(
        TEMPLATE,
        MARKS,
        **harness.header(info, libraries, res["round_loads"]),
        rounds=res["rounds"],
        **SIZES,
        batch=BATCH,
        seq_len=SEQ_LEN,
        dropout=res["dropout"],
        non_embedding=f"{res['non_embedding_params'] / 1e6:.2f}",
        hf_attention=res["hf_attention"],
        step_rows="\n".join(step_rows),
        compile_s=f"{res['compile_s']:.1f}",
        mflops_per_token=f"{fpt / 1e6:.1f}",
        mflops_with_head=f"{res['flops_per_token_with_head'] / 1e6:.1f}",
        peak=f"{peak / 1e9:.1f}",
        ours_first=f"{losses['ours'][0]:.3f}",
        hf_first=f"{losses['transformers'][0]:.3f}",
        ln_vocab=f"{math.log(SIZES['vocab_size']):.3f}",
        ours_steps=len(losses["ours"]),
        hf_steps=len(losses["transformers"]),
        ours_last=f"{losses['ours'][-1]:.3f}",
        hf_last=f"{losses['transformers'][-1]:.3f}",
        verdicts="\n".join(verdicts),
    )


def main(argv=None) -> dict:
    parser = harness.arguments(__doc__.split("\n\n")[0], "rounds (default 9, quick 2)")
    parser.add_argument("--dropout", type=float, default=0.1, help="GPT-2's dropout rates")
    args = parser.parse_args(argv)
    rounds = args.repeats or (2 if args.quick else 9)
    results, json_path = harness.output_paths(args, "training_benchmark.json")

    info, log = harness.begin_run("benchmarks.training_benchmark")
    cores = info["cores"]
    start = time.perf_counter()
    inputs, targets = make_batch()
    ours, non_embedding, compile_s, ours_losses = ours_step(args.dropout, inputs, targets, log)
    hf, hf_losses, hf_attention = hf_step(args.dropout, inputs, targets)
    contestants = {"ours": ours}
    for n in torch_thread_counts(cores):
        contestants[thread_label(n)] = lambda n=n: hf(n)
    samples, round_loads, peaks = harness.measure(
        contestants, rounds, log, peak=harness.matmul_peak()
    )
    harness.finish(info, start)
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
    harness.publish(section, out, json_path, results, MARKS, log)
    return out


if __name__ == "__main__":
    main()
