"""Long audio: Wav2Vec2-base with its dense attention replaced by a band pattern and by FAVOR+,
on up to 60 s of audio: time, memory, and how far the logits move.

    python -m experiments.long_audio [--model DIR] [--seconds 10 30 60] [--band 128]
                                     [--features 256] [--repeats 2] [--results PATH]
                                     [--json PATH] [--quick]

Model: a Wav2Vec2ForCTC checkpoint directory (`--model`), by default facebook/wav2vec2-base-960h's
architecture with random weights (our initialisation, seed 0; official weights cannot be
downloaded here). `--quick` uses the tiny test configuration on 1 s (a check of the machinery).

Audio: espeak-ng reading digits and letters, repeated to the length (unit-variance noise when
espeak-ng is not installed), normalised as the feature extractor does; batch 1, no mask.

Kernels, on the same parameters (only each MultiHeadAttention's `kernel` changes):
- Dense: exact softmax attention over every frame (the reference);
- Sparse(band(w)): exact softmax over the frames within w on each side (w = 128 frames is
  +-2.56 s at 20 ms per frame), only the kept blocks computed;
- Favor(num_features=m): FAVOR+ linear attention with m positive orthogonal random features.

Measured per kernel and length, on this process's CPU (float32):
- compile time, and the median over `--repeats` calls of the forward's wall and CPU time;
- memory: XLA's memory analysis of the compiled forward: temp bytes (the peak of intermediate
  buffers) plus arguments and outputs;
- against Dense: cosine similarity of the per-frame logit vectors (mean and min over frames), max
  absolute logit difference, and the share of frames whose argmax (the greedy CTC symbol) agrees.

Outputs: the report (markdown) printed, --results (experiments/results/long_audio.md in the full
run) and --json beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import polyformer as pf
from benchmarks import harness
from experiments import kernel_swap
from polyformer.attention import Dense, Favor, Sparse, patterns
from polyformer.datasets.spoken_digits import espeak_available, synthesize
from polyformer.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2ForCTC

TEMPLATE = Path(__file__).resolve().parent / "templates" / "long_audio.md"

SAMPLE_RATE = 16_000
TEXT = "three seven one zero nine four A B six two eight five C five "


def audio_of(seconds: float, seed: int = 0) -> np.ndarray:
    """float32 `[1, seconds * 16000]`: speech (or noise), zero mean and unit variance."""
    n = int(seconds * SAMPLE_RATE)
    if espeak_available():
        speech = synthesize(TEXT)
        x = np.tile(speech, -(-n // len(speech)))[:n]
    else:
        x = np.random.default_rng(seed).standard_normal(n)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    return x.astype(np.float32)[None]


def compare(reference: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Logits `[frames, vocab]` of a swapped model against the dense model's `reference`: the
    kernel-swap experiment's per-image comparison, per frame, plus the largest difference."""
    scores = kernel_swap.compare(reference, logits, labels=np.argmax(reference, -1))
    return {
        "cosine": scores["cosine"],
        "cosine_min": scores["cosine_min"],
        "max_abs_diff": float(np.abs(np.asarray(reference) - np.asarray(logits)).max()),
        "argmax_agreement": scores["top1_agreement"],
    }


def measure(model: nnx.Module, audio: np.ndarray, repeats: int) -> tuple[np.ndarray, dict]:
    """(logits `[frames, vocab]`, timings and XLA memory analysis) of one compiled forward."""
    graphdef, state = nnx.split(model)

    def forward(state, x):
        return nnx.merge(graphdef, state)(x).logits

    x = jnp.asarray(audio)
    start = time.perf_counter()
    compiled = jax.jit(forward).lower(state, x).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    logits = np.asarray(compiled(state, x))[0]  # also the warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        compiled(state, x).block_until_ready()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return logits, {
        "compile_s": compile_s,
        "wall_s": statistics.median(walls),
        "cpu_s": statistics.median(cpus),
        "temp_bytes": int(memory.temp_size_in_bytes),
        "argument_bytes": int(memory.argument_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
    }


def attention_temp_bytes(model: nnx.Module, frames: int) -> int:
    """XLA's temp bytes of one encoder layer's attention on `[1, frames, hidden]` (compiled, not
    run): what the kernel itself needs, apart from the feature encoder's large buffers."""
    layer = model.wav2vec2.encoder.layers[0].attention
    graphdef, state = nnx.split(layer)
    x = jax.ShapeDtypeStruct((1, frames, model.config.hidden_size), jnp.float32)
    compiled = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x)).lower(state, x).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def kernels(band: int, features: int) -> dict[str, object]:
    return {
        "Dense": Dense(),
        f"Sparse(band({band}))": Sparse(patterns.band(band)),
        f"Favor({features})": Favor(num_features=features),
    }


def run(model: nnx.Module, seconds: Sequence[float], band: int, features: int, repeats: int,
        log=print) -> list[dict]:  # fmt: skip
    rows = []
    for length in seconds:
        audio = audio_of(length)
        reference = None
        for name, kernel in kernels(band, features).items():
            swapped = kernel_swap.with_kernel(model, kernel)
            logits, row = measure(swapped, audio, repeats)
            row["attention_temp_bytes"] = attention_temp_bytes(swapped, logits.shape[0])
            if reference is None:
                reference = logits
            row.update(compare(reference, logits), kernel=name, seconds=length,
                       frames=int(logits.shape[0]))  # fmt: skip
            rows.append(row)
            log(
                f"{length:g} s, {name}: {row['wall_s']:.2f} s wall, {row['cpu_s']:.2f} s CPU, "
                f"temp {row['temp_bytes'] / 2**20:.0f} MiB (attention "
                f"{row['attention_temp_bytes'] / 2**20:.1f}), cosine {row['cosine']:.4f}, "
                f"argmax {row['argmax_agreement']:.3f}"
            )
    return rows


def report(rows: list[dict], info: dict) -> str:
    return harness.render(
        TEMPLATE,
        **{k: info[k] for k in ("command", "model", "audio", "cores", "date", "repeats")},
        load_start=info["load_start"],
        load_end=info["load_end"],
        rows="\n".join(
            f"| {r['seconds']:g} s | {r['frames']} | {r['kernel']} | {r['wall_s']:.2f} | "
            f"{r['cpu_s']:.2f} | {r['compile_s']:.1f} | {r['temp_bytes'] / 2**20:.1f} | "
            f"{r['attention_temp_bytes'] / 2**20:.2f} | {r['argument_bytes'] / 2**20:.0f} | "
            f"{r['cosine']:.4f} | {r['cosine_min']:.4f} | "
            f"{r['max_abs_diff']:.3g} | {r['argmax_agreement']:.3f} |"
            for r in rows
        ),
    )


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a Wav2Vec2ForCTC checkpoint")
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 30.0, 60.0])
    parser.add_argument("--band", type=int, default=128, help="frames on each side")
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny model, 1 s, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        model = Wav2Vec2ForCTC(Wav2Vec2Config.tiny(), rngs=nnx.Rngs(0))
        args.seconds, args.band, args.features, args.repeats = [1.0], 16, 16, 1
        description = "the tiny test configuration, random weights (--quick)"
    elif args.model is not None:
        model = pf.from_pretrained(args.model)
        description = f"{args.model}"
    else:
        model = Wav2Vec2ForCTC(Wav2Vec2Config.base_960h(), rngs=nnx.Rngs(0))
        description = (
            "facebook/wav2vec2-base-960h's architecture (12 layers x 768, 12 heads), random "
            "weights (polyformer's initialisation, seed 0)"
        )
    if not isinstance(model, Wav2Vec2ForCTC):
        raise ValueError(
            f"--model must hold a Wav2Vec2ForCTC checkpoint, got {type(model).__name__}"
        )
    load_start = os.getloadavg()
    rows = run(model, args.seconds, args.band, args.features, args.repeats)
    info = {
        "command": harness.command_line("experiments.long_audio", argv),
        "model": description,
        "audio": "espeak-ng speech repeated to length" if espeak_available() else "noise",
        "cores": harness.cores(),
        "date": harness.utc_now(),
        "load_start": harness.fmt_load(load_start, digits=1),
        "load_end": harness.fmt_load(os.getloadavg(), digits=1),
        "repeats": args.repeats,
    }
    text = report(rows, info)
    print(text)
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(text)
    json_path = args.json or (args.results.with_suffix(".json") if args.results else None)
    if json_path:
        json_path.write_text(json.dumps({"info": info, "rows": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
