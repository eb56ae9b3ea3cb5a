"""What the attention benchmark reports: tables, targets and verdicts, the markdown and the plot."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import harness
from benchmarks.attention.cells import (
    BAND,
    BATCH,
    BIGBIRD,
    BWD,
    DENSE,
    DPA,
    FAVOR,
    FAVOR_CAUSAL,
    HEAD_DIM,
    HEADS,
    LONGFORMER,
    TORCH,
)
from benchmarks.attention.runner import Config, Record

MARKS = harness.marks("attention-benchmark")
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
MIB = harness.MIB


def fmt_len(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def fmt_ms(t: float) -> str:
    return f"{t * 1e3:.0f}" if t >= 0.1 else f"{t * 1e3:.2f}" if t < 0.01 else f"{t * 1e3:.1f}"


def fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.1f}x" if r >= 10 else f"{r:.2f}x"


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


def grid_table(table: Table, names, lengths, value: Callable[[str, int], str]) -> list[str]:
    """A kernel x length table of `value`, a skipped or failed cell saying so; kernels with
    nothing to show are left out."""
    rows = []
    for name in names:
        cells = [value(name, n) or table.cell_text(name, n) for n in lengths]
        if any(cells):
            rows.append([name, *cells])
    return harness.md_table(["Kernel", *(fmt_len(n) for n in lengths)], rows)


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
        measured = f"{fmt_ratio(speed)} faster, {fmt_ratio(mem)} less memory" + (
            f" ({fmt_ratio(vs_dpa)} less than jax dpa, which materialises L x L)" if vs_dpa else ""
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
        label = f"{name}: time {fmt_len(lo)} -> {fmt_len(hi)} grows <= {limit}x"
        if hi == 8192:
            label += " (quick mode: 4K -> 8K instead of 4K -> 16K)"
        out.append((label, fmt_ratio(g), verdict(None if g is None else g <= limit)))

    ratios = {n: table.ratio(DENSE, DPA, n) for n in config.lengths}
    measured = [(n, r) for n, r in ratios.items() if r is not None]
    text = ", ".join(f"{fmt_len(n)} {r:.2f}" for n, r in measured) or "n/a"
    missing = [fmt_len(n) for n, r in ratios.items() if r is None]
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
        f"{fmt_len(n)} {table.ratio(DENSE, TORCH, n):.2f}"
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
    text = ", ".join(f"{fmt_len(n)} {r:.2f}" for n, r in mem) or "n/a"
    ok = None if not mem else all(r <= 1.2 for _, r in mem)
    out.append(("FAVOR+ causal fwd+bwd peak memory <= 1.2x non-causal", text, verdict(ok)))
    return out


def measures(records: list[Record], name: str) -> str:
    """The memory measure(s) of row `name`: xla-static, rss-hwm or both."""
    kinds = {r.memory_measure for r in records if r.cell == name and r.status == "ok"}
    return "/".join(sorted(kinds)) or "n/a"


def _part(name: str, **fields: object) -> str:
    """An optional section of the report: a blank line, then template attention_<name>.md."""
    return "\n\n" + harness.render(TEMPLATES / f"attention_{name}.md", **fields).rstrip("\n")


def _lines(lines: list[str]) -> str:
    return "\n".join(lines)


def report(records: list[Record], info: dict, config: Config, command: str, names) -> str:
    table = Table(records)
    fwd = [n for n in names if not n.endswith(BWD)]
    bwd = [n for n in names if n.endswith(BWD)]
    lengths = config.lengths

    def time_cell(name, n, ref=DENSE):
        t, r = table.time(name, n), table.ratio(ref, name, n)
        return "" if t is None else fmt_ms(t) + (f" ({r:.1f}x)" if r else "")

    def mem_cell(name, n, ref=DENSE):
        m, r = table.mem(name, n), table.ratio(name, ref, n, memory=True)
        return "" if m is None else f"{m / MIB:.1f}" + (f" ({r:.2f})" if r else "")

    def rss_cell(name, n):
        r = table.ok(name, n)
        return "" if r is None or r.rss_peak_bytes is None else f"{r.rss_peak_bytes / MIB:.1f}"

    backward = ""
    if bwd:
        bl = config.backward_lengths
        backward = _part(
            "backward",
            reference=DENSE + BWD,
            time=_lines(grid_table(table, bwd, bl, lambda n, L: time_cell(n, L, DENSE + BWD))),
            memory=_lines(grid_table(table, bwd, bl, lambda n, L: mem_cell(n, L, DENSE + BWD))),
        )

    pairs = [
        ("Dense / jax dpa, time", DENSE, DPA, False),
        ("Dense / jax dpa, memory", DENSE, DPA, True),
        ("Dense / torch SDPA, time", DENSE, TORCH, False),
        ("Band ±256 / jax dpa, time", BAND, DPA, False),
    ]
    if DPA + BWD in names:
        pairs.append(("Dense / jax dpa fwd+bwd, time", DENSE + BWD, DPA + BWD, False))
        pairs.append(("Dense / jax dpa fwd+bwd, memory", DENSE + BWD, DPA + BWD, True))
    ratio_rows = []
    for label, a, b, memory in pairs:
        vals = [table.ratio(a, b, n, memory) for n in lengths]
        if any(x is not None for x in vals):
            ratio_rows.append([label, *("" if x is None else f"{x:.2f}" for x in vals)])

    growth = ""
    span = growth_span(lengths)
    if span:
        lo, hi, _ = span
        rows = []
        for name in names:
            a, b = table.time(name, lo), table.time(name, hi)
            if a and b:
                rows.append([name, f"{b / a:.2f}x", f"{math.log(b / a) / math.log(hi / lo):.2f}"])
        growth = _part(
            "growth",
            low=fmt_len(lo),
            high=fmt_len(hi),
            table=_lines(harness.md_table(["Kernel", "growth", "slope"], rows)),
        )

    accuracy = ""
    checked = [r for r in records if r.error_vs_reference is not None]
    if checked:
        rows = [[r.cell, r.error_kind, f"{r.error_vs_reference:.2e}"] for r in checked]
        accuracy = _part(
            "accuracy",
            length=fmt_len(lengths[0]),
            table=_lines(harness.md_table(["Kernel", "error", "value"], rows)),
        )

    compile_times = ""
    compiled = [r for r in records if r.compile_s is not None]
    if compiled:

        def compile_cell(n, L):
            r = table.by.get((n, L))
            return "" if r is None or r.compile_s is None else f"{r.compile_s:.2f}"

        rows = [n for n in names if any(r.cell == n for r in compiled)]
        compile_times = _part(
            "compile", table=_lines(grid_table(table, rows, lengths, compile_cell))
        )

    skipped = [r for r in records if r.status != "ok"] + [
        r for r in records if r.status == "ok" and r.reason
    ]
    if skipped:
        rows = [[r.cell, fmt_len(r.length), r.status, r.reason.replace("|", "/")] for r in skipped]
        skipped_text = _lines(harness.md_table(["Cell", "L", "status", "reason"], rows))
    else:
        skipped_text = "None: every cell ran at every length."

    v = info["versions"]
    return harness.section(
        TEMPLATES / "attention.md",
        MARKS,
        command=command,
        cpu=info["cpu"],
        cores=info["cores"],
        memory_gib=info["memory_gib"],
        python=v["python"],
        jax=v["jax"],
        jaxlib=v["jaxlib"],
        torch=v["torch"],
        torch_threads=info["torch_threads"],
        numpy=v["numpy"],
        date=info["date"],
        load_start=harness.fmt_load(info["load_average_start"]),
        load_end=harness.fmt_load(info["load_average_end"]),
        run_time=f"{info['wall_s']:.0f}",
        mode="quick" if config.quick else "full",
        budget=f"{config.budget_s:.0f}",
        mem_cap=f"{config.mem_cap_bytes / 2**30:.0f}",
        batch=BATCH,
        heads=HEADS,
        head_dim=HEAD_DIM,
        k_max=config.k_max,
        forward_time=_lines(grid_table(table, fwd, lengths, time_cell)),
        measures=", ".join(f"{n}: {measures(records, n)}" for n in fwd),
        forward_memory=_lines(grid_table(table, fwd, lengths, mem_cell)),
        rss=_lines(grid_table(table, names, lengths, rss_cell)),
        backward=backward,
        ratios=_lines(harness.md_table(["Ratio", *(fmt_len(n) for n in lengths)], ratio_rows)),
        growth=growth,
        targets=_lines(harness.md_table(["Target", "Measured", "Verdict"], targets(table, config))),
        accuracy=accuracy,
        compile_times=compile_times,
        skipped=skipped_text,
    )


def plot(records: list[Record], names, path: Path) -> None:
    """Log-log time and peak memory against length, one colour per kernel: forward solid,
    forward + backward dashed, anchors dotted."""
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
