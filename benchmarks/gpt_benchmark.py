"""GPT-2 (124M) on CPU: our jitted forward pass and greedy generation against transformers.

    python benchmarks/gpt_benchmark.py [--quick] [--repeats N] [--gen-repeats N]
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

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import polyformer as pf
from polyformer.models.gpt import generate

HERE = Path(__file__).resolve().parent
MARK_START = "<!-- gpt-benchmark:start -->"
MARK_END = "<!-- gpt-benchmark:end -->"
SEQ_LEN, PROMPT_LEN, NEW_TOKENS = 1024, 32, 128
FORWARD_TARGET, GENERATE_TARGET = 0.8, 0.5
ISSUE_PEAK_FLOPS = 390e9  # the issue's fp32 matmul figure for this machine, for comparison
PEAK_SIZE = 2048


# ----------------------------------------------------------------------------------------------
# Shared with training_benchmark.py


def machine_info() -> dict:
    """CPU model, cores, memory, library versions, date and load average now."""
    cpu = "unknown"
    try:
        text = Path("/proc/cpuinfo").read_text()
        name = re.search(r"^model name\s*:\s*(.+)$", text, re.M).group(1).strip()
        family = re.search(r"^cpu family\s*:\s*(\d+)", text, re.M).group(1)
        model = re.search(r"^model\s*:\s*(\d+)", text, re.M).group(1)
        cpu = f"{name} (family {family}, model {model})"
    except (OSError, AttributeError):
        pass
    versions = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = "not installed"
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "versions": versions,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_start": os.getloadavg(),
    }


def command_line() -> str:
    return shlex.join([".venv/bin/python", *sys.argv])


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call; fn must block until its result exists."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def matmul_peak() -> Callable[[], float]:
    """A float32 matmul probe: each call returns the best FLOP/s of three 2048^3 matmuls (jnp,
    on the default device), the machine's practical peak at that moment."""
    a = jax.random.normal(jax.random.key(0), (PEAK_SIZE, PEAK_SIZE), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()

    def probe() -> float:
        best = min(timed(lambda: matmul(a).block_until_ready())[0] for _ in range(3))
        return 2 * PEAK_SIZE**3 / best

    return probe


def run_rounds(contestants: dict[str, Callable[[], object]], rounds: int, log=print) -> dict:
    """Each round calls every contestant once, the order rotating by one per round; returns
    {name: {"wall": [...], "cpu": [...]}} and "load_1min": the load average after each round."""
    names = list(contestants)
    samples = {name: {"wall": [], "cpu": []} for name in names}
    loads = []
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            wall, cpu = timed(contestants[name])
            samples[name]["wall"].append(wall)
            samples[name]["cpu"].append(cpu)
        loads.append(os.getloadavg()[0])
        walls = ", ".join(f"{n} {samples[n]['wall'][-1]:.3f}s" for n in names)
        log(f"  round {r + 1}/{rounds}: {walls} (load {loads[-1]:.2f})")
    samples["load_1min"] = loads
    return samples


def median(xs) -> float:
    return statistics.median(xs)


def write_section(path: Path, start: str, end: str, section: str) -> None:
    """Replaces the text between the markers start/end of `path`, keeping everything else;
    appends the section when the markers are absent, creates the file when it is."""
    section = section.strip("\n")
    if path.exists():
        text = path.read_text()
        if start in text and end in text:
            head, rest = text.split(start, 1)
            text = head + section + rest.split(end, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
    else:
        text = "# Benchmark results\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def begin_run() -> tuple[dict, Callable[[str], None]]:
    """The machine's facts and this command line for the report, torch at one thread per core
    (the protocol's anchor), and a flushing log, which starts with the machine's load."""
    import torch

    info = machine_info()
    info["command"] = command_line()
    torch.set_num_threads(info["cores"])

    def log(message: str) -> None:
        print(message, flush=True)

    log(f"{info['cpu']}, {info['cores']} cores, load {fmt_load(info['load_average_start'])}")
    return info, log


def output_paths(args, json_name: str) -> tuple[Path | None, Path | None]:
    """(RESULTS.md, the JSON file) a run writes: --results / --json, else these beside this
    script; a --quick run writes neither unless asked."""
    results = args.results or (None if args.quick else HERE / "RESULTS.md")
    return results, args.json or (None if args.quick else HERE / json_name)


def publish(
    section: str,
    out: dict,
    json_path: Path | None,
    results: Path | None,
    marks: tuple[str, str],
    log: Callable[[str], None] = print,
) -> None:
    """Prints the report section, writes the measurements `out` as JSON to `json_path` and the
    section between `marks` into `results` (RESULTS.md), each where a path is given."""
    print(section)
    if json_path:
        json_path.write_text(json.dumps(out, indent=2) + "\n")
        log(f"wrote {json_path}")
    if results:
        write_section(results, *marks, section)
        log(f"updated {results}")


def verdict_row(label: str, name: str, summary: dict) -> str:
    """The targets-table row of anchor `name` in a `summarise()` summary."""
    r = summary["ratios"][name]
    fastest = " (the faster here)" if name == summary["fastest_anchor"] else ""
    verdict = "met" if summary["met"][name] else "**not met**"
    return (
        f"| {label} | {name}{fastest} | {r['wall']:.2f}x ({r['paired_wall']:.2f}x; CPU "
        f"{r['cpu']:.2f}x) | {verdict} |"
    )


def fmt_load(avg) -> str:
    return ", ".join(f"{x:.2f}" for x in avg)


def load_note(info: dict, round_loads: list[float]) -> str:
    """The load averages of the run, and what they mean for its figures."""
    text = (
        f"Load average (1, 5, 15 min) at the start {fmt_load(info['load_average_start'])}, at the "
        f"end {fmt_load(info['load_average_end'])}; 1-minute load after each round "
        f"{min(round_loads):.2f}–{max(round_loads):.2f}"
    )
    if max(round_loads) > info["cores"]:
        return text + (
            f": above the {info['cores']} cores, other work shared the machine, so absolute "
            "figures are low and noisy; the ratios pair contestants within the same rounds."
        )
    return text + f": at or below the {info['cores']} cores."


def torch_thread_counts(cores: int) -> list[int]:
    """transformers runs at the machine's core count (the protocol) and, if that is not 1, at 1
    thread (often faster on a loaded machine)."""
    return [cores] if cores == 1 else [cores, 1]


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

    def hf_forward(threads):
        def call():
            torch.set_num_threads(threads)
            with torch.no_grad():
                hf(ids_t, use_cache=False)

        return call

    contestants = {"ours": lambda: compiled(state, x).block_until_ready()}
    for n in torch_thread_counts(cores):
        contestants[f"transformers ({n} thread{'s' * (n > 1)})"] = hf_forward(n)
    peaks: list[float] = []
    contestants["matmul peak"] = lambda: peaks.append(peak_probe())
    for fn in contestants.values():  # warm-up
        fn()
    peaks.clear()
    samples = run_rounds(contestants, rounds, log)
    samples.pop("matmul peak")
    loads = samples.pop("load_1min")
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

    def hf_generate(threads):
        def call():
            torch.set_num_threads(threads)
            with torch.no_grad():
                return hf.generate(
                    ids_t,
                    attention_mask=torch.ones_like(ids_t),
                    do_sample=False,
                    max_new_tokens=NEW_TOKENS,
                    min_new_tokens=NEW_TOKENS,
                )

        return call

    first_wall, first_cpu = timed(ours_generate)
    log(f"generate: first call (trace + compile + run) {first_wall:.1f}s")
    ours_tokens = np.asarray(ours_generate())
    # The check doubles as transformers' warm-up; its fastest thread count keeps it short.
    hf_tokens = hf_generate(torch_thread_counts(cores)[-1])().numpy()
    same = ours_tokens.shape == hf_tokens.shape and bool((ours_tokens == hf_tokens).all())
    log(f"generate: shapes {ours_tokens.shape} / {hf_tokens.shape}, same tokens: {same}")

    contestants = {"ours": ours_generate}
    for n in torch_thread_counts(cores):
        contestants[f"transformers ({n} thread{'s' * (n > 1)})"] = hf_generate(n)
    samples = run_rounds(contestants, rounds, log)
    loads = samples.pop("load_1min")
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


def summarise(result: dict, target: float) -> dict:
    """Medians, ratios ours / transformers (wall and CPU), and the verdict against the fastest
    transformers configuration."""
    samples = result["samples"]
    med = {name: {k: median(v) for k, v in s.items()} for name, s in samples.items()}
    anchors = [n for n in med if n != "ours"]
    best = min(anchors, key=lambda n: med[n]["wall"])
    ratios = {
        n: {
            "wall": med["ours"]["wall"] / med[n]["wall"],
            "cpu": med["ours"]["cpu"] / med[n]["cpu"],
            "paired_wall": median(
                [o / t for o, t in zip(samples["ours"]["wall"], samples[n]["wall"], strict=True)]
            ),
        }
        for n in anchors
    }
    return {
        "median_s": med,
        "ratios": ratios,
        "fastest_anchor": best,
        "target": target,
        "met": {n: ratios[n]["wall"] <= target for n in anchors},
    }


def report(info: dict, fwd: dict, gen: dict, flops: dict, rounds: tuple[int, int]) -> str:
    fs, gs = fwd["summary"], gen["summary"]
    peak = median(fwd["peak_flops_samples"])
    t_ours = fs["median_s"]["ours"]["wall"]
    achieved = flops["total"] / t_ours
    v = info["versions"]
    lines = [
        MARK_START,
        "## GPT-2 124M on CPU: forward pass and greedy generation against transformers",
        "",
        f"Command: `{info['command']}`  ",
        f"Machine: {info['cpu']}, {info['cores']} cores; python {v['python']}, jax "
        f"{v['jax']}, jaxlib {v['jaxlib']}, flax {v['flax']}, torch {v['torch']}, transformers "
        f"{v['transformers']}, numpy {v['numpy']}.  ",
        f"Date: {info['date']}. " + load_note(info, fwd["round_loads"] + gen["round_loads"]) + "  ",
        f"Run time: {info['run_time_s']:.0f} s. Rounds (every contestant once per round, in an "
        f"order rotating by one): forward {rounds[0]}, generation {rounds[1]}; medians. CPU = "
        "process CPU time (user + system, all threads) per call; cores used = CPU / wall.",
        "",
        "Official gpt2 config, random weights (transformers' init under torch.manual_seed(0)), "
        "the same weights in both (save_pretrained, then polyformer.from_pretrained), float32. "
        f"transformers: eval, torch.no_grad, attention `{info['hf_attention']}`, at "
        "torch.set_num_threads(cores) and at 1 thread.",
        "",
        "### (a) Forward, batch 1, 1024 tokens",
        "",
        "| | wall (s) | CPU (s) | cores used | ours / this, wall | ours / this, CPU |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in fs["median_s"].items():
        r = fs["ratios"].get(name)
        cells = ("", "") if r is None else (f"{r['wall']:.2f}", f"{r['cpu']:.2f}")
        lines.append(
            f"| {name} | {m['wall']:.3f} | {m['cpu']:.3f} | {m['cpu'] / m['wall']:.2f} | "
            f"{cells[0]} | {cells[1]} |"
        )
    parts = flops["parts"]
    lines += [
        "",
        f"Our compile time: {fwd['compile_s']:.1f} s (once). Parity: max |logit difference| "
        f"{fwd['max_abs_logit_diff']:.1e} (float32).",
        "",
        f"FLOPs of the forward: {flops['total'] / 1e9:.1f} G = weights 2·N·T "
        f"{parts['weights'] / 1e9:.1f} G (N = {flops['non_embedding_params'] / 1e6:.2f}M "
        f"non-embedding parameters) + attention 4·n_layer·T²·d {parts['attention'] / 1e9:.1f} G + "
        f"tied head 2·T·d·vocab {parts['lm_head'] / 1e9:.1f} G. (XLA's cost_analysis says "
        f"{fwd['xla_cost_analysis_flops'] / 1e9:.1f} G: it counts the body of the attention's "
        "query-chunk loop once.)  ",
        f"Measured float32 matmul peak this run (jnp 2048³, best of 3, median over rounds): "
        f"{peak / 1e9:.1f} GFLOP/s (samples {min(fwd['peak_flops_samples']) / 1e9:.1f}–"
        f"{max(fwd['peak_flops_samples']) / 1e9:.1f}); the issue's figure for this machine "
        f"unloaded is {ISSUE_PEAK_FLOPS / 1e9:.0f} GFLOP/s, a floor of "
        f"{flops['total'] / ISSUE_PEAK_FLOPS:.2f} s for this forward.  ",
        f"Ours: {achieved / 1e9:.1f} GFLOP/s = **{achieved / peak:.0%} of the measured peak** "
        f"({achieved / ISSUE_PEAK_FLOPS:.0%} of the issue's unloaded figure).",
        "",
        f"### (b) Greedy generation, {NEW_TOKENS} new tokens after a {PROMPT_LEN}-token prompt",
        "",
        "| | wall (s) | ms / token | CPU (s) | cores used | ours / this, wall | ours / this, CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in gs["median_s"].items():
        r = gs["ratios"].get(name)
        cells = ("", "") if r is None else (f"{r['wall']:.2f}", f"{r['cpu']:.2f}")
        lines.append(
            f"| {name} | {m['wall']:.2f} | {1e3 * m['wall'] / NEW_TOKENS:.1f} | {m['cpu']:.2f} | "
            f"{m['cpu'] / m['wall']:.2f} | {cells[0]} | {cells[1]} |"
        )
    lines += [
        "",
        f"Ours, first call (trace + compile + run): {gen['first_call_s']:.1f} s, so compiling "
        f"takes about {gen['first_call_s'] - gs['median_s']['ours']['wall']:.1f} s; later calls "
        "with the same shapes and settings reuse the compiled loop. Same tokens as transformers: "
        f"{'yes' if gen['same_tokens'] else '**NO**'} (shape {gen['tokens_shape']}).",
        "",
        "### Targets",
        "",
        "Ours / transformers, median wall-clock times of the same rounds (in brackets the "
        "median of the per-round ratios, then the ratio of CPU times).",
        "",
        "| Target | Against | Measured | Verdict |",
        "|---|---|---|---|",
    ]
    targets = (
        (f"forward time <= {FORWARD_TARGET}x transformers'", fs),
        (f"generation time <= {GENERATE_TARGET}x transformers'", gs),
    )
    for label, s in targets:
        lines += [verdict_row(label, name, s) for name in s["ratios"]]
    lines += ["", MARK_END]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run: fewer rounds")
    parser.add_argument("--repeats", type=int, help="forward rounds (default 7, quick 2)")
    parser.add_argument("--gen-repeats", type=int, help="generation rounds (default 3, quick 1)")
    parser.add_argument("--results", type=Path, help="RESULTS.md to update")
    parser.add_argument("--json", type=Path, help="where the measurements go")
    args = parser.parse_args(argv)
    fwd_rounds = args.repeats or (2 if args.quick else 7)
    gen_rounds = args.gen_repeats or (1 if args.quick else 3)
    results, json_path = output_paths(args, "gpt_benchmark.json")

    info, log = begin_run()
    cores = info["cores"]
    start = time.perf_counter()
    hf, ours = build_models(log)
    info["hf_attention"] = hf.config._attn_implementation
    flops = forward_flops(ours)
    peak_probe = matmul_peak()
    fwd = bench_forward(hf, ours, fwd_rounds, cores, peak_probe, log)
    fwd["summary"] = summarise(fwd, FORWARD_TARGET)
    gen = bench_generate(hf, ours, gen_rounds, cores, log)
    gen["summary"] = summarise(gen, GENERATE_TARGET)
    info["load_average_end"] = os.getloadavg()
    info["run_time_s"] = time.perf_counter() - start

    section = report(info, fwd, gen, flops, (fwd_rounds, gen_rounds))
    out = {"machine": info, "flops": flops, "forward": fwd, "generate": gen}
    publish(section, out, json_path, results, (MARK_START, MARK_END), log)
    return out


if __name__ == "__main__":
    main()
