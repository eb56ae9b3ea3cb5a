"""Compile a run's train and eval steps for a TPU slice or GPU machine from this host.

`compile_run(config, "v5e-16")` builds the run config's mesh over the target's deviceless
devices (`polyformer.targets`), compiles the exact steps the trainer runs (same model, objective,
optimizer, precision, accumulation, shardings, donation) from abstract inputs, and reports what
the compiled program needs per device against what the device has, with a roofline step time.
No data is read: the batch's shapes come from the data config's `synthetic()`.

    polyformer compile experiments/configs/gpt2_124m.py --target v5e-4 [--json out.json]
    polyformer compile experiments/configs/gpt2_124m.py --target h100x8 --search
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from polyformer import targets
from polyformer.training import config as run_config
from polyformer.training import objectives, sharding, trainer
from polyformer.training.optim import make_optimizer
from polyformer.training.step import init_state, make_eval_step, make_train_step

JSON_KEYS = (
    "target", "devices", "mesh", "fits", "refused", "hbm_bytes_per_device", "bytes_per_device",
    "compile_seconds", "step_flops", "roofline_step_seconds", "mfu_bound", "tokens_per_step",
)  # fmt: skip

# What `--search` tries on a model config that has a `remat` field.
REMAT_POLICIES = ("none", "full", "dots", "minimal")


class MeshMismatchError(ValueError):
    """The run's mesh does not cover the target's devices."""


class BatchSplitError(ValueError):
    """The global batch (or a micro-batch) does not split over the mesh's batch axes."""


class NoDataShapesError(ValueError):
    """The run's data config cannot say what its examples look like without loading them."""


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """Per-device bytes of one compiled step (`Compiled.memory_analysis()`); `aliased` are the
    outputs written in place of donated arguments, `code` the program itself."""

    arguments: int
    outputs: int
    aliased: int
    temp: int
    code: int

    @property
    def total(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temp + self.code


def refused_step(compiled_flops: float, bytes_accessed: float) -> bool:
    """Whether the compiler refused a train step for want of memory, from the XLA counts a
    report holds: a refused step leaves no program, so both are 0."""
    return not compiled_flops and not bytes_accessed


@dataclasses.dataclass(frozen=True)
class CompileReport:
    """What one run needs on one target, per device unless named global.

    `step_flops` is the model's own count for the global batch (what the trainer's MFU divides
    by); `compiled_flops` and `bytes_accessed` are XLA's count for one device's program, which
    includes the optimizer and any recomputation. The roofline step time is the larger of
    compute time (the larger of the two FLOP counts over the peak: XLA's cost model does not see
    into library calls such as cuBLAS's) and memory time (bytes accessed over the bandwidth);
    communication is not modelled. `mfu_bound` is the model FLOP utilisation that time implies.
    When the TPU compiler refuses a train step for want of memory (`refused`), `train.temp` is
    the figure it states, the XLA counts are 0, the eval step is not compiled, and there is no
    roofline: the JSON gives null for it, and the command prints "refused".
    """

    target: str
    devices: int
    mesh: dict[str, int]
    hbm_bytes_per_device: int
    train: StepMemory
    eval: StepMemory | None
    compile_seconds: float
    step_flops: float
    compiled_flops: float
    bytes_accessed: float
    tokens_per_step: int
    largest_buffers: tuple[str, ...]
    remat: str | None = None

    @property
    def eval_peak_bytes(self) -> int:
        """During evaluation the train state stays resident beside the eval step's buffers (0
        when the eval step was not compiled)."""
        if self.eval is None:
            return 0
        return self.train.arguments + self.eval.outputs + self.eval.temp + self.eval.code

    @property
    def fits(self) -> bool:
        return max(self.train.total, self.eval_peak_bytes) <= self.hbm_bytes_per_device

    @property
    def refused(self) -> bool:
        """Whether the compiler refused the train step (`refused_step`)."""
        return refused_step(self.compiled_flops, self.bytes_accessed)

    @property
    def roofline_step_seconds(self) -> float:
        target = targets.get(self.target)
        flops = max(self.compiled_flops, self.step_flops / self.devices)
        return max(flops / target.peak_flops, self.bytes_accessed / target.hbm_bandwidth)

    @property
    def mfu_bound(self) -> float:
        seconds = self.roofline_step_seconds
        peak = targets.get(self.target).peak_flops
        return self.step_flops / (self.devices * peak * seconds) if seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        train = self.train
        return {
            "target": self.target,
            "devices": self.devices,
            "mesh": dict(self.mesh),
            "fits": self.fits,
            "refused": self.refused,
            "hbm_bytes_per_device": self.hbm_bytes_per_device,
            "bytes_per_device": {
                "arguments": train.arguments,
                "outputs": train.outputs,
                "temp": train.temp,
            },
            "compile_seconds": self.compile_seconds,
            "step_flops": self.step_flops,
            "roofline_step_seconds": None if self.refused else self.roofline_step_seconds,
            "mfu_bound": None if self.refused else self.mfu_bound,
            "tokens_per_step": self.tokens_per_step,
        }


def data_shapes(config: run_config.RunConfig):
    """The run's `SyntheticData`: its examples' shapes, what they count for, model overrides."""
    describe = getattr(config.data, "synthetic", None)
    if describe is None:
        raise NoDataShapesError(
            f"data config {type(config.data).__name__} cannot describe its examples without "
            "loading them (it has no synthetic() method); compile a config whose data is a "
            "polyformer.training.data.synthetic.SyntheticData of the same shapes"
        )
    return describe()


def check_batch(config: run_config.RunConfig, mesh: Mesh, target: str) -> None:
    """One clear error when the global batch or a micro-batch does not split over the mesh's
    batch axes, or the batch does not split over the target's hosts."""
    axes = dict(config.mesh.rules).get("batch") or ()
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    width = math.prod(mesh.shape[a] for a in axes)
    steps = config.optimizer.accumulation_steps
    hosts = len({d.process_index for d in mesh.devices.flat})
    if config.batch_size % steps:
        raise BatchSplitError(
            f"batch_size={config.batch_size} does not split into accumulation_steps={steps}"
        )
    micro = config.batch_size // steps
    if micro % width or config.batch_size % hosts:
        raise BatchSplitError(
            f"batch_size={config.batch_size} ({micro} per micro-batch) does not split over the "
            f"{width} devices of mesh axes {'x'.join(axes)} {dict(mesh.shape)} and {hosts} hosts "
            f"of target {target}: use a multiple of {math.lcm(width * steps, hosts)}"
        )


def target_mesh(config: run_config.RunConfig, target: str) -> Mesh:
    """The run's mesh over the target's devices."""
    devices = targets.devices(target)
    try:
        return sharding.make_mesh(config.mesh, devices)
    except ValueError as error:
        raise MeshMismatchError(f"target {target} has {len(devices)} devices: {error}") from None


def _memory(compiled) -> StepMemory:
    m = compiled.memory_analysis()
    return StepMemory(
        m.argument_size_in_bytes,
        m.output_size_in_bytes,
        m.alias_size_in_bytes,
        m.temp_size_in_bytes,
        m.generated_code_size_in_bytes,
    )


def _cost(compiled) -> tuple[float, float]:
    """(FLOPs, bytes accessed) of one device's compiled program. The GPU compiler gives no cost
    analysis without a device, so XLA's generic cost model reads the optimized module instead."""
    cost = compiled.cost_analysis() or {}
    if "flops" not in cost:
        from jax._src import xla_bridge
        from jax._src.lib import xla_client

        module = compiled.runtime_executable().hlo_modules()[0]
        cost = xla_client._xla.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"), module)
    return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


_SIZE = re.compile(
    r"^\s*[\d.]+\w*\(\s*\d+%\);\s*([\d.]+)(B|KiB|MiB|GiB|TiB);\s*\d+;\s*\d+;\s*(.*)$"
)
_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def _human(size: float) -> str:
    unit = max((u for u, n in _UNITS.items() if size >= n), key=_UNITS.get, default="B")
    return f"{size / _UNITS[unit]:.2f} {unit}"


def largest_buffers(dump_dir: str | Path, count: int = 5) -> tuple[str, ...]:
    """The `count` largest allocations of the train step's buffer assignment (XLA's
    memory-usage report in `dump_dir`), as "1.50 GiB: f32[8,1024,50257], ..."."""
    reports = sorted(Path(dump_dir).glob("*train_step*memory-usage-report.txt"))
    if not reports:
        return ()
    sizes = []
    for line in reports[-1].read_text().splitlines():
        match = _SIZE.match(line)
        if match:
            size = float(match[1]) * _UNITS[match[2]]
            shapes = match[3].strip("() ").split(", ")
            more = f", ... ({len(shapes)} values)" if len(shapes) > 3 else ""
            sizes.append((size, f"{_human(size)}: {', '.join(shapes[:3])}{more}"))
    return tuple(text for _, text in sorted(sizes, reverse=True)[:count])


# Without a device to autotune on, XLA:GPU can fail to tile a Triton matmul of a small odd
# width (bf16[36,36] in the tiny test models); cuBLAS, which autotuning may pick anyway, then
# takes those matmuls instead.
_UNTILED = "Couldn't find output tile sizes"


def _compile(jitted, args, dump_dir: str | None = None):
    options = {"xla_dump_to": dump_dir, "xla_dump_hlo_as_text": True} if dump_dir else {}
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    try:
        compiled = lowered.compile(compiler_options=options)
    except jax.errors.JaxRuntimeError as error:
        if _UNTILED not in str(error):
            raise
        options = {**options, "xla_gpu_enable_triton_gemm": False}
        compiled = lowered.compile(compiler_options=options)
    return compiled, time.perf_counter() - start


# The TPU compiler refuses a program whose temporaries exceed the device's memory.
_EXHAUSTED = re.compile(r"RESOURCE_EXHAUSTED: .*HLO temporaries \(([\d.]+)([KMGT]?)\)")


def _device_bytes(tree) -> int:
    """Bytes of one device's shards of abstract arrays that carry their sharding."""
    return sum(
        math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree)
    )


def _refused(error: Exception, state, batch) -> StepMemory:
    """The train step's memory when the compiler refused it for want of memory: temporaries as
    the compiler states them, arguments and (donated) outputs from the shardings."""
    match = _EXHAUSTED.search(str(error))
    if match is None:
        raise error
    temp = float(match[1]) * 2 ** (10 * " KMGT".index(match[2] or " "))
    state_bytes = _device_bytes(state)
    return StepMemory(state_bytes + _device_bytes(batch), state_bytes, state_bytes, int(temp), 0)


def _abstract(tree, shardings):
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings
    )


def compile_run(
    config: run_config.RunConfig, target: str, *, with_eval: bool = True
) -> CompileReport:
    """Compiles `config`'s train and eval steps (the train step alone without `with_eval`) for
    `target` (a name in `targets.TARGETS`).

    Raises UnknownTargetError, MeshMismatchError, BatchSplitError or NoDataShapesError (all
    ValueErrors) before compiling anything when the run cannot be laid out on the target.
    """
    spec = targets.get(target)
    mesh = target_mesh(config, target)
    check_batch(config, mesh, target)
    data = data_shapes(config)
    model_config = trainer.model_config(config, dict(data.model_overrides))
    optimizer = make_optimizer(config.optimizer, config.steps)
    loss_fn = objectives.OBJECTIVES[config.objective_name]
    trained = trainer.trainable(config)

    def build():
        return trainer.build_model(config, model_config)

    model = nnx.eval_shape(build)
    model.train()
    graphdef = nnx.graphdef(model)
    model.eval()
    eval_graphdef = nnx.graphdef(model)
    state = jax.eval_shape(
        lambda: init_state(nnx.state(build()), optimizer, jax.random.key(0), trained)
    )
    state_shardings = sharding.state_shardings(state, optimizer, mesh, config.mesh.rules, trained)
    batch_sharding = sharding.batch_sharding(mesh, config.mesh.rules)
    batch = {
        a.name: jax.ShapeDtypeStruct(
            (config.batch_size, *a.shape), jnp.dtype(a.dtype), sharding=batch_sharding
        )
        for a in data.arrays
    }
    train_step = jax.jit(
        sharding.constrained(
            make_train_step(
                graphdef, loss_fn, optimizer, config.optimizer.accumulation_steps, trained
            ),
            mesh,
            config.mesh.rules,
        ),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, None),
        donate_argnums=0,
    )
    eval_step = jax.jit(
        sharding.constrained(make_eval_step(eval_graphdef, loss_fn), mesh, config.mesh.rules),
        in_shardings=(state_shardings.params, batch_sharding),
    )
    with tempfile.TemporaryDirectory(prefix="polyformer-compile-") as dump:
        abstract_state = _abstract(state, state_shardings)
        start = time.perf_counter()
        try:
            compiled_train, train_seconds = _compile(train_step, (abstract_state, batch), dump)
        except jax.errors.JaxRuntimeError as error:
            compiled_train, train_seconds = None, time.perf_counter() - start
            train = _refused(error, abstract_state, batch)
        else:
            train = _memory(compiled_train)
        buffers = largest_buffers(dump)
    evaluation, eval_seconds = None, 0.0
    if with_eval and compiled_train is not None:
        compiled_eval, eval_seconds = _compile(eval_step, (abstract_state.params, batch))
        evaluation = _memory(compiled_eval)
    example = {a.name: np.zeros((1, *a.shape), a.dtype) for a in data.arrays}
    per_example = trainer.flops_per_example(graphdef, state.params, loss_fn, example, trained)
    flops, bytes_accessed = (0.0, 0.0) if compiled_train is None else _cost(compiled_train)
    remat = getattr(model_config, "remat", None)
    return CompileReport(
        target=target,
        devices=len(mesh.devices.flat),
        mesh=dict(mesh.shape),
        hbm_bytes_per_device=spec.hbm_bytes,
        train=train,
        eval=evaluation,
        compile_seconds=train_seconds + eval_seconds,
        step_flops=per_example * config.batch_size,
        compiled_flops=flops,
        bytes_accessed=bytes_accessed,
        tokens_per_step=config.batch_size * data.tokens_per_example,
        largest_buffers=buffers,
        remat=None if remat is None else str(remat),
    )


def advice(report: CompileReport) -> str:
    """Why a run does not fit and what to change."""
    gib = 2**30
    lines = [
        f"does not fit: the train step needs {report.train.total / gib:.2f} GiB per device "
        f"(arguments {report.train.arguments / gib:.2f}, temporaries "
        f"{report.train.temp / gib:.2f}), evaluation {report.eval_peak_bytes / gib:.2f} GiB; "
        f"a {report.target} device has {report.hbm_bytes_per_device / gib:.2f} GiB.",
    ]
    if report.largest_buffers:
        lines.append("largest buffers of the train step:")
        lines += [f"  {b}" for b in report.largest_buffers]
    state = report.train.arguments
    if state > report.hbm_bytes_per_device / 2:
        lines.append(
            "the parameters and optimizer state alone take most of the memory: shard them over "
            "more devices (--set mesh.fsdp=N, up to the device count)"
        )
    lines.append(
        "the temporaries (activations kept for the backward pass) shrink with a smaller "
        "per-device batch (--set batch_size=N, or optimizer.accumulation_steps=K for the same "
        "global batch) and with rematerialisation (--set model.remat=full, where the model "
        "config has it); --search tries mesh shapes"
        + (" and remat policies" if report.remat is not None else "")
    )
    return "\n".join(lines)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def mesh_candidates(num_devices: int, rules=sharding.DEFAULT_RULES) -> list[sharding.MeshConfig]:
    """(data, fsdp, tensor) shapes over `num_devices`: tensor parallelism within a host's 8
    devices (1, 2, 4 or 8), fsdp over powers of two and the rest, data parallelism for what
    remains."""
    shapes = []
    for tensor in (t for t in (1, 2, 4, 8) if num_devices % t == 0):
        rest = num_devices // tensor
        for fsdp in (d for d in _divisors(rest) if d & (d - 1) == 0 or d == rest):
            shapes.append(sharding.MeshConfig(rest // fsdp, fsdp, tensor, rules))
    return shapes


def search(config: run_config.RunConfig, target: str, *, log=print) -> list[CompileReport]:
    """Compiles the run for every mesh shape (and remat policy, where the model config has a
    `remat` field) whose batch splits; returns the reports, those that fit first, each group by
    roofline step time."""
    has_remat = "remat" in {f.name for f in dataclasses.fields(config.model)}
    policies = REMAT_POLICIES if has_remat else (None,)
    count = len(targets.devices(target))
    reports = []
    for mesh, policy in itertools.product(mesh_candidates(count, config.mesh.rules), policies):
        candidate = dataclasses.replace(config, mesh=mesh)
        if policy is not None:
            candidate = dataclasses.replace(
                candidate, model=dataclasses.replace(config.model, remat=policy)
            )
        try:
            report = compile_run(candidate, target)
        except BatchSplitError:
            continue
        log(f"  {row(report)}")
        reports.append(report)
    return sorted(reports, key=rank_key)


def rank_key(report: CompileReport) -> tuple:
    """`search`'s order: fitting runs first, then runs with a program (not refused), each by
    roofline step time."""
    return (not report.fits, report.refused, report.roofline_step_seconds)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


HEADER = (
    f"{'mesh (data,fsdp,tensor)':>24} {'remat':>7} {'args GiB':>9} {'out GiB':>8} "
    f"{'temp GiB':>9} {'total GiB':>10} {'fits':>5} {'step ms':>9} {'MFU bound':>9}"
)


def row(report: CompileReport) -> str:
    mesh = ",".join(str(v) for v in report.mesh.values())
    return (
        f"{mesh:>24} {report.remat or '-':>7} {_gib(report.train.arguments):>9} "
        f"{_gib(report.train.outputs):>8} {_gib(report.train.temp):>9} "
        f"{_gib(report.train.total):>10} {'yes' if report.fits else 'NO':>5} {_roofline(report)}"
    )


def _roofline(report: CompileReport) -> str:
    """A row's step-time and MFU-bound columns."""
    if report.refused:
        return f"{'refused':>9} {'-':>9}"
    return f"{report.roofline_step_seconds * 1e3:>9.2f} {report.mfu_bound:>9.1%}"


def describe(report: CompileReport) -> str:
    """The report as the command prints it."""
    device = f"{report.devices} devices, {_gib(report.hbm_bytes_per_device)} GiB each"
    train = report.train
    evaluation = report.eval or StepMemory(0, 0, 0, 0, 0)
    if report.refused:
        roofline = ["  roofline step     none: the compiler refused the train step"]
    else:
        roofline = [
            f"  roofline step     {report.roofline_step_seconds * 1e3:.2f} ms",
            f"  MFU bound         {report.mfu_bound:.1%}",
        ]
    lines = [
        f"target {report.target}: {device}; mesh {report.mesh}",
        "  per device        train step   eval step  (GiB)",
        f"  arguments         {_gib(train.arguments):>10}  {_gib(evaluation.arguments):>10}",
        f"  outputs           {_gib(train.outputs):>10}  {_gib(evaluation.outputs):>10}",
        f"  temporaries       {_gib(train.temp):>10}  {_gib(evaluation.temp):>10}",
        f"  total (peak)      {_gib(train.total):>10}  {_gib(report.eval_peak_bytes):>10}",
        f"  fits              {'yes' if report.fits else 'NO'}",
        f"  compile seconds   {report.compile_seconds:.1f} (train and eval)",
        f"  FLOPs per step    {report.step_flops:.4g} (model), {report.compiled_flops:.4g} per "
        f"device (compiled)",
        f"  bytes accessed    {report.bytes_accessed:.4g} per device",
        *roofline,
        f"  tokens per step   {report.tokens_per_step}",
    ]
    return "\n".join(lines)


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`polyformer compile CONFIG --target NAME [--set k=v ...] [--json FILE] [--search]`."""
    parser = commands.add_parser(
        "compile", help="compile a run for a TPU slice or GPU machine; memory, fit, roofline"
    )
    parser.add_argument("config", help="an experiment file, e.g. experiments/configs/gpt2_124m.py")
    parser.add_argument("--target", required=True, help=f"one of {', '.join(targets.TARGETS)}")
    parser.add_argument(
        "--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set mesh.fsdp=4 batch_size=32",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the figures as JSON")
    parser.add_argument(
        "--search", action="store_true", help="try mesh shapes (and remat policies), ranked"
    )
    parser.set_defaults(run=run_command)
    return parser


def run_command(args: argparse.Namespace) -> int:
    """Prints the report (or the search's ranking); 1 when the run (or every candidate) does
    not fit."""
    # Compiling runs nothing: the host's CPU backend is all this process needs, and the GPU
    # plugin only offers deviceless topologies when it is not the default backend. A deviceless
    # compile holds no TPU, so it need not take libtpu's one-process lock either.
    jax.config.update("jax_platforms", "cpu")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    targets.get(args.target)
    config = run_config.apply_overrides(run_config.load(args.config), args.set)
    if args.search:
        print(HEADER)
        reports = search(config, args.target)
        if not reports:
            raise BatchSplitError(f"batch_size={config.batch_size} splits over no mesh shape")
        print(f"\nranked (fitting first, then by roofline step time) on {args.target}:")
        print(HEADER)
        for report in reports:
            print(row(report))
        best = reports[0]
        if args.json:
            args.json.write_text(json.dumps([r.to_json() for r in reports], indent=2) + "\n")
    else:
        best = compile_run(config, args.target)
        print(describe(best))
        if args.json:
            args.json.write_text(json.dumps(best.to_json(), indent=2) + "\n")
    if not best.fits:
        print(advice(best))
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m polyformer.training.compile CONFIG --target NAME ...`: the exit status."""
    root = argparse.ArgumentParser(prog="polyformer")
    add_parser(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(["compile", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"polyformer compile: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
