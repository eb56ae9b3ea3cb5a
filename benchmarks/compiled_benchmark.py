"""Compiled for the hardware: every family's train step at its official size on TPU slices and a
GPU machine, compiled on this CPU-only machine.

    JAX_PLATFORMS=cpu python -m benchmarks.compiled_benchmark [--quick] [--models A,B]
        [--targets T,U] [--variants V,W] [--fresh] [--results PATH] [--json PATH]

Each cell is one `polyformer.training.compile.compile_run` (the trainer's exact train step:
bfloat16 compute, AdamW, parameters and optimizer state sharded over every device, `fsdp=-1`)
of a model at its official configuration with random data of its objective's shapes
(`Objective.synthetic`), at a fixed number of examples per device. A variant is a set of model
config fields: "none" is the default every run got before rematerialisation (remat="none");
"full" is remat="full". Compiling the big models takes minutes each on a small machine, so every
finished cell is written to the JSON file at once and a later run skips it (`--fresh` recompiles
the cells asked for); the report is made from every cell in the file. `--quick` compiles the tiny
GPT-2 for one TPU and one GPU target and writes nothing unless asked.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import multiprocessing
import resource
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import harness
from experiments.configs import gpt2_124m
from polyformer import targets as target_table
from polyformer.models.clip import CLIPConfig
from polyformer.models.gpt import GPT2Config
from polyformer.models.tapas import TapasConfig
from polyformer.models.vit import ViTConfig
from polyformer.models.wav2vec2 import Wav2Vec2Config
from polyformer.training import compile as compiling
from polyformer.training.config import RunConfig
from polyformer.training.objectives import OBJECTIVES
from polyformer.training.sharding import MeshConfig

TEMPLATE = Path(__file__).resolve().parent / "templates" / "compiled_benchmark.md"
MARKS = harness.marks("compiled-benchmark")


@dataclasses.dataclass(frozen=True)
class Model:
    """A row of the table: an official configuration, its objective, the example length
    (tokens, or audio samples) and the examples each device gets."""

    config: Callable[[], Any]
    objective: str
    length: int
    per_device: int


# GPT-2 rows are pretraining runs without dropout, as experiments/configs/gpt2_124m.py; the others
# keep their checkpoints' dropout, as fine-tuning would.
MODELS = {
    "GPT-2 small": Model(
        functools.partial(GPT2Config.gpt2, **gpt2_124m.NO_DROPOUT), "causal_lm", 1024, 8
    ),
    "GPT-2 medium": Model(
        functools.partial(GPT2Config.gpt2_medium, **gpt2_124m.NO_DROPOUT), "causal_lm", 1024, 8
    ),
    "GPT-2 XL": Model(
        functools.partial(GPT2Config.gpt2_xl, **gpt2_124m.NO_DROPOUT), "causal_lm", 1024, 8
    ),
    "ViT-B/16": Model(ViTConfig.vit_base_patch16_224, "image_classification", 0, 32),
    "CLIP ViT-B/32": Model(CLIPConfig.clip_vit_base_patch32, "clip_contrastive", 0, 32),
    # 10 s of 16 kHz audio.
    "Wav2Vec2-base": Model(Wav2Vec2Config.base_960h, "ctc", 160_000, 8),
    "TAPAS-base": Model(TapasConfig.base_wtq, "tapas", 512, 8),
}
QUICK_MODELS = {"GPT-2 tiny": Model(GPT2Config.tiny, "causal_lm", 32, 2)}
TARGETS = ("v5e-16", "v5p-8", "h100x8")
QUICK_TARGETS = ("v5e-4", "h100x8")
VARIANTS = {"none": {"remat": "none"}, "full": {"remat": "full"}}


def run_config(model: Model, target: str, variant: str) -> RunConfig:
    """The cell's run: `model` with the variant's fields on every device of `target`."""
    config = dataclasses.replace(model.config(), **VARIANTS[variant])
    devices = target_table.get(target).num_devices
    return RunConfig(
        model=config,
        objective=model.objective,
        precision="bfloat16",
        data=OBJECTIVES[model.objective].synthetic(config, model.length),
        mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
        batch_size=model.per_device * devices,
    )


def compile_cell(name: str, target: str, variant: str) -> dict:
    """The compiled figures of one cell (`CompileReport.to_json` plus XLA's counts and the
    largest buffers), or {"error": message} when it cannot compile."""
    start = time.perf_counter()
    model = {**MODELS, **QUICK_MODELS}[name]
    try:
        report = compiling.compile_run(run_config(model, target, variant), target)
    except Exception as error:  # a cell that fails is a finding, not the end of the table
        return {"error": f"{type(error).__name__}: {error}".splitlines()[0][:300]}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        **report.to_json(),
        "wall_seconds": time.perf_counter() - start,
        # The cell's own process: on a shared machine its CPU time is the comparable figure.
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "eval_peak_bytes": report.eval_peak_bytes,
        "train_total_bytes": report.train.total,
        "compiled_flops": report.compiled_flops,
        "bytes_accessed": report.bytes_accessed,
        "largest_buffers": list(report.largest_buffers),
    }


def key(name: str, target: str, variant: str) -> str:
    return f"{name} | {target} | {variant}"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny GPT-2 on two targets")
    parser.add_argument("--results", type=Path, help="RESULTS.md to update")
    parser.add_argument("--json", type=Path, help="the cells' figures (read, then extended)")
    parser.add_argument("--models", help=f"comma-separated, of: {', '.join(MODELS)}")
    parser.add_argument("--targets", help=f"comma-separated (default {','.join(TARGETS)})")
    parser.add_argument("--variants", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--fresh", action="store_true", help="recompile cells already measured")
    args = parser.parse_args(argv)
    models = QUICK_MODELS if args.quick else MODELS
    if args.models:
        models = {name: MODELS[name] for name in args.models.split(",")}
    names = args.targets.split(",") if args.targets else QUICK_TARGETS if args.quick else TARGETS
    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    results, json_path = harness.output_paths(args, "compiled_benchmark.json")

    info = harness.machine_info()
    info["command"] = harness.command_line("benchmarks.compiled_benchmark")
    start = time.perf_counter()
    cells = harness.measured_cells(json_path)
    for name in models:
        for target in names:
            for variant in variants:
                if key(name, target, variant) in cells and not args.fresh:
                    continue
                print(f"compiling {key(name, target, variant)}", flush=True)
                # A process a cell: libtpu and the CUDA plugin in one process have crashed
                # XLA's GPU compiler here, and a crash then loses one cell only.
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as p:
                    cell = p.submit(compile_cell, name, target, variant).result()
                harness.keep_cell(cells, key(name, target, variant), cell, info, json_path)
                print(f"  {summary(cell)}", flush=True)
    harness.publish_cells(report, info, cells, start, json_path, results, MARKS)
    return cells


def summary(cell: dict) -> str:
    if "error" in cell:
        return cell["error"]
    gib = 2**30
    if refused(cell):
        roofline = "refused by the compiler"
    else:
        roofline = "roofline {} ms, MFU bound {}".format(*_roofline(cell))
    return (
        f"temp {cell['bytes_per_device']['temp'] / gib:.2f} GiB, total "
        f"{cell['train_total_bytes'] / gib:.2f} of {cell['hbm_bytes_per_device'] / gib:.2f} GiB, "
        f"fits {cell['fits']}, compile {cell['compile_seconds']:.0f} s, {roofline}"
    )


def table_row(name: str, cell: dict) -> list[str]:
    model, target, variant = name.split(" | ")
    if "error" in cell:
        return [model, target, variant, f"did not compile: {cell['error']}", *[""] * 7]
    gib = 2**30
    mesh = ", ".join(str(v) for v in cell["mesh"].values())
    return [
        model,
        target,
        variant,
        mesh,
        f"{cell['bytes_per_device']['arguments'] / gib:.2f}",
        f"{cell['bytes_per_device']['temp'] / gib:.2f}",
        f"{max(cell['train_total_bytes'], cell['eval_peak_bytes']) / gib:.2f} / "
        f"{cell['hbm_bytes_per_device'] / gib:.2f}",
        "yes" if cell["fits"] else "**no**",
        f"{cell['compile_seconds']:.0f}"
        + (f" ({cell['cpu_seconds']:.0f})" if "cpu_seconds" in cell else ""),
        *_roofline(cell),
    ]


def refused(cell: dict) -> bool:
    """Whether the TPU compiler refused the cell's step (from its XLA counts: cells from before
    `CompileReport.refused` lack the key)."""
    return compiling.refused_step(cell["compiled_flops"], cell["bytes_accessed"])


def _roofline(cell: dict) -> list[str]:
    """The roofline columns; none for a refused step."""
    if refused(cell):
        return ["refused", "-"]
    return [f"{cell['roofline_step_seconds'] * 1e3:.1f}", f"{cell['mfu_bound']:.1%}"]


def report(info: dict, cells: dict) -> str:
    header = (
        "model", "target", "remat", "mesh (data, fsdp, tensor)", "arguments GiB",
        "temporaries GiB", "peak GiB / device memory", "fits", "compile s (CPU s)",
        "roofline step ms",
        "MFU bound",
    )  # fmt: skip
    order = {name: i for i, name in enumerate((*MODELS, *QUICK_MODELS))}
    rows = sorted(cells.items(), key=lambda kv: (order.get(kv[0].split(" | ")[0], 99), kv[0]))
    models = "; ".join(
        f"{name}: {m.per_device} examples per device"
        + (f" of {m.length} {'samples' if m.objective == 'ctc' else 'tokens'}" if m.length else "")
        for name, m in MODELS.items()
    )
    return harness.section(
        TEMPLATE,
        MARKS,
        command=info["command"],
        machine=f"{info['cpu']}, {info['cores']} cores; "
        f"{harness.versions_text(info, ('jax', 'jaxlib', 'flax'))}",
        **harness.cells_span(cells),
        models=models,
        table="\n".join(harness.md_table(header, [table_row(n, c) for n, c in rows])),
    )


if __name__ == "__main__":
    main()
