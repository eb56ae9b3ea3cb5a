"""Where the time of exact attention goes on CPU (`python -m benchmarks.attention --dense-profile`):
exact attention written several ways, and the matmuls alone, timed round-robin with their page
faults, system time and XLA temp memory."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from benchmarks.attention.cells import DPA, HEAD_DIM, TORCH
from benchmarks.attention.report import fmt_len
from benchmarks.attention.runner import inputs_at


def variants(scale: float) -> dict[str, Callable]:
    """Exact attention written several ways, plus the matmuls alone, for `--dense-profile`."""
    from polyformer.attention import dense

    def one_shot(q, k, v):  # dense_attention before query chunking, and what jax dpa does
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
        return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, axis=-1), v)

    def heads_major(q, k, v):  # the same, with q, k, v transposed to [b, h, l, d] once
        q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
        s = jnp.einsum("bhqd,bhkd->bhqk", q, k) * scale
        return jnp.swapaxes(jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s, axis=-1), v), 1, 2)

    def scores_only(q, k, v):  # the first matmul alone, writing the whole [b, h, q, k] matrix
        return jnp.einsum("bhqd,bhkd->bhqk", jnp.swapaxes(q, 1, 2), jnp.swapaxes(k, 1, 2))

    def chunked_matmuls(q, k, v, rows=64):  # both matmuls per 64-row chunk, no softmax: a floor
        q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
        chunks = q.reshape(*q.shape[:2], -1, rows, q.shape[-1])

        def body(qc):
            return jnp.einsum("bhqk,bhkd->bhqd", jnp.einsum("bhqd,bhkd->bhqk", qc, k), v)

        return jax.lax.map(body, jnp.moveaxis(chunks, 2, 0))

    return {
        "one shot, [b, q, h, d] einsums (previous dense_attention)": one_shot,
        "one shot, heads-major layout": heads_major,
        "query chunks (dense_attention now)": lambda q, k, v: dense.dense_attention(
            q, k, v, None, bias=None, scale=scale
        ),
        DPA: lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"),
        "q k^T matmul alone, whole matrix": scores_only,
        "both matmuls alone, 64-row chunks": chunked_matmuls,
    }


def dense_profile(lengths: Sequence[int], rounds: int, threads: int) -> str:
    """Markdown table: time, page faults, system time and XLA temp memory of each variant."""
    import resource

    import torch

    torch.set_num_threads(threads)
    lines = [
        "| L | variant | time ms (min) | minor page faults / call | system s / call | "
        "XLA temp MiB |",
        "|---|---|---|---|---|---|",
    ]
    for length in lengths:
        inputs = inputs_at(length, torch)
        runs = {}
        for name, fn in variants(1.0 / math.sqrt(HEAD_DIM)).items():
            compiled = jax.jit(fn).lower(*inputs["jax"]).compile()
            temp = compiled.memory_analysis().temp_size_in_bytes
            args = inputs["jax"]
            runs[name] = (lambda c=compiled, a=args: jax.block_until_ready(c(*a)), temp)

        def torch_sdpa(a=inputs["torch"]):
            with torch.no_grad():
                return torch.nn.functional.scaled_dot_product_attention(*a)

        runs[TORCH] = (torch_sdpa, None)
        stats = {name: [] for name in runs}
        for call, _ in runs.values():
            call()
        for _ in range(rounds):  # round-robin, as in the benchmark
            for name, (call, _) in runs.items():
                before = resource.getrusage(resource.RUSAGE_SELF)
                t = time.perf_counter()
                call()
                elapsed = time.perf_counter() - t
                after = resource.getrusage(resource.RUSAGE_SELF)
                faults = after.ru_minflt - before.ru_minflt
                stats[name].append((elapsed, faults, after.ru_stime - before.ru_stime))
        for name, (_, temp) in runs.items():
            t, faults, sys_s = (np.median([s[i] for s in stats[name]]) for i in range(3))
            best = min(s[0] for s in stats[name])
            mib = "" if temp is None else f"{temp / harness.MIB:.0f}"
            lines.append(
                f"| {fmt_len(length)} | {name} | {best * 1e3:.0f} (median {t * 1e3:.0f}) | "
                f"{faults:.0f} | {sys_s:.3f} | {mib} |"
            )
    return "\n".join(lines)
