"""How the attention benchmark measures a cell: compile, memory pass, warm-up, timed rounds."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import math
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from benchmarks.attention.cells import BATCH, HEAD_DIM, HEADS, TORCH, Built, Cell


@dataclasses.dataclass
class Record:
    """One (cell, length) measurement; status is "ok", "skipped" or "error"."""

    cell: str
    length: int
    status: str = "ok"
    reason: str = ""
    times_s: list[float] = dataclasses.field(default_factory=list)
    warmup_s: float | None = None
    compile_s: float | None = None
    static_temp_bytes: int | None = None
    static_output_bytes: int | None = None
    static_argument_bytes: int | None = None
    rss_peak_bytes: int | None = None
    memory_measure: str = ""
    error_vs_reference: float | None = None
    error_kind: str = ""

    @property
    def median_s(self) -> float | None:
        return float(np.median(self.times_s)) if self.times_s else None

    @property
    def static_bytes(self) -> int | None:
        if self.static_temp_bytes is None:
            return None
        return self.static_temp_bytes + (self.static_output_bytes or 0)

    @property
    def peak_bytes(self) -> int | None:
        """The row's memory figure: XLA static (temp + output) or the RSS high-water mark."""
        return self.static_bytes if self.memory_measure == "xla-static" else self.rss_peak_bytes

    def as_json(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(median_s=self.median_s, static_bytes=self.static_bytes, peak_bytes=self.peak_bytes)
        d["min_s"] = min(self.times_s) if self.times_s else None
        return d


@dataclasses.dataclass
class Config:
    lengths: tuple[int, ...]
    backward_lengths: tuple[int, ...]
    budget_s: float
    start: float  # time.perf_counter() when the run began; the budget counts from it
    mem_cap_bytes: int
    k_max: int
    threads: int
    quick: bool


def rss_reset() -> int | None:
    """Resets the RSS high-water mark; returns the current RSS in bytes (None if unsupported).

    Free heap memory is first handed back to the kernel (malloc_trim), so that a call which
    allocates shows up in RSS instead of silently reusing pages an earlier cell left resident.
    """
    with contextlib.suppress(OSError, AttributeError):  # not glibc: measure without the trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return proc_status("VmRSS")
    except OSError:
        return None


def proc_status(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


class Runner:
    """A compiled cell at one length: `call()` runs it once and blocks until it is done."""

    def __init__(self, cell: Cell, built: Built, inputs: dict):
        self.cell = cell
        self.built = built
        self.compiled = None
        self.args: tuple = ()
        if cell.framework == "torch":
            self.args = inputs["torch"]
        elif cell.backward:
            fn = built.fn

            def loss(q, k, v, ct):
                return jnp.sum(fn(q, k, v).astype(jnp.float32) * ct)

            self.jitted = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
            self.args = inputs["jax"] + (inputs["ct"],)
        else:
            self.jitted = jax.jit(built.fn)
            self.args = inputs["jax"]

    def compile(self, record: Record) -> None:
        if self.cell.framework != "jax":
            return
        t = time.perf_counter()
        self.compiled = self.jitted.lower(*self.args).compile()
        record.compile_s = time.perf_counter() - t
        memory = self.compiled.memory_analysis()
        if memory is not None:
            record.static_temp_bytes = int(memory.temp_size_in_bytes)
            record.static_output_bytes = int(memory.output_size_in_bytes)
            record.static_argument_bytes = int(memory.argument_size_in_bytes)

    def call(self):
        if self.cell.framework == "torch":
            return self.built.fn(*self.args)
        return jax.block_until_ready(self.compiled(*self.args))


def inputs_at(length: int, torch_module) -> dict:
    rng = np.random.default_rng(length)
    shape = (BATCH, length, HEADS, HEAD_DIM)
    q, k, v, ct = (rng.standard_normal(shape, dtype=np.float32) for _ in range(4))
    inputs = {
        "np": (q, k, v),
        "jax": tuple(jnp.asarray(x) for x in (q, k, v)),
        "ct": jnp.asarray(ct),
    }
    if torch_module is not None:
        inputs["torch"] = tuple(
            torch_module.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1, 3)))
            for x in (q, k, v)
        )
    return inputs


def reference(q, k, v, allowed: np.ndarray | None) -> np.ndarray:
    """softmax(q k^T / sqrt(d)) v in float64, `[batch, length, heads, head_dim]`."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    scores -= scores.max(-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v)


def check(record: Record, cell: Cell, built: Built, out, inputs: dict) -> None:
    """Error of one forward output against the float64 reference: max abs for exact kernels,
    relative L2 for approximations."""
    out = np.asarray(out, np.float64)
    if cell.framework == "torch":
        out = out.transpose(0, 2, 1, 3)
    length = out.shape[1]
    ref = reference(*inputs["np"], None if built.mask is None else built.mask(length))
    if built.exact:
        record.error_vs_reference, record.error_kind = float(np.abs(out - ref).max()), "max abs"
    else:
        rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
        record.error_vs_reference, record.error_kind = float(rel), "rel L2"


def predict_time(cell: Cell, length: int, history: dict) -> float | None:
    """A call's time at `length` from the cell's last measured length (None: no history)."""
    last = history.get(cell.name)
    if last is None:
        return None
    prev_length, prev_t = last
    exponent = 2.0 if cell.quadratic else 1.3
    return prev_t * (length / prev_length) ** exponent


def k_for(t_call: float, k_max: int) -> int:
    """Timed calls per cell: about a second of timing each, at least 2, at most k_max."""
    if t_call > 2.0:
        return min(2, k_max)
    return int(max(min(2, k_max), min(k_max, round(1.0 / max(t_call, 1e-4)))))


def run(config: Config, selected: Sequence[Cell], log=print) -> tuple[list[Record], dict]:
    """Measures every selected cell at every length; returns the records and machine info."""
    deadline = config.start + config.budget_s
    records: list[Record] = []
    built: dict[str, Built] = {}
    dead: dict[str, str] = {}  # cell -> reason it is skipped at every longer length too
    history: dict[str, tuple[int, float]] = {}  # cell -> (length, median s) last measured
    compile_s: dict[str, float] = {}  # cell -> last compile time
    torch_module = None
    if any(c.framework == "torch" for c in selected):
        try:
            import torch

            torch.set_num_threads(config.threads)
            torch_module = torch
        except ImportError as e:
            dead[TORCH] = f"unavailable: {e}"
    for cell in selected:
        if cell.name in dead:
            continue
        try:
            built[cell.name] = cell.factory()
        except Exception as e:  # a kernel that does not exist yet is a skipped row, not a crash
            dead[cell.name] = f"unavailable: {type(e).__name__}: {e}"
            log(f"  skip {cell.name}: {dead[cell.name]}")

    for length in config.lengths:
        inputs = inputs_at(length, torch_module)
        active = [c for c in selected if not c.backward or length in config.backward_lengths]

        def order(c: Cell, length=length):
            predicted = predict_time(c, length, history)
            return (predicted is None, predicted or 0.0, c.backward, c.quadratic)

        active.sort(key=order)
        log(f"L={length}: {len(active)} cells, {time.perf_counter() - config.start:.0f} s elapsed")
        running: list = []  # (cell, runner, record), then with k appended
        for cell in active:
            record = Record(cell.name, length, memory_measure=cell.memory_measure)
            records.append(record)
            if cell.name in dead:
                record.status, record.reason = "skipped", dead[cell.name]
                continue
            predicted = predict_time(cell, length, history)
            remaining = deadline - time.perf_counter()
            # compile (as long as last time, 1 s at first) + warm-up + 2 timed calls
            cost = compile_s.get(cell.name, 1.0) + (1 + 2) * (predicted or 0.0)
            if cost > remaining:
                why = f"budget (predicted {cost:.1f} s for the cell, {remaining:.1f} s left)"
                record.status, record.reason = "skipped", why
                dead[cell.name] = why + f" at L={length}"
                continue
            try:
                runner = Runner(cell, built[cell.name], inputs)
                runner.compile(record)
                if cell.framework == "jax" and record.static_bytes is None:
                    record.memory_measure = "rss-hwm"  # memory_analysis unavailable
                predicted_bytes = predict_bytes(cell, length, records)
                if predicted_bytes is not None and predicted_bytes > config.mem_cap_bytes:
                    why = (
                        f"mem-cap (predicted {predicted_bytes / 2**30:.2f} GiB > "
                        f"{config.mem_cap_bytes / 2**30:.0f} GiB)"
                    )
                    record.status, record.reason = "skipped", why
                    dead[cell.name] = why + f" at L={length}"
                    continue
                rss_before = rss_reset()
                out = runner.call()  # the first call: memory pass
                hwm = proc_status("VmHWM")
                if rss_before is not None and hwm is not None:
                    record.rss_peak_bytes = max(0, hwm - rss_before)
                if length == config.lengths[0] and not cell.backward:
                    check(record, cell, built[cell.name], out, inputs)
                del out
            except Exception as e:
                record.status, record.reason = "error", f"{type(e).__name__}: {e}"[:300]
                dead[cell.name] = f"error at L={length}"
                log(f"  error {cell.name} L={length}: {record.reason}")
                continue
            running.append((cell, runner, record))

        # One untimed warm-up call per cell after every memory pass: the malloc_trim of those
        # passes hands freed buffers back to the kernel, and a cell's first call after it pays
        # page faults that its steady state (buffers reused from the heap) does not.
        timed = []
        for cell, runner, record in running:
            t = time.perf_counter()
            runner.call()
            record.warmup_s = time.perf_counter() - t
            timed.append((cell, runner, record, k_for(record.warmup_s, config.k_max)))
        running = timed
        for rep in range(max((k for *_, k in running), default=0)):
            for _, runner, record, k in running:
                if rep >= k:
                    continue
                if rep >= 1 and time.perf_counter() + record.warmup_s > deadline:
                    continue  # out of budget: keep the calls already timed
                t = time.perf_counter()
                runner.call()
                record.times_s.append(time.perf_counter() - t)
        for cell, _, record, _ in running:
            if not record.times_s:
                record.times_s.append(record.warmup_s)
                record.reason = "warm-up time only (budget)"
            history[cell.name] = (length, record.median_s)
            compile_s[cell.name] = record.compile_s or 0.0
            log(
                f"  {cell.name:38s} {record.median_s * 1e3:10.2f} ms  "
                f"mem {fmt_bytes(record.peak_bytes)} ({record.memory_measure})"
            )
    return records, machine_info(config)


def predict_bytes(cell: Cell, length: int, records: list[Record]) -> int | None:
    """Peak memory of a run: XLA's static figure when it is known, else the last measured RSS
    peak of the cell scaled by the length (squared for quadratic cells)."""
    mine = [r for r in records if r.cell == cell.name and r.status == "ok"]
    current = mine[-1] if mine and mine[-1].length == length else None
    if current is not None and current.static_bytes is not None:
        return current.static_bytes
    measured = [r for r in mine if r.length < length and r.rss_peak_bytes]
    if not measured:
        return None
    last = measured[-1]
    return int(last.rss_peak_bytes * (length / last.length) ** (2 if cell.quadratic else 1))


def machine_info(config: Config) -> dict:
    """`harness.machine_info()` with torch's thread count and the load average now (the end)."""
    info = harness.machine_info()
    info.update(torch_threads=config.threads, load_average_end=os.getloadavg())
    return info


def fmt_bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n / harness.MIB:.1f} MiB"
