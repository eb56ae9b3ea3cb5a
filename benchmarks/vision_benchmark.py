"""ViT-B/16 and CLIP ViT-B/32 on CPU: our jitted forward pass against transformers'.

    python -m benchmarks.vision_benchmark [--quick] [--repeats N] [--results PATH] [--json PATH]

Both sides hold the same weights: transformers' model built with torch.manual_seed(0) at the
official configuration (google/vit-base-patch16-224, openai/clip-vit-base-patch32), written with
save_pretrained to a temporary directory and read back with polyformer.from_pretrained.
Float32 throughout.

(a) ViTForImageClassification forward, 8 images of 224x224 (logits compared).
(b) CLIPModel forward, 8 images of 224x224 and 3 texts of 7, 9 and 12 tokens padded to 12 with
    an attention mask, as CLIPProcessor(padding=True) gives them (logits_per_image compared).
Target for each: our time <= 0.8x transformers'.

Ours is `jax.jit` of the model's call (compile time measured apart, through
`.lower().compile()`); transformers' runs under torch.no_grad in eval mode, at
torch.set_num_threads(cores) (the protocol) and at 1 thread (often faster on a loaded machine);
each target gets a verdict against both. Protocol as in benchmarks/harness.py: warm-up calls, then
rounds in which every contestant runs once, in an order rotating by one; medians of wall-clock
time with process CPU time alongside, and the load average. Outputs: --json (default
benchmarks/vision_benchmark.json) and the section between the vision-benchmark markers of
--results (default benchmarks/RESULTS.md; --quick writes neither unless they are given).
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

TEMPLATE = Path(__file__).resolve().parent / "templates" / "vision_benchmark.md"
MARKS = harness.marks("vision-benchmark")
TARGET = 0.8
IMAGES, TEXT_LENGTHS = 8, (7, 9, 12)


def _checkpoint(hf_model):
    """Ours, loaded from hf_model's save_pretrained."""
    with tempfile.TemporaryDirectory() as directory:
        hf_model.save_pretrained(directory)
        return pf.from_pretrained(directory)


def vit_case():
    """(name, transformers' ViT-B/16, ours, our inputs, transformers' inputs, output name)."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.ViTConfig(num_labels=1000)  # google/vit-base-patch16-224's sizes
    hf = transformers.ViTForImageClassification(config).eval()
    pixels = np.random.default_rng(0).uniform(-1, 1, (IMAGES, 3, 224, 224)).astype(np.float32)
    ours_inputs = {"pixel_values": jnp.asarray(pixels)}
    return "ViT-B/16", hf, _checkpoint(hf), ours_inputs, {"pixel_values": torch.as_tensor(pixels)}


def clip_case():
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.CLIPConfig(  # openai/clip-vit-base-patch32's sizes and token ids
        text_config=dict(bos_token_id=0, eos_token_id=2, pad_token_id=1),
        vision_config=dict(patch_size=32),
    )
    hf = transformers.CLIPModel(config).eval()
    rng = np.random.default_rng(0)
    width = max(TEXT_LENGTHS)
    input_ids = np.ones((len(TEXT_LENGTHS), width), np.int64)  # pad id 1
    mask = np.zeros_like(input_ids)
    for row, n in enumerate(TEXT_LENGTHS):
        input_ids[row, :n] = [49406, *rng.integers(300, 49000, n - 2), 49407]
        mask[row, :n] = 1
    pixels = rng.uniform(-1, 1, (IMAGES, 3, 224, 224)).astype(np.float32)
    inputs = {"input_ids": input_ids, "pixel_values": pixels, "attention_mask": mask}
    ours_inputs = {k: jnp.asarray(v) for k, v in inputs.items()}
    hf_inputs = {k: torch.as_tensor(v) for k, v in inputs.items()}
    return "CLIP ViT-B/32", hf, _checkpoint(hf), ours_inputs, hf_inputs


def output(out, name: str):
    return out.logits if name == "ViT-B/16" else out.logits_per_image


def bench(case, rounds: int, cores: int, log=print) -> dict:
    import torch

    name, hf, ours, ours_inputs, hf_inputs = case
    graphdef, state = nnx.split(ours)

    def forward(state, inputs):
        return output(nnx.merge(graphdef, state)(**inputs), name)

    start = time.perf_counter()
    compiled = jax.jit(forward).lower(state, ours_inputs).compile()
    compile_s = time.perf_counter() - start
    log(f"{name}: compiled in {compile_s:.1f}s")
    with torch.no_grad():
        want = output(hf(**hf_inputs), name).numpy()
    max_diff = float(np.abs(np.asarray(compiled(state, ours_inputs)) - want).max())
    log(f"{name}: parity max |ours - transformers| = {max_diff:.2e}")

    contestants = harness.contestants(
        lambda: compiled(state, ours_inputs).block_until_ready(), lambda: hf(**hf_inputs), cores
    )
    samples, loads, _ = harness.measure(contestants, rounds, log)
    result = {
        "round_loads": loads,
        "compile_s": compile_s,
        "max_abs_output_diff": max_diff,
        "hf_attention": hf.config._attn_implementation,
        "samples": samples,
    }
    result["summary"] = harness.summarise(result, TARGET)
    return result


def report(info: dict, results: dict[str, dict], rounds: int) -> str:
    loads = [x for r in results.values() for x in r["round_loads"]]
    rows = [
        f"| {model} | {row.removeprefix('| ')}"
        for model, r in results.items()
        for row in harness.timing_rows(r["summary"])
    ]
    notes = [
        f"{model}: our compile time {r['compile_s']:.1f} s (once); parity max |difference| "
        f"{r['max_abs_output_diff']:.1e}; transformers attention `{r['hf_attention']}`.  "
        for model, r in results.items()
    ]
    verdicts = [
        harness.verdict_row(f"{model} forward <= {TARGET}x transformers'", name, r["summary"])
        for model, r in results.items()
        for name in r["summary"]["ratios"]
    ]
    libraries = ("jax", "jaxlib", "flax", "torch", "transformers", "numpy")
    return harness.section(
        TEMPLATE,
        MARKS,
        **harness.header(info, libraries, loads),
        rounds=rounds,
        images=IMAGES,
        texts=len(TEXT_LENGTHS),
        text_lengths=", ".join(map(str, TEXT_LENGTHS)),
        forward_rows="\n".join(rows),
        model_notes="\n".join(notes),
        verdicts="\n".join(verdicts),
    )


def main(argv=None) -> dict:
    parser = harness.arguments(__doc__.split("\n\n")[0], "rounds per model (default 7, quick 2)")
    args = parser.parse_args(argv)
    rounds = args.repeats or (2 if args.quick else 7)
    results_path, json_path = harness.output_paths(args, "vision_benchmark.json")

    info, log = harness.begin_run("benchmarks.vision_benchmark")
    cores = info["cores"]
    start = time.perf_counter()
    results = {}
    for make in (vit_case, clip_case):
        case = make()
        results[case[0]] = bench(case, rounds, cores, log)
        del case  # free one model pair before building the next
    harness.finish(info, start)

    section = report(info, results, rounds)
    out = {"machine": info, "results": results}
    harness.publish(section, out, json_path, results_path, MARKS, log)
    return out


if __name__ == "__main__":
    main()
