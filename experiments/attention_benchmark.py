"""Attention kernels on CPU: time and peak memory against sequence length, with anchors.

    python experiments/attention_benchmark.py [--quick] [--out DIR] [--results PATH]

Every cell is a (name, factory) entry in `cells()`: the factory builds an attention function,
and a factory that raises (a kernel that does not exist yet, a missing package) becomes a
skipped row with the reason. Our kernels (Dense, Sparse band / Longformer / BigBird, FAVOR+)
run in the same process as the anchors `jax.nn.dot_product_attention(implementation="xla")`
and torch's `scaled_dot_product_attention` (CPU, no_grad).

Protocol (research/attention.md section 9): B=1, 4 heads, head_dim 64, float32, the same
inputs for every cell at a length. For each length, ascending: every JAX cell is jitted and
compiled separately (compile time and `compiled.memory_analysis()` temp + output bytes, the
static peak memory), cells predicted to exceed the memory cap or the time budget are skipped
(and listed), then a memory pass, one call per cell that records the RSS high-water mark over
it (malloc_trim, /proc/self/clear_refs, VmHWM: the memory measure of torch rows), then one
untimed warm-up call per cell, then k timed calls per cell, round-robin over the cells (cheap
cells first) so that drift on a shared machine hits every kernel alike; the median is reported,
the minimum kept as a noise check.

Outputs in --out (default runs/attention_benchmark): attention_benchmark.json (every
measurement), attention_benchmark.md (the report) and attention_benchmark.png (log-log time
and memory against length). The report also replaces the section between the markers
`<!-- attention-benchmark:start -->` and `<!-- attention-benchmark:end -->` of --results:
benchmarks/RESULTS.md by default for a full run on the standard grid; --quick (what `make demo`
runs), --lengths or --cells leave it alone unless --results is given.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MARK_START = "<!-- attention-benchmark:start -->"
MARK_END = "<!-- attention-benchmark:end -->"
BATCH, HEADS, HEAD_DIM = 1, 4, 64
MIB = 2**20

FULL_LENGTHS = (512, 1024, 2048, 3072, 4096, 8192, 16384)
QUICK_LENGTHS = (512, 1024, 2048, 4096, 8192)
FULL_BACKWARD_LENGTHS = (1024, 4096, 16384)
QUICK_BACKWARD_LENGTHS = (1024, 4096)

# Row names the targets refer to.
DENSE = "Dense"
DPA = "jax dot_product_attention (xla)"
TORCH = "torch SDPA (CPU)"
BAND = "Band ±256"
LONGFORMER = "Longformer (w 512, global [0])"
BIGBIRD = "BigBird (b 64, w 3, g 2, r 3)"
FAVOR = "FAVOR+ m=256"
FAVOR_CAUSAL = "FAVOR+ m=256 causal"
BWD = " fwd+bwd"


# ----------------------------------------------------------------------------------------------
# Cells


@dataclasses.dataclass(frozen=True)
class Built:
    """What a factory returns.

    fn: the attention function; JAX cells take q, k, v `[batch, length, heads, head_dim]`, torch
      cells take them as `[batch, heads, length, head_dim]` torch tensors.
    mask: the boolean `[length, length]` the kernel computes exactly (None: every key), for the
      accuracy check against a float64 reference; exact=False for approximations (FAVOR+),
      whose relative error is reported instead.
    """

    fn: Callable
    mask: Callable[[int], np.ndarray] | None = None
    exact: bool = True


@dataclasses.dataclass(frozen=True)
class Cell:
    """One row: a name and a factory, plus what the harness needs to schedule it.

    backward: time the gradient of sum(out * ct) with respect to q, k, v instead of the forward.
    quadratic: time grows like length^2 (orders cheap cells first, predicts skips).
    """

    name: str
    factory: Callable[[], Built]
    framework: str = "jax"  # "jax" or "torch"
    backward: bool = False
    quadratic: bool = False

    @property
    def memory_measure(self) -> str:
        return "xla-static" if self.framework == "jax" else "rss-hwm"


def _dense() -> Built:
    from polyformer import attention as A

    kernel = A.Dense()
    return Built(lambda q, k, v: kernel(q, k, v))


def _sparse(make_pattern: Callable) -> Callable[[], Built]:
    """Factory for Sparse(pattern), `make_pattern(A.patterns)` building the pattern."""

    def factory() -> Built:
        from polyformer import attention as A

        pattern = make_pattern(A.patterns)
        kernel = A.Sparse(pattern, block=64)
        return Built(lambda q, k, v: kernel(q, k, v), lambda n: pattern.mask(n, n))

    return factory


def _favor(causal: bool) -> Callable[[], Built]:
    def factory() -> Built:
        from polyformer import attention as A

        kernel = A.Favor(num_features=256)
        causal_mask = (lambda n: np.tril(np.ones((n, n), bool))) if causal else None
        return Built(lambda q, k, v: kernel(q, k, v, causal=causal), causal_mask, exact=False)

    return factory


def _bigbird(patterns):
    key = jax.random.key(0)
    return patterns.bigbird(block=64, window=3, global_blocks=2, random_blocks=3, key=key)


def _dpa() -> Built:
    return Built(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"))


def _torch_sdpa() -> Built:
    import torch

    def fn(q, k, v):
        with torch.no_grad():
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    return Built(fn)


def cells(full: bool) -> list[Cell]:
    """Every row of the report, forward cells first, then forward + backward cells."""
    band = _sparse(lambda patterns: patterns.band(256))
    longformer = _sparse(lambda patterns: patterns.longformer(512, [0]))
    bigbird = _sparse(_bigbird)
    forward = [
        Cell(FAVOR, _favor(causal=False)),
        Cell(FAVOR_CAUSAL, _favor(causal=True)),
        Cell(BIGBIRD, bigbird),
        Cell(BAND, band),
        Cell(LONGFORMER, longformer),
        Cell(DENSE, _dense, quadratic=True),
        Cell(TORCH, _torch_sdpa, framework="torch", quadratic=True),
        Cell(DPA, _dpa, quadratic=True),
    ]
    backward = [
        Cell(FAVOR + BWD, _favor(causal=False), backward=True),
        Cell(FAVOR_CAUSAL + BWD, _favor(causal=True), backward=True),
        Cell(DENSE + BWD, _dense, backward=True, quadratic=True),
    ]
    if full:
        backward += [
            Cell(BIGBIRD + BWD, bigbird, backward=True),
            Cell(BAND + BWD, band, backward=True),
            Cell(DPA + BWD, _dpa, backward=True, quadratic=True),
        ]
    return forward + backward


# ----------------------------------------------------------------------------------------------
# Measurement


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


def _rss_reset() -> int | None:
    """Resets the RSS high-water mark; returns the current RSS in bytes (None if unsupported).

    Free heap memory is first handed back to the kernel (malloc_trim), so that a call which
    allocates shows up in RSS instead of silently reusing pages an earlier cell left resident.
    """
    with contextlib.suppress(OSError, AttributeError):  # not glibc: measure without the trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_status("VmRSS")
    except OSError:
        return None


def _proc_status(field: str) -> int | None:
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


def _inputs(length: int, torch_module) -> dict:
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


def _reference(q, k, v, allowed: np.ndarray | None) -> np.ndarray:
    """softmax(q k^T / sqrt(d)) v in float64, `[batch, length, heads, head_dim]`."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    scores -= scores.max(-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v)


def _check(record: Record, cell: Cell, built: Built, out, inputs: dict) -> None:
    """Error of one forward output against the float64 reference: max abs for exact kernels,
    relative L2 for approximations."""
    out = np.asarray(out, np.float64)
    if cell.framework == "torch":
        out = out.transpose(0, 2, 1, 3)
    length = out.shape[1]
    ref = _reference(*inputs["np"], None if built.mask is None else built.mask(length))
    if built.exact:
        record.error_vs_reference, record.error_kind = float(np.abs(out - ref).max()), "max abs"
    else:
        rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
        record.error_vs_reference, record.error_kind = float(rel), "rel L2"


def _predict_time(cell: Cell, length: int, history: dict) -> float | None:
    """A call's time at `length` from the cell's last measured length (None: no history)."""
    last = history.get(cell.name)
    if last is None:
        return None
    prev_length, prev_t = last
    exponent = 2.0 if cell.quadratic else 1.3
    return prev_t * (length / prev_length) ** exponent


def _k_for(t_call: float, k_max: int) -> int:
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
        inputs = _inputs(length, torch_module)
        active = [c for c in selected if not c.backward or length in config.backward_lengths]

        def order(c: Cell, length=length):
            predicted = _predict_time(c, length, history)
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
            predicted = _predict_time(cell, length, history)
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
                predicted_bytes = _predict_bytes(cell, length, records)
                if predicted_bytes is not None and predicted_bytes > config.mem_cap_bytes:
                    why = (
                        f"mem-cap (predicted {predicted_bytes / 2**30:.2f} GiB > "
                        f"{config.mem_cap_bytes / 2**30:.0f} GiB)"
                    )
                    record.status, record.reason = "skipped", why
                    dead[cell.name] = why + f" at L={length}"
                    continue
                rss_before = _rss_reset()
                out = runner.call()  # the first call: memory pass
                hwm = _proc_status("VmHWM")
                if rss_before is not None and hwm is not None:
                    record.rss_peak_bytes = max(0, hwm - rss_before)
                if length == config.lengths[0] and not cell.backward:
                    _check(record, cell, built[cell.name], out, inputs)
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
            timed.append((cell, runner, record, _k_for(record.warmup_s, config.k_max)))
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
                f"mem {_fmt_bytes(record.peak_bytes)} ({record.memory_measure})"
            )
    return records, machine_info(config)


def _predict_bytes(cell: Cell, length: int, records: list[Record]) -> int | None:
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
    cpu, family, model = "unknown", "?", "?"
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"^model name\s*:\s*(.+)$", text, re.M).group(1).strip()
        family = re.search(r"^cpu family\s*:\s*(\d+)", text, re.M).group(1)
        model = re.search(r"^model\s*:\s*(\d+)", text, re.M).group(1)
    except (OSError, AttributeError):
        pass
    versions = {"python": platform.python_version(), "jax": jax.__version__}
    for name in ("jaxlib", "torch", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = "not installed"
    mem = _meminfo_total()
    return {
        "cpu": f"{cpu} (family {family}, model {model})",
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": None if mem is None else round(mem / 2**30, 1),
        "versions": versions,
        "torch_threads": config.threads,
        "load_average_end": os.getloadavg(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _meminfo_total() -> int | None:
    try:
        m = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


# ----------------------------------------------------------------------------------------------
# Report


def _fmt_bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n / MIB:.1f} MiB"


def _fmt_len(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def _fmt_ms(t: float) -> str:
    return f"{t * 1e3:.0f}" if t >= 0.1 else f"{t * 1e3:.2f}" if t < 0.01 else f"{t * 1e3:.1f}"


class Table:
    """Records indexed by (cell, length)."""

    def __init__(self, records: list[Record]):
        self.by = {(r.cell, r.length): r for r in records}

    def ok(self, cell: str, length: int) -> Record | None:
        r = self.by.get((cell, length))
        return r if r is not None and r.status == "ok" and r.times_s else None

    def time(self, cell: str, length: int) -> float | None:
        r = self.ok(cell, length)
        return None if r is None else r.median_s

    def mem(self, cell: str, length: int) -> int | None:
        r = self.ok(cell, length)
        return None if r is None else r.peak_bytes

    def ratio(self, num: str, den: str, length: int, memory: bool = False) -> float | None:
        get = self.mem if memory else self.time
        a, b = get(num, length), get(den, length)
        return None if not a or not b else a / b

    def cell_text(self, cell: str, length: int) -> str:
        r = self.by.get((cell, length))
        if r is None:
            return ""
        if r.status == "skipped":
            return "skip: " + r.reason.split(" (")[0].split(":")[0]
        if r.status == "error":
            return "error"
        return ""


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def _grid_table(table: Table, names, lengths, value: Callable[[str, int], str]) -> list[str]:
    rows = []
    for name in names:
        cells = [value(name, n) or table.cell_text(name, n) for n in lengths]
        if any(cells):
            rows.append([name, *cells])
    return _md_table(["Kernel", *(_fmt_len(n) for n in lengths)], rows)


def growth_span(lengths: Sequence[int]) -> tuple[int, int, float] | None:
    """(low, high, threshold) of the growth target: 4K -> 16K <= 4.6x, or 4K -> 8K <= 2.3x."""
    if 4096 in lengths and 16384 in lengths:
        return 4096, 16384, 4.6
    if 4096 in lengths and 8192 in lengths:
        return 4096, 8192, 2.3
    return None


def targets(table: Table, config: Config) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each acceptance target."""
    out = []

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("met" if ok else "**not met**")

    for name in (BIGBIRD, FAVOR):
        speed = table.ratio(DENSE, name, 8192)
        mem = table.ratio(DENSE, name, 8192, memory=True)
        vs_dpa = table.ratio(DPA, name, 8192, memory=True)
        measured = f"{_x(speed)} faster, {_x(mem)} less memory" + (
            f" ({_x(vs_dpa)} less than jax dpa, which materialises L x L)" if vs_dpa else ""
        )
        ok = None if speed is None or mem is None else speed >= 8 and mem >= 10
        out.append(
            (f"{name} at 8K: >= 8x faster and >= 10x less memory than Dense", measured, verdict(ok))
        )

    span = growth_span(config.lengths)
    for name in (BAND, LONGFORMER, BIGBIRD, FAVOR, FAVOR_CAUSAL):
        if span is None:
            out.append((f"{name} time growth", "lengths do not include 4K and 8K", "not measured"))
            continue
        lo, hi, limit = span
        a, b = table.time(name, lo), table.time(name, hi)
        g = None if a is None or b is None else b / a
        label = f"{name}: time {_fmt_len(lo)} -> {_fmt_len(hi)} grows <= {limit}x"
        if hi == 8192:
            label += " (quick mode: 4K -> 8K instead of 4K -> 16K)"
        out.append((label, _x(g), verdict(None if g is None else g <= limit)))

    ratios = {n: table.ratio(DENSE, DPA, n) for n in config.lengths}
    measured = [(n, r) for n, r in ratios.items() if r is not None]
    text = ", ".join(f"{_fmt_len(n)} {r:.2f}" for n, r in measured) or "n/a"
    missing = [_fmt_len(n) for n, r in ratios.items() if r is None]
    if missing:
        text += f" (no ratio at {', '.join(missing)}: a cell was skipped)"
    ok = None if not measured else all(r <= 1.05 for _, r in measured)
    out.append(
        (
            "Dense never slower than jax dot_product_attention (time ratio <= 1.05, noise)",
            text,
            verdict(ok),
        )
    )

    parts = [
        f"{_fmt_len(n)} {table.ratio(DENSE, TORCH, n):.2f}"
        for n in (4096, 8192)
        if table.ratio(DENSE, TORCH, n)
    ]
    out.append(
        (
            "torch SDPA vs our Dense at 4K-8K (time Dense / torch)",
            ", ".join(parts) or "n/a",
            "reported",
        )
    )

    mem = [
        (n, table.ratio(FAVOR_CAUSAL + BWD, FAVOR + BWD, n, memory=True))
        for n in config.backward_lengths
    ]
    mem = [(n, r) for n, r in mem if r is not None]
    text = ", ".join(f"{_fmt_len(n)} {r:.2f}" for n, r in mem) or "n/a"
    ok = None if not mem else all(r <= 1.2 for _, r in mem)
    out.append(("FAVOR+ causal fwd+bwd peak memory <= 1.2x non-causal", text, verdict(ok)))
    return out


def _x(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.1f}x" if r >= 10 else f"{r:.2f}x"


def report(records: list[Record], info: dict, config: Config, command: str, names) -> str:
    table = Table(records)
    fwd = [n for n in names if not n.endswith(BWD)]
    bwd = [n for n in names if n.endswith(BWD)]
    lengths = config.lengths
    v = info["versions"]
    lines = [
        MARK_START,
        "## Attention kernels on CPU: time and memory against length",
        "",
        f"Command: `{command}`  ",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; python "
        f"{v['python']}, jax {v['jax']}, jaxlib {v['jaxlib']}, torch {v['torch']} "
        f"({info['torch_threads']} threads), numpy {v['numpy']}.  ",
        f"Date: {info['date']}. Load average (1, 5, 15 min) at the start "
        f"{_load(info['load_average_start'])}, at the end {_load(info['load_average_end'])}: "
        "a load above the core count means other work shared the machine and the times are "
        "noisy.  ",
        f"Run time: {info['wall_s']:.0f} s ({'quick' if config.quick else 'full'} mode, budget "
        f"{config.budget_s:.0f} s, memory cap {config.mem_cap_bytes / 2**30:.0f} GiB).",
        "",
        f"Batch {BATCH}, {HEADS} heads, head_dim {HEAD_DIM}, float32, the same random inputs for "
        "every cell. Each JAX cell is jitted and compiled separately; then one memory-pass call, "
        "one warm-up call and the median of k timed calls (2 <= k <= "
        f"{config.k_max}) with block_until_ready, round-robin over the cells. Memory: "
        "`xla-static` = `compiled.memory_analysis()` temp + output bytes (JAX rows); `rss-hwm` = "
        "RSS high-water mark over one call, reset through /proc/self/clear_refs (torch rows).",
        "",
        "### Forward time",
        "",
        "Milliseconds; in brackets the speed relative to our Dense, t_Dense / t_kernel (higher is "
        "faster), as in the Long Range Arena table.",
        "",
    ]

    def time_cell(name, n):
        t, r = table.time(name, n), table.ratio(DENSE, name, n)
        return "" if t is None else _fmt_ms(t) + (f" ({r:.1f}x)" if r else "")

    def mem_cell(name, n, ref=DENSE):
        m, r = table.mem(name, n), table.ratio(name, ref, n, memory=True)
        return "" if m is None else f"{m / MIB:.1f}" + (f" ({r:.2f})" if r else "")

    lines += _grid_table(table, fwd, lengths, time_cell)
    lines += [
        "",
        "### Peak memory",
        "",
        "MiB; in brackets kernel / our Dense (lower is better). Measure per row: "
        + ", ".join(f"{n}: {_measure(records, n)}" for n in fwd)
        + ".",
        "",
    ]
    lines += _grid_table(table, fwd, lengths, mem_cell)

    def rss_cell(name, n):
        r = table.ok(name, n)
        return "" if r is None or r.rss_peak_bytes is None else f"{r.rss_peak_bytes / MIB:.1f}"

    lines += [
        "",
        "Cross-check, every row by the same measure: RSS high-water mark over one call (MiB; "
        "free heap pages are trimmed first, so allocations show). XLA's static figure leaves out "
        "buffers that a fused library call (XLA:CPU's YNNPACK fusions) allocates by itself.",
        "",
    ]
    lines += _grid_table(table, names, lengths, rss_cell)
    if bwd:
        bl = config.backward_lengths
        lines += [
            "",
            "### Forward + backward",
            "",
            "Gradient of sum(out * ct) with respect to q, k, v. Milliseconds, in brackets the "
            f"speed relative to {DENSE}{BWD}; then memory (MiB, `xla-static`), in brackets "
            f"relative to {DENSE}{BWD}.",
            "",
        ]

        def bwd_time(name, n):
            t, r = table.time(name, n), table.ratio(DENSE + BWD, name, n)
            return "" if t is None else _fmt_ms(t) + (f" ({r:.1f}x)" if r else "")

        lines += _grid_table(table, bwd, bl, bwd_time)
        lines += [""]
        lines += _grid_table(table, bwd, bl, lambda n, L: mem_cell(n, L, DENSE + BWD))

    lines += [
        "",
        "### Ours / anchor",
        "",
        "Ratios at each length; time below 1 means ours is faster.",
        "",
    ]
    pairs = [
        ("Dense / jax dpa, time", DENSE, DPA, False),
        ("Dense / jax dpa, memory", DENSE, DPA, True),
        ("Dense / torch SDPA, time", DENSE, TORCH, False),
        ("Band ±256 / jax dpa, time", BAND, DPA, False),
    ]
    if DPA + BWD in names:
        pairs.append(("Dense / jax dpa fwd+bwd, time", DENSE + BWD, DPA + BWD, False))
        pairs.append(("Dense / jax dpa fwd+bwd, memory", DENSE + BWD, DPA + BWD, True))
    rows = []
    for label, a, b, memory in pairs:
        vals = [table.ratio(a, b, n, memory) for n in lengths]
        if any(x is not None for x in vals):
            rows.append([label, *("" if x is None else f"{x:.2f}" for x in vals)])
    lines += _md_table(["Ratio", *(_fmt_len(n) for n in lengths)], rows)

    span = growth_span(lengths)
    if span:
        lo, hi, _ = span
        lines += [
            "",
            f"### Time growth {_fmt_len(lo)} -> {_fmt_len(hi)}",
            "",
            f"t({_fmt_len(hi)}) / t({_fmt_len(lo)}) and the log-log slope "
            "(1 = linear, 2 = quadratic).",
            "",
        ]
        rows = []
        for name in names:
            a, b = table.time(name, lo), table.time(name, hi)
            if a and b:
                rows.append([name, f"{b / a:.2f}x", f"{math.log(b / a) / math.log(hi / lo):.2f}"])
        lines += _md_table(["Kernel", "growth", "slope"], rows)

    lines += [
        "",
        "### Targets",
        "",
        "Our Dense computes query chunks (polyformer/attention/dense.py), so its memory grows "
        "like L, not L^2: memory targets against it compare O(L) with O(L). The ratio against "
        "jax dot_product_attention, which materialises the L x L scores as LRA's Transformer "
        "did, is given in brackets.",
        "",
    ]
    lines += _md_table(["Target", "Measured", "Verdict"], targets(table, config))

    checked = [r for r in records if r.error_vs_reference is not None]
    if checked:
        lines += [
            "",
            f"### Accuracy at L={_fmt_len(lengths[0])}",
            "",
            "Against a float64 numpy reference with the kernel's own mask: max abs error for exact "
            "kernels, relative L2 error for FAVOR+ (an approximation of softmax attention).",
            "",
        ]
        rows = [[r.cell, r.error_kind, f"{r.error_vs_reference:.2e}"] for r in checked]
        lines += _md_table(["Kernel", "error", "value"], rows)

    compiled = [r for r in records if r.compile_s is not None]
    if compiled:
        lines += ["", "### Compile time (s)", ""]
        lines += _grid_table(
            table,
            [n for n in names if any(r.cell == n for r in compiled)],
            lengths,
            lambda n, L: (
                ""
                if table.by.get((n, L)) is None or table.by[(n, L)].compile_s is None
                else f"{table.by[(n, L)].compile_s:.2f}"
            ),
        )

    skipped = [r for r in records if r.status != "ok"] + [
        r for r in records if r.status == "ok" and r.reason
    ]
    lines += ["", "### Skipped cells", ""]
    if skipped:
        rows = [[r.cell, _fmt_len(r.length), r.status, r.reason.replace("|", "/")] for r in skipped]
        lines += _md_table(["Cell", "L", "status", "reason"], rows)
    else:
        lines += ["None: every cell ran at every length."]
    lines += ["", MARK_END]
    return "\n".join(lines) + "\n"


def _load(avg) -> str:
    return ", ".join(f"{x:.2f}" for x in avg)


def _measure(records: list[Record], name: str) -> str:
    kinds = {r.memory_measure for r in records if r.cell == name and r.status == "ok"}
    return "/".join(sorted(kinds)) or "n/a"


def write_results(path: Path, section: str) -> None:
    """Replaces the marked section of `path` (appends it, or creates the file, if absent)."""
    if path.exists():
        text = path.read_text()
        if MARK_START in text and MARK_END in text:
            head, rest = text.split(MARK_START, 1)
            tail = rest.split(MARK_END, 1)[1]
            text = head + section.rstrip("\n") + tail
        else:
            text = text.rstrip("\n") + "\n\n" + section
    else:
        text = "# Benchmark results\n\nEvery figure with the command that made it.\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def plot(records: list[Record], names, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = Table(records)
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 5.5))
    lengths = sorted({r.length for r in records})
    kernels = list(dict.fromkeys(n.removesuffix(BWD) for n in names))
    colors = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(kernels)}
    for name in names:
        pts = [(n, table.time(name, n), table.mem(name, n)) for n in lengths]
        pts = [p for p in pts if p[1] is not None]
        if not pts:
            continue
        base = name.removesuffix(BWD)
        # forward solid, forward + backward dashed, anchors dotted; one colour per kernel
        style = "--" if name.endswith(BWD) else ":" if base in (DPA, TORCH) else "-"
        kw = dict(color=colors[base], marker="o" if style != "--" else "s", label=name)
        ax_t.plot([p[0] for p in pts], [p[1] for p in pts], style, **kw)
        mem = [(p[0], p[2]) for p in pts if p[2]]
        if mem:
            ax_m.plot([m[0] for m in mem], [m[1] / MIB for m in mem], style, **kw)
    for ax, label in ((ax_t, "time per call (s)"), (ax_m, "peak memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.set_title("Attention time (B=1, 4 heads, d=64, fp32, CPU)")
    ax_m.set_title("Peak memory (xla-static for JAX, rss-hwm for torch)")
    ax_t.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Dense profile: where the time of exact attention goes on CPU (--dense-profile)


def _profile_variants(scale: float) -> dict[str, Callable]:
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
        inputs = _inputs(length, torch)
        runs = {}
        for name, fn in _profile_variants(1.0 / math.sqrt(HEAD_DIM)).items():
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
            mib = "" if temp is None else f"{temp / MIB:.0f}"
            lines.append(
                f"| {_fmt_len(length)} | {name} | {best * 1e3:.0f} (median {t * 1e3:.0f}) | "
                f"{faults:.0f} | {sys_s:.3f} | {mib} |"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Entry point


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="L up to 8K, k=2, fewer fwd+bwd cells")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "attention_benchmark")
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="markdown file whose marked section is replaced (default: benchmarks/RESULTS.md for "
        "a full run on the standard grid, none otherwise)",
    )
    p.add_argument("--lengths", type=str, default=None, help="comma-separated lengths")
    p.add_argument("--backward-lengths", type=str, default=None)
    p.add_argument("--budget", type=float, default=None, help="seconds for the whole run")
    p.add_argument("--mem-cap-gib", type=float, default=6.0)
    p.add_argument("--k", type=int, default=None, help="most timed calls per cell")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--cells", type=str, default=None, help="comma-separated cell names to run")
    p.add_argument(
        "--dense-profile",
        action="store_true",
        help="instead of the benchmark, print where dense attention's time goes (--lengths, --k)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    start = time.perf_counter()
    args = parse_args(argv)
    if args.dense_profile:
        lengths = [int(x) for x in (args.lengths or "1024,4096,8192").split(",")]
        print(dense_profile(lengths, args.k or 5, args.threads))
        return {}
    load_start = os.getloadavg()
    lengths = args.lengths or ",".join(map(str, QUICK_LENGTHS if args.quick else FULL_LENGTHS))
    bwd = args.backward_lengths or ",".join(
        map(str, QUICK_BACKWARD_LENGTHS if args.quick else FULL_BACKWARD_LENGTHS)
    )
    config = Config(
        lengths=tuple(sorted(int(x) for x in lengths.split(","))),
        backward_lengths=tuple(sorted(int(x) for x in bwd.split(","))),
        budget_s=args.budget or (270.0 if args.quick else 1500.0),
        start=start,
        mem_cap_bytes=int(args.mem_cap_gib * 2**30),
        k_max=args.k or (3 if args.quick else 5),
        threads=args.threads,
        quick=args.quick,
    )
    selected = cells(full=not args.quick)
    if args.cells:
        wanted = [x.strip() for x in args.cells.split(",")]
        unknown = [w for w in wanted if w not in {c.name for c in selected}]
        if unknown:
            raise SystemExit(f"unknown cells {unknown}; known: {[c.name for c in selected]}")
        selected = [c for c in selected if c.name in wanted]
    command = " ".join(
        ["python experiments/attention_benchmark.py", *(argv if argv is not None else sys.argv[1:])]
    )
    records, info = run(config, selected, log=lambda s: print(s, flush=True))
    info["load_average_start"] = load_start
    info["wall_s"] = time.perf_counter() - start
    names = [c.name for c in selected]
    section = report(records, info, config, command, names)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "command": command,
        "machine": info,
        "config": dataclasses.asdict(config),
        "records": [r.as_json() for r in records],
        "targets": [
            dict(zip(("target", "measured", "verdict"), t, strict=True))
            for t in targets(Table(records), config)
        ],
    }
    (args.out / "attention_benchmark.json").write_text(json.dumps(result, indent=1))
    (args.out / "attention_benchmark.md").write_text(section)
    plot(records, names, args.out / "attention_benchmark.png")
    # Only a full run on the standard grid replaces the committed figures by default.
    standard = not args.quick and args.lengths is None and args.cells is None
    results_path = args.results or (ROOT / "benchmarks" / "RESULTS.md" if standard else None)
    if results_path is not None:
        write_results(results_path, section)
    print(section)
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s", flush=True)
    return result


if __name__ == "__main__":
    main()
