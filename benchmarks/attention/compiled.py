"""Attention compiled for the hardware: Dense, Longformer, BigBird and FAVOR+ from 4K to 64K
tokens on a TPU v5e and an H100, compiled on this CPU-only machine.

    JAX_PLATFORMS=cpu python -m benchmarks.attention.compiled [--quick] [--lengths 4096,8192]
        [--targets v5e-4,h100x8] [--kernels dense,longformer,bigbird,favor] [--fresh]
        [--results PATH] [--json PATH]

A cell is one kernel (implementation="auto": the target's Pallas kernel where it has one) at one
length in one mode: "fwd" is the attention, "fwd+bwd" the gradient of the sum of its float32
output with respect to q, k and v. q, k and v are bfloat16 `[1, length, 16, 128]` on one device
of the target; the program is jitted, lowered and compiled deviceless. Each cell records the
compile time, `memory_analysis()` (temporaries + outputs, the cell's memory, against the bfloat16
`[16, length, length]` score matrix that dense attention without a flash kernel materialises),
XLA's `cost_analysis()` where the compiler gives one, whether the program holds the target's
Pallas kernel, and for the sparse kernels whether the blocks the kernel visits are the pattern's
kept blocks.

Cells compile in a worker process per target (libtpu and the CUDA plugin in one process have
crashed XLA's GPU compiler; a worker that dies loses one cell). Every finished cell is written to
the JSON file at once and a later run skips it (`--fresh` recompiles the cells asked for); the
report is made from every cell in the file. `--quick` compiles 1K and 2K tokens for both targets
and writes nothing unless asked.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import SingleDeviceSharding

from benchmarks import harness
from benchmarks.attention import cells
from benchmarks.attention.report import fmt_len
from polyformer import attention as A
from polyformer import targets as target_table
from polyformer.attention import base, pallas_gpu_sparse, splash

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
MARKS = harness.marks("attention-compiled")

BATCH, HEADS, HEAD_DIM = 1, 16, 128
DTYPE = jnp.bfloat16
LENGTHS = (4096, 8192, 16384, 32768, 65536)
QUICK_LENGTHS = (1024, 2048)
TARGETS = ("v5e-4", "h100x8")
FWD, FWD_BWD = "fwd", "fwd+bwd"
MODES = (FWD, FWD_BWD)

DENSE_CAUSAL = "Dense causal"
SPARSE = (cells.LONGFORMER, cells.BIGBIRD)
# The targets: at 64K tokens the sparse kernels compile and need at most 1/50 of the
# memory of the score matrix.
TARGET_LENGTH = 65536
TARGET_FRACTION = 1 / 50

# What a Pallas kernel leaves in the compiled program: a Mosaic custom call on TPU, a Triton call
# on GPU.
PALLAS_MARK = {"tpu": "tpu_custom_call", "cuda": "__gpu$xla.gpu.triton"}

# --kernels' names for the rows.
SHORT_NAMES = {
    "dense": DENSE_CAUSAL,
    "longformer": cells.LONGFORMER,
    "bigbird": cells.BIGBIRD,
    "favor": cells.FAVOR_CAUSAL,
}


def kernels() -> dict[str, tuple[base.Kernel, bool]]:
    """Every row's kernel and whether it is called causal, by the attention benchmark's names."""
    return {
        DENSE_CAUSAL: (A.Dense(), True),
        cells.LONGFORMER: (A.Sparse(cells.longformer(A.patterns)), False),
        cells.BIGBIRD: (A.Sparse(cells.bigbird(A.patterns)), False),
        cells.FAVOR_CAUSAL: (A.Favor(num_features=256), True),
    }


def score_bytes(length: int) -> int:
    """The bfloat16 `[batch, heads, length, length]` score matrix."""
    return BATCH * HEADS * length * length * jnp.dtype(DTYPE).itemsize


def program(kernel: base.Kernel, causal: bool, mode: str):
    """The cell's function of q, k, v: the attention, or its gradient."""

    def forward(q, k, v):
        return kernel(q, k, v, causal=causal)

    if mode == FWD:
        return forward

    def loss(q, k, v):
        return jnp.sum(forward(q, k, v).astype(jnp.float32))

    return jax.grad(loss, argnums=(0, 1, 2))


def gpu_tile(block: int) -> int:
    """The tiles of our GPU block-sparse kernel for Sparse's `block` (flash_gpu.block_sparse:
    `block` rounded down to a power of two in [16, 128])."""
    return min(128, max(16, 1 << (block.bit_length() - 1)))


def blocks(kernel: A.Sparse, platform: str, length: int) -> dict:
    """The blocks the target's sparse kernel visits against the pattern's kept blocks, at the
    kernel's block: splash's forward grid on TPU, the forward block lists of our GPU kernel's
    plan (and their transpose, which its dk/dv pass visits) on GPU."""
    pattern = kernel.pattern
    if platform == "tpu":
        block = splash.block_for(length, kernel.block)
        padded = -(-length // block) * block
        mask = splash.PatternMask(pattern, length, length, (padded, padded), causal=False)
        visited = splash.visited_blocks(mask, block)
        transposed = None
    else:
        block = gpu_tile(kernel.block)
        plan = pallas_gpu_sparse.make_block_plan(
            pattern, length, length, block_q=block, block_k=block, causal=False
        )
        visited = np.zeros(plan.kept.shape, bool)
        rows = np.repeat(np.arange(len(plan.kv_counts)), plan.kv_counts)
        columns = np.concatenate(
            [r[:n] for r, n in zip(plan.kv_blocks, plan.kv_counts, strict=True)]
        )
        visited[rows, columns] = True
        transposed = int(plan.q_counts.sum())
    kept = pattern.block_mask(length, length, block)
    return {
        "block": block,
        "visited": int(visited.sum()),
        "visited_backward_by_key": transposed,
        "kept": int(kept.sum()),
        "grid": int(kept.size),
        "equal": bool(np.array_equal(visited, kept)),
    }


def compile_cell(name: str, target: str, length: int, mode: str) -> dict:
    """The compiled figures of one cell, or {"error": message} when it cannot compile."""
    kernel, causal = kernels()[name]
    platform = target_table.get(target).platform
    start = time.perf_counter()
    try:
        sharding = SingleDeviceSharding(target_table.devices(target)[0])
        x = jax.ShapeDtypeStruct((BATCH, length, HEADS, HEAD_DIM), DTYPE, sharding=sharding)
        lowered = jax.jit(program(kernel, causal, mode)).lower(x, x, x)
        lowered_at = time.perf_counter()
        compiled = lowered.compile()
    except Exception as error:  # a cell that fails is a finding, not the end of the table
        return {"error": f"{type(error).__name__}: {error}".splitlines()[0][:300]}
    end = time.perf_counter()
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    cell = {
        "lower_seconds": lowered_at - start,
        "compile_seconds": end - start,
        "temp_bytes": int(memory.temp_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
        "argument_bytes": int(memory.argument_size_in_bytes),
        "score_bytes": score_bytes(length),
        "flops": cost.get("flops"),
        "bytes_accessed": cost.get("bytes accessed"),
        "pallas": PALLAS_MARK[platform] in compiled.as_text(),
    }
    cell["memory_bytes"] = cell["temp_bytes"] + cell["output_bytes"]
    cell["fraction"] = cell["memory_bytes"] / cell["score_bytes"]
    if isinstance(kernel, A.Sparse) and mode == FWD:  # the same blocks in both modes
        cell["blocks"] = blocks(kernel, platform, length)
    return cell


def key(name: str, target: str, length: int, mode: str) -> str:
    return f"{name} | {target} | {length} | {mode}"


def compile_in_workers(pending: list[tuple[str, str, int, str]]) -> Iterator[tuple[tuple, dict]]:
    """(cell, figures) for every pending cell, in order, compiled in a worker process per target;
    a worker that dies (out of memory, a compiler crash) is that cell's error and is replaced."""
    context = multiprocessing.get_context("spawn")
    for target in dict.fromkeys(cell[1] for cell in pending):
        pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=context)
        try:
            for cell in (c for c in pending if c[1] == target):
                try:
                    figures = pool.submit(compile_cell, *cell).result()
                except concurrent.futures.process.BrokenProcessPool as error:
                    figures = {"error": f"the compiling process died: {error}"}
                    pool.shutdown()
                    pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=context)
                yield cell, figures
        finally:
            pool.shutdown()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1K and 2K tokens")
    default = ",".join(map(str, LENGTHS))
    parser.add_argument("--lengths", help=f"comma-separated (default {default})")
    parser.add_argument("--targets", help=f"comma-separated (default {','.join(TARGETS)})")
    parser.add_argument("--kernels", help=f"comma-separated, of: {', '.join(SHORT_NAMES)}")
    parser.add_argument("--fresh", action="store_true", help="recompile the cells asked for")
    parser.add_argument("--results", type=Path, help="RESULTS.md to update")
    parser.add_argument("--json", type=Path, help="the cells' figures (read, then extended)")
    args = parser.parse_args(argv)
    lengths = QUICK_LENGTHS if args.quick else LENGTHS
    if args.lengths:
        lengths = tuple(int(n) for n in args.lengths.split(","))
    names = args.targets.split(",") if args.targets else TARGETS
    for name in names:
        target_table.get(name)  # an unknown name fails here, not in a worker
    rows = [SHORT_NAMES[k] for k in args.kernels.split(",")] if args.kernels else list(kernels())
    results, json_path = harness.output_paths(args, "attention_compiled.json")

    info = harness.machine_info()
    info["command"] = harness.command_line("benchmarks.attention.compiled", argv)
    start = time.perf_counter()
    measured = harness.measured_cells(json_path)
    grid = [(k, t, n, m) for t in names for n in lengths for k in rows for m in MODES]
    pending = [cell for cell in grid if args.fresh or key(*cell) not in measured]
    for cell, figures in compile_in_workers(pending):
        harness.keep_cell(measured, key(*cell), figures, info, json_path)
        print(f"compiled {key(*cell)}: {summary(figures)}", flush=True)
    harness.publish_cells(report, info, measured, start, json_path, results, MARKS)
    return measured


# ----------------------------------------------------------------------------------------------
# The report


def summary(cell: dict) -> str:
    if "error" in cell:
        return cell["error"]
    return (
        f"{fmt_memory(cell)}, compile {cell['compile_seconds']:.1f} s, Pallas {cell['pallas']}"
        + (f", blocks {fmt_blocks(cell['blocks'])}" if "blocks" in cell else "")
    )


def fmt_memory(cell: dict, digits: int | None = None) -> str:
    """ "1,032 MiB (1/127)": temporaries + outputs, and their fraction of the score matrix, its
    denominator to `digits` decimals (default: one below 10, none above); "3.0x" where the cell
    needs more than the matrix."""
    mib = cell["memory_bytes"] / harness.MIB
    size = f"{mib:,.0f}" if mib >= 10 else f"{mib:.1f}"
    ratio = 1 / cell["fraction"]
    if ratio < 1:
        return f"{size} MiB ({1 / ratio:.1f}x)"
    digits = (1 if ratio < 10 else 0) if digits is None else digits
    return f"{size} MiB (1/{ratio:,.{digits}f})"


def fmt_blocks(found: dict) -> str:
    relation = "=" if found["equal"] else "≠"
    return (
        f"{found['visited']:,} {relation} {found['kept']:,} of {found['grid']:,} "
        f"(block {found['block']})"
    )


def fmt_cost(cell: dict) -> str:
    if cell.get("flops") is None:
        return "-"
    return f"{cell['flops'] / 1e9:.3g} / {cell['bytes_accessed'] / 1e9:.3g}"


def grid_rows(cells_: dict, target: str, lengths: list[int], value) -> list[list[str]]:
    """Rows kernel x mode of `value(cell)` per length; a cell that did not compile says so."""
    rows = []
    for name in kernels():
        for mode in MODES:
            found = [cells_.get(key(name, target, n, mode)) for n in lengths]
            if not any(found):
                continue
            texts = [
                "" if c is None else "did not compile" if "error" in c else value(c) for c in found
            ]
            rows.append([name, mode, *texts])
    return rows


def pallas_text(cells_: dict, target: str, name: str) -> str:
    """Whether the kernel's compiled programs hold the target's Pallas kernel: yes, no, or the
    lengths at which they do."""
    found = {
        int(k.split(" | ")[2]): c["pallas"]
        for k, c in cells_.items()
        if k.startswith(f"{name} | {target} |") and "error" not in c
    }
    if not found:
        return "-"
    if all(found.values()) or not any(found.values()):
        return "yes" if all(found.values()) else "no"
    return "at " + ", ".join(fmt_len(n) for n in sorted(found) if found[n])


def verdicts(cells_: dict, names: list[str]) -> list[list[str]]:
    """(target, measured, verdict) rows: the sparse kernels' memory at 64K, and their visited
    blocks against the pattern's kept blocks at every length."""
    rows = []
    for target in names:
        for name in SPARSE:
            for mode in MODES:
                cell = cells_.get(key(name, target, TARGET_LENGTH, mode))
                label = f"{target}: {name} {mode} at 64K compiles, ≤ 1/50 of the score matrix"
                if cell is None:
                    rows.append([label, "-", "not measured"])
                elif "error" in cell:
                    rows.append([label, f"did not compile: {cell['error']}", "**not met**"])
                else:
                    ok = cell["fraction"] <= TARGET_FRACTION
                    measured = fmt_memory(cell, digits=1)
                    rows.append([label, measured, "met" if ok else "**not met**"])
        for name in SPARSE:
            found = {
                int(k.split(" | ")[2]): c["blocks"]
                for k, c in cells_.items()
                if k.startswith(f"{name} | {target} |") and "blocks" in c
            }
            label = f"{target}: {name}, blocks visited = the pattern's kept blocks"
            if not found:
                rows.append([label, "-", "not measured"])
                continue
            shortest, longest = min(found), max(found)
            unequal = sorted({fmt_len(n) for n, b in found.items() if not b["equal"]})
            span = "-".join(dict.fromkeys(fmt_len(n) for n in (shortest, longest)))
            measured = (
                f"{span}: "
                + ("equal" if not unequal else "differ at " + ", ".join(unequal))
                + f"; {fmt_len(longest)}: {fmt_blocks(found[longest])}"
            )
            rows.append([label, measured, "**not met**" if unequal else "met"])
    return rows


def target_section(cells_: dict, target: str, lengths: list[int]) -> str:
    spec = target_table.get(target)
    columns = [fmt_len(n) for n in lengths]
    memory = grid_rows(cells_, target, lengths, fmt_memory)
    for row in memory:
        row.insert(2, pallas_text(cells_, target, row[0]))
    cost = grid_rows(cells_, target, lengths, fmt_cost)
    if not any(text not in ("-", "did not compile", "") for row in cost for text in row[2:]):
        cost_table = "XLA's cost analysis: not reported by this target's compiler."
    else:
        header = ["Kernel", "mode", *columns]
        cost_table = "XLA's cost analysis, GFLOP / GB accessed:\n\n" + "\n".join(
            harness.md_table(header, cost)
        )
    done = [c for k, c in cells_.items() if f"| {target} |" in k and "error" not in c]
    slowest = max(done, key=lambda c: c["compile_seconds"], default=None)
    slowest_name = next((k for k, c in cells_.items() if c is slowest), "-")
    return harness.render(
        TEMPLATES / "attention_compiled_target.md",
        target=target,
        devices=spec.num_devices,
        memory_gib=f"{spec.hbm_bytes / 2**30:.0f}",
        memory_table="\n".join(
            harness.md_table(["Kernel", "mode", "Pallas kernel", *columns], memory)
        ),
        cost_table=cost_table,
        compile_total=f"{sum(c['compile_seconds'] for c in done):.0f}",
        slowest=slowest_name.replace(" | ", ", "),
        slowest_seconds=f"{slowest['compile_seconds']:.0f}" if slowest else "-",
    ).rstrip("\n")


def report(info: dict, cells_: dict) -> str:
    names = list(dict.fromkeys(k.split(" | ")[1] for k in cells_))
    lengths = sorted({int(k.split(" | ")[2]) for k in cells_})
    errors = [
        f"- {k.replace(' | ', ', ')}: {c['error']}" for k, c in cells_.items() if "error" in c
    ]
    return harness.section(
        TEMPLATES / "attention_compiled.md",
        MARKS,
        command=info["command"],
        machine=f"{info['cpu']}, {info['cores']} cores; "
        f"{harness.versions_text(info, ('jax', 'jaxlib', 'flax'))}",
        **harness.cells_span(cells_),
        batch=BATCH,
        heads=HEADS,
        head_dim=HEAD_DIM,
        targets="\n\n".join(target_section(cells_, t, lengths) for t in names),
        verdicts="\n".join(
            harness.md_table(["Target", "Measured", "Verdict"], verdicts(cells_, names))
        ),
        errors="\n\n" + "\n".join(errors) if errors else "none.",
    )


if __name__ == "__main__":
    main()
