"""GPT-2 (124M) on CPU: our jitted forward pass and greedy generation against transformers.

    python -m benchmarks.gpt_benchmark [--quick] [--repeats N] [--gen-repeats N]
                                       [--results PATH] [--json PATH]

Both models hold the same weights: transformers' GPT2LMHeadModel built with
torch.manual_seed(0) at the official gpt2 config, written with save_pretrained to a temporary
directory and read back with polyformer.from_pretrained. Float32 throughout.

(a) Forward: batch 1, 1024 tokens. Ours is `jax.jit` of the model's call (compile time measured
    apart, through `.lower().compile()`); transformers' runs under torch.no_grad in eval mode.
    Target: our time <= 0.8x theirs. FLOPs of the forward: 2 N T (N the non-embedding
    parameters) + 4 n_layer T^2 d (the scores and the weighted values, causal masking not
    subtracted) + 2 T d vocab (the tied head), set against the float32 matmul throughput that
    this run measures itself (a 2048^3 jnp matmul, best of three calls, once per round).
    transformers is called with use_cache=False: it would otherwise also return the keys and
    values of every layer, which ours does not compute.
(b) Greedy generation: 128 new tokens after a 32-token prompt, `polyformer.models.gpt.generate`
    against `model.generate(do_sample=False, max_new_tokens=128, min_new_tokens=128)`, the end of
    sequence disabled on both sides so that both run 128 steps; the tokens must be equal.
    Target: our time <= 0.5x theirs. Our first call (trace + compile + one run) is reported apart
    from the steady-state time.

transformers runs at torch.set_num_threads(cores), the protocol, and also at 1 thread: on a
machine shared with other work, torch's OpenMP threads wait on each other and 1 thread can be
much faster. Each target gets a verdict against both, so none is met only against a handicapped
anchor.

Protocol: warm-up calls first, then rounds; each round runs every contestant once, in an order
that rotates from round to round so that drift in the machine's load hits all alike. Reported:
medians of wall-clock time, the process CPU time alongside (less sensitive to other work on the
machine), and the load average. Outputs: --json (default benchmarks/gpt_benchmark.json) and the
section between `<!-- gpt-benchmark:start -->` and `<!-- gpt-benchmark:end -->` of --results
(default benchmarks/RESULTS.md; --quick writes neither unless they are given).
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
from benchmarks.harness import median, thread_label, timed, torch_thread_counts
from polyformer.models.gpt import generate

TEMPLATE = Path(__file__).resolve().parent / "templates" / "gpt_benchmark.md"
MARKS = harness.marks("gpt-benchmark")
SEQ_LEN, PROMPT_LEN, NEW_TOKENS = 1024, 32, 128
FORWARD_TARGET, GENERATE_TARGET = 0.8, 0.5
ISSUE_PEAK_FLOPS = 390e9  # the issue's fp32 matmul figure for this machine, for comparison


# ----------------------------------------------------------------------------------------------
# The models


def build_models(log=print):
    """(transformers' model, ours) with the same random weights, both in evaluation mode."""
    import torch
    import transformers

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    # Generation runs its 128 steps whatever comes out: no end-of-sequence token at all.
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        ours = pf.from_pretrained(directory)
    log(f"built gpt2 (124M): transformers attention {hf.config._attn_implementation!r}")
    return hf, ours


def forward_flops(ours) -> dict:
    c = ours.config
    params = nnx.state(ours, nnx.Param)
    total = sum(x.size for x in jax.tree.leaves(params))
    embeddings = ours.wte.embedding[...].size + ours.wpe.embedding[...].size
    non_embedding = total - embeddings
    T, d = SEQ_LEN, c.n_embd
    parts = {
        "weights": 2 * non_embedding * T,
        "attention": 2 * 2 * c.n_layer * T * T * d,
        "lm_head": 2 * T * d * c.vocab_size,
    }
    return {"non_embedding_params": non_embedding, "parts": parts, "total": sum(parts.values())}


# ----------------------------------------------------------------------------------------------
# (a) forward


def bench_forward(hf, ours, rounds: int, cores: int, peak_probe, log=print) -> dict:
    import torch

    ids = np.random.default_rng(0).integers(0, ours.config.vocab_size, (1, SEQ_LEN))
    graphdef, state = nnx.split(ours)

    def forward(state, input_ids):
        return nnx.merge(graphdef, state)(input_ids).logits

    x = jnp.asarray(ids, jnp.int32)
    start = time.perf_counter()
    lowered = jax.jit(forward).lower(state, x)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    log(f"forward compiled in {compile_s:.1f}s")

    ours_logits = np.asarray(compiled(state, x))
    ids_t = torch.as_tensor(ids)
    with torch.no_grad():
        hf_logits = hf(ids_t, use_cache=False).logits.numpy()
    max_diff = float(np.abs(ours_logits - hf_logits).max())
    log(f"forward parity: max |ours - transformers| = {max_diff:.2e}")

    contestants = harness.contestants(
        lambda: compiled(state, x).block_until_ready(),
        lambda: hf(ids_t, use_cache=False),
        cores,
    )
    samples, loads, peaks = harness.measure(contestants, rounds, log, peak=peak_probe)
    return {
        "round_loads": loads,
        "compile_s": compile_s,
        "xla_cost_analysis_flops": xla_flops,
        "max_abs_logit_diff": max_diff,
        "samples": samples,
        "peak_flops_samples": peaks,
    }


# ----------------------------------------------------------------------------------------------
# (b) greedy generation


def bench_generate(hf, ours, rounds: int, cores: int, log=print) -> dict:
    import torch

    ids = np.random.default_rng(1).integers(0, ours.config.vocab_size, (1, PROMPT_LEN))
    x = jnp.asarray(ids, jnp.int32)
    ids_t = torch.as_tensor(ids)

    def ours_generate():
        return generate(ours, x, max_new_tokens=NEW_TOKENS, eos_token_id=[]).block_until_ready()

    def hf_generate():
        return hf.generate(
            ids_t,
            attention_mask=torch.ones_like(ids_t),
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
        )

    contestants = harness.contestants(ours_generate, hf_generate, cores)

    first_wall, first_cpu = timed(ours_generate)
    log(f"generate: first call (trace + compile + run) {first_wall:.1f}s")
    ours_tokens = np.asarray(ours_generate())
    # The check doubles as transformers' warm-up; its fastest thread count keeps it short.
    hf_tokens = contestants[thread_label(torch_thread_counts(cores)[-1])]().numpy()
    same = ours_tokens.shape == hf_tokens.shape and bool((ours_tokens == hf_tokens).all())
    log(f"generate: shapes {ours_tokens.shape} / {hf_tokens.shape}, same tokens: {same}")

    samples, loads, _ = harness.measure(contestants, rounds, log, warm_up=False)
    return {
        "round_loads": loads,
        "first_call_s": first_wall,
        "first_call_cpu_s": first_cpu,
        "same_tokens": same,
        "tokens_shape": list(ours_tokens.shape),
        "samples": samples,
    }


# ----------------------------------------------------------------------------------------------
# Report


def report(info: dict, fwd: dict, gen: dict, flops: dict, rounds: tuple[int, int]) -> str:
    fs, gs = fwd["summary"], gen["summary"]
    peak, peaks = median(fwd["peak_flops_samples"]), fwd["peak_flops_samples"]
    achieved = flops["total"] / fs["median_s"]["ours"]["wall"]
    parts = flops["parts"]
    generate_rows = []
    for name, m in gs["median_s"].items():
        r = gs["ratios"].get(name)
        cells = ("", "") if r is None else (f"{r['wall']:.2f}", f"{r['cpu']:.2f}")
        generate_rows.append(
            f"| {name} | {m['wall']:.2f} | {1e3 * m['wall'] / NEW_TOKENS:.1f} | {m['cpu']:.2f} | "
            f"{m['cpu'] / m['wall']:.2f} | {cells[0]} | {cells[1]} |"
        )
    targets = (
        (f"forward time <= {FORWARD_TARGET}x transformers'", fs),
        (f"generation time <= {GENERATE_TARGET}x transformers'", gs),
    )
    verdicts = [harness.verdict_row(label, name, s) for label, s in targets for name in s["ratios"]]
    libraries = ("jax", "jaxlib", "flax", "torch", "transformers", "numpy")
    return harness.section(
        TEMPLATE,
        MARKS,
        **harness.header(info, libraries, fwd["round_loads"] + gen["round_loads"]),
        forward_rounds=rounds[0],
        generate_rounds=rounds[1],
        hf_attention=info["hf_attention"],
        forward_rows="\n".join(harness.timing_rows(fs)),
        compile_s=f"{fwd['compile_s']:.1f}",
        max_abs_logit_diff=f"{fwd['max_abs_logit_diff']:.1e}",
        flops_total=f"{flops['total'] / 1e9:.1f}",
        flops_weights=f"{parts['weights'] / 1e9:.1f}",
        non_embedding=f"{flops['non_embedding_params'] / 1e6:.2f}",
        flops_attention=f"{parts['attention'] / 1e9:.1f}",
        flops_head=f"{parts['lm_head'] / 1e9:.1f}",
        xla_flops=f"{fwd['xla_cost_analysis_flops'] / 1e9:.1f}",
        peak=f"{peak / 1e9:.1f}",
        peak_min=f"{min(peaks) / 1e9:.1f}",
        peak_max=f"{max(peaks) / 1e9:.1f}",
        issue_peak=f"{ISSUE_PEAK_FLOPS / 1e9:.0f}",
        floor_s=f"{flops['total'] / ISSUE_PEAK_FLOPS:.2f}",
        achieved=f"{achieved / 1e9:.1f}",
        share_of_peak=f"{achieved / peak:.0%}",
        share_of_issue_peak=f"{achieved / ISSUE_PEAK_FLOPS:.0%}",
        new_tokens=NEW_TOKENS,
        prompt_len=PROMPT_LEN,
        generate_rows="\n".join(generate_rows),
        first_call_s=f"{gen['first_call_s']:.1f}",
        compile_generate_s=f"{gen['first_call_s'] - gs['median_s']['ours']['wall']:.1f}",
        same_tokens="yes" if gen["same_tokens"] else "**NO**",
        tokens_shape=gen["tokens_shape"],
        verdicts="\n".join(verdicts),
    )


def main(argv=None) -> dict:
    parser = harness.arguments(__doc__.split("\n\n")[0], "forward rounds (default 7, quick 2)")
    parser.add_argument("--gen-repeats", type=int, help="generation rounds (default 3, quick 1)")
    args = parser.parse_args(argv)
    fwd_rounds = args.repeats or (2 if args.quick else 7)
    gen_rounds = args.gen_repeats or (1 if args.quick else 3)
    results, json_path = harness.output_paths(args, "gpt_benchmark.json")

    info, log = harness.begin_run("benchmarks.gpt_benchmark")
    cores = info["cores"]
    start = time.perf_counter()
    hf, ours = build_models(log)
    info["hf_attention"] = hf.config._attn_implementation
    flops = forward_flops(ours)
    peak_probe = harness.matmul_peak()
    fwd = bench_forward(hf, ours, fwd_rounds, cores, peak_probe, log)
    fwd["summary"] = harness.summarise(fwd, FORWARD_TARGET)
    gen = bench_generate(hf, ours, gen_rounds, cores, log)
    gen["summary"] = harness.summarise(gen, GENERATE_TARGET)
    harness.finish(info, start)

    section = report(info, fwd, gen, flops, (fwd_rounds, gen_rounds))
    out = {"machine": info, "flops": flops, "forward": fwd, "generate": gen}
    harness.publish(section, out, json_path, results, MARKS, log)
    return out


if __name__ == "__main__":
    main()
