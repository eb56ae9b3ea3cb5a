"""Wav2Vec2-base (facebook/wav2vec2-base-960h's configuration) on CPU: our jitted forward pass
on 10 s of audio against transformers' Wav2Vec2ForCTC.

    python -m benchmarks.wav2vec2_benchmark [--quick] [--rounds N] [--seconds S]
                                            [--results PATH] [--json PATH]

Both models hold the same weights: transformers' model built with torch.manual_seed(0) at the
official configuration, written with save_pretrained to a temporary directory and read back with
polyformer.from_pretrained. Float32, batch 1, 160,000 samples (499 frames), no attention mask
(how base-960h is used). Ours is `jax.jit` of the model's call (compile time measured apart);
transformers' runs under torch.no_grad in eval mode, at torch.set_num_threads(cores) (the
protocol) and at 1 thread (often faster on a loaded machine). Target: our time <= 0.8x
transformers', against both thread counts.

Protocol (as benchmarks/harness.py): warm-up calls, then rounds; each round runs every
contestant once in an order rotating from round to round; medians of wall-clock and process CPU
time; load average recorded. Outputs: --json (default benchmarks/wav2vec2_benchmark.json) and the
section between the wav2vec2-benchmark markers of --results (default benchmarks/RESULTS.md;
--quick writes neither unless given).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import polyformer as pf
from benchmarks import harness
from polyformer.models.wav2vec2 import Wav2Vec2Config

TEMPLATE = Path(__file__).resolve().parent / "templates" / "wav2vec2_benchmark.md"
MARKS = harness.marks("wav2vec2-benchmark")
TARGET = 0.8
SAMPLE_RATE = 16_000


def build_models(log=print):
    """(transformers' Wav2Vec2ForCTC, ours) with the same random weights, in evaluation mode."""
    import torch
    import transformers

    config = Wav2Vec2Config.base_960h()
    torch.manual_seed(0)
    hf_config = transformers.Wav2Vec2Config(**{
        k: v for k, v in config.to_hf().items() if k not in ("architectures", "model_type")
    })  # fmt: skip
    hf = transformers.Wav2Vec2ForCTC(hf_config).eval()
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        ours = pf.from_pretrained(directory)
    log(f"built wav2vec2-base-960h: transformers attention {hf.config._attn_implementation!r}")
    return hf, ours


def bench_forward(hf, ours, seconds: float, rounds: int, cores: int, log=print) -> dict:
    import torch

    audio = np.random.default_rng(0).standard_normal((1, int(seconds * SAMPLE_RATE)))
    audio = audio.astype(np.float32)
    graphdef, state = nnx.split(ours)

    def forward(state, x):
        return nnx.merge(graphdef, state)(x).logits

    x = jnp.asarray(audio)
    start = time.perf_counter()
    compiled = jax.jit(forward).lower(state, x).compile()
    compile_s = time.perf_counter() - start
    log(f"forward compiled in {compile_s:.1f}s")
    ours_logits = np.asarray(compiled(state, x))
    audio_t = torch.as_tensor(audio)
    with torch.no_grad():
        hf_logits = hf(audio_t).logits.numpy()
    max_diff = float(np.abs(ours_logits - hf_logits).max())
    log(f"parity: logits {ours_logits.shape}, max |ours - transformers| = {max_diff:.2e}")

    contestants = harness.contestants(
        lambda: compiled(state, x).block_until_ready(), lambda: hf(audio_t), cores
    )
    samples, loads, _ = harness.measure(contestants, rounds, log)
    return {
        "audio_seconds": seconds,
        "frames": int(ours_logits.shape[1]),
        "round_loads": loads,
        "compile_s": compile_s,
        "max_abs_logit_diff": max_diff,
        "samples": samples,
    }


def report(info: dict, fwd: dict) -> str:
    s = fwd["summary"]
    rows = []
    for name, m in s["median_s"].items():
        r = s["ratios"].get(name)
        if r is None:
            rows.append(f"| {name} | {m['wall']:.3f} | {m['cpu']:.3f} | | | |")
        else:
            met = "yes" if s["met"][name] else "no"
            rows.append(
                f"| {name} | {m['wall']:.3f} | {m['cpu']:.3f} | {r['wall']:.2f} | "
                f"{r['cpu']:.2f} | {met} |"
            )
    libraries = ("jax", "jaxlib", "flax", "torch", "transformers")
    return harness.section(
        TEMPLATE,
        MARKS,
        **harness.header(info, libraries, fwd["round_loads"]),
        rounds=len(fwd["round_loads"]),
        audio_seconds=f"{fwd['audio_seconds']:g}",
        frames=fwd["frames"],
        compile_s=f"{fwd['compile_s']:.1f}",
        max_abs_logit_diff=f"{fwd['max_abs_logit_diff']:.1e}",
        forward_rows="\n".join(rows),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 s of audio, 2 rounds")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 2, 1.0
    if not args.quick:
        args.results = args.results or harness.RESULTS
        args.json = args.json or harness.RESULTS.parent / "wav2vec2_benchmark.json"
    start = time.perf_counter()
    info = harness.machine_info()
    info["command"] = harness.command_line("benchmarks.wav2vec2_benchmark")
    hf, ours = build_models()
    info["hf_attention"] = hf.config._attn_implementation
    fwd = bench_forward(hf, ours, args.seconds, args.rounds, info["cores"])
    fwd["summary"] = harness.summarise(fwd, TARGET)
    harness.finish(info, start)
    section = report(info, fwd)
    out = {"machine": info, "forward": fwd}
    harness.publish(section, out, args.json, args.results, MARKS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
