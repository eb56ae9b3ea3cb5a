"""What every benchmark and experiment shares: the machine's facts, the command line, timing in
rotating rounds, medians and verdicts, output paths, report templates and RESULTS.md sections.

A script publishes its report as a section between two HTML comments of RESULTS.md
(`<!-- NAME:start -->` ... `<!-- NAME:end -->`); `marks(NAME)` spells them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import string
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
MIB = 2**20
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "numpy")


# ----------------------------------------------------------------------------------------------
# The machine and the run


def cpu_model() -> tuple[str, str, str]:
    """(model name, family, model) from /proc/cpuinfo; "unknown", "?", "?" where it is absent."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        name = re.search(r"^model name\s*:\s*(.+)$", text, re.M).group(1).strip()
        family = re.search(r"^cpu family\s*:\s*(\d+)", text, re.M).group(1)
        model = re.search(r"^model\s*:\s*(\d+)", text, re.M).group(1)
    except (OSError, AttributeError):
        return "unknown", "?", "?"
    return name, family, model


def memory_total() -> int | None:
    """The machine's memory in bytes (/proc/meminfo's MemTotal), None where unknown."""
    try:
        found = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0))


def versions(libraries: Sequence[str] = LIBRARIES) -> dict[str, str]:
    """Python's version and each library's, "not installed" for those that are not."""
    found = {"python": platform.python_version()}
    for name in libraries:
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = "not installed"
    return found


def machine_info() -> dict:
    """CPU model, cores, memory, library versions, date and load average now."""
    name, family, model = cpu_model()
    memory = memory_total()
    return {
        "cpu": "unknown" if name == "unknown" else f"{name} (family {family}, model {model})",
        "cpu_name": name,
        "cores": cores(),
        "memory_gib": None if memory is None else round(memory / 2**30, 1),
        "versions": versions(),
        "date": utc_now(),
        "load_average_start": os.getloadavg(),
    }


def machine_summary() -> str:
    """One line for an experiment's report: architecture, cores, JAX's platform and version."""
    import jax

    return (
        f"{platform.machine()}, {cores()} cores ({jax.devices()[0].platform}); "
        f"jax {jax.__version__}"
    )


def command_line(
    module: str, argv: Sequence[str] | None = None, python: str = ".venv/bin/python"
) -> str:
    """How to run this again: `python -m module` with `argv` (default: this process's)."""
    return shlex.join([python, "-m", module, *(sys.argv[1:] if argv is None else argv)])


def versions_text(info: dict, libraries: Sequence[str]) -> str:
    """The versions of python and `libraries` in `machine_info()`: `python 3.11.7, jax 0.10.2`."""
    v = info["versions"]
    return ", ".join(f"{name} {v[name]}" for name in ("python", *libraries))


def fmt_load(average: Sequence[float], digits: int = 2) -> str:
    return ", ".join(f"{x:.{digits}f}" for x in average)


def load_note(info: dict, round_loads: list[float]) -> str:
    """The load averages of the run, and what they mean for its figures."""
    text = (
        f"Load average (1, 5, 15 min) at the start {fmt_load(info['load_average_start'])}, at the "
        f"end {fmt_load(info['load_average_end'])}; 1-minute load after each round "
        f"{min(round_loads):.2f}–{max(round_loads):.2f}"
    )
    if max(round_loads) > info["cores"]:
        return text + (
            f": above the {info['cores']} cores, other work shared the machine, so absolute "
            "figures are low and noisy; the ratios pair contestants within the same rounds."
        )
    return text + f": at or below the {info['cores']} cores."


def begin_run(module: str) -> tuple[dict, Callable[[str], None]]:
    """The machine's facts and the command line of `module` for the report, torch at one thread
    per core (the protocol's anchor), and a flushing log, which starts with the machine's load."""
    import torch

    info = machine_info()
    info["command"] = command_line(module)
    torch.set_num_threads(info["cores"])

    def log(message: str) -> None:
        print(message, flush=True)

    log(f"{info['cpu']}, {info['cores']} cores, load {fmt_load(info['load_average_start'])}")
    return info, log


# ----------------------------------------------------------------------------------------------
# Timing


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call; fn must block until its result exists."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def run_rounds(contestants: dict[str, Callable[[], object]], rounds: int, log=print) -> dict:
    """Each round calls every contestant once, the order rotating by one per round; returns
    {name: {"wall": [...], "cpu": [...]}} and "load_1min": the load average after each round."""
    names = list(contestants)
    samples = {name: {"wall": [], "cpu": []} for name in names}
    loads = []
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            wall, cpu = timed(contestants[name])
            samples[name]["wall"].append(wall)
            samples[name]["cpu"].append(cpu)
        loads.append(os.getloadavg()[0])
        walls = ", ".join(f"{n} {samples[n]['wall'][-1]:.3f}s" for n in names)
        log(f"  round {r + 1}/{rounds}: {walls} (load {loads[-1]:.2f})")
    samples["load_1min"] = loads
    return samples


def matmul_peak(size: int = 2048) -> Callable[[], float]:
    """A float32 matmul probe: each call returns the best FLOP/s of three size^3 matmuls (jnp,
    on the default device), the machine's practical peak at that moment."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()

    def probe() -> float:
        best = min(timed(lambda: matmul(a).block_until_ready())[0] for _ in range(3))
        return 2 * size**3 / best

    return probe


def measure(
    contestants: dict[str, Callable[[], object]],
    rounds: int,
    log=print,
    peak: Callable[[], float] | None = None,
    warm_up: bool = True,
) -> tuple[dict, list[float], list[float]]:
    """The protocol: one warm-up call each (unless `warm_up` is False: the caller has called
    them), then `rounds` rotating rounds; with `peak` (a `matmul_peak()` probe), a "matmul peak"
    contestant too. Returns (`run_rounds`' samples of the contestants, the 1-minute load after
    each round, the peak FLOP/s of each round)."""
    contestants = dict(contestants)
    peaks: list[float] = []
    if peak is not None:
        contestants["matmul peak"] = lambda: peaks.append(peak())
    if warm_up:
        for fn in contestants.values():
            fn()
    peaks.clear()
    samples = run_rounds(contestants, rounds, log)
    samples.pop("matmul peak", None)
    return samples, samples.pop("load_1min"), peaks


def median(xs) -> float:
    return statistics.median(xs)


def torch_thread_counts(cores: int) -> list[int]:
    """transformers runs at the machine's core count (the protocol) and, if that is not 1, at 1
    thread (often faster on a loaded machine)."""
    return [cores] if cores == 1 else [cores, 1]


def thread_label(threads: int) -> str:
    """The name of the transformers contestant at `threads` threads."""
    return f"transformers ({threads} thread{'s' * (threads > 1)})"


def contestants(ours: Callable[[], object], theirs: Callable[[], object], cores: int) -> dict:
    """{"ours": ours, "transformers (n threads)": ...}: `theirs` (a torch call) under
    torch.no_grad at each of `torch_thread_counts(cores)`."""
    import torch

    def at(threads: int) -> Callable[[], object]:
        def call():
            torch.set_num_threads(threads)
            with torch.no_grad():
                return theirs()

        return call

    return {"ours": ours, **{thread_label(n): at(n) for n in torch_thread_counts(cores)}}


def summarise(result: dict, target: float) -> dict:
    """Medians of `result["samples"]`, ratios ours / each anchor (wall, CPU, and the median of
    the per-round wall ratios), and the verdict `ratio <= target` against every anchor."""
    samples = result["samples"]
    med = {name: {k: median(v) for k, v in s.items()} for name, s in samples.items()}
    anchors = [n for n in med if n != "ours"]
    best = min(anchors, key=lambda n: med[n]["wall"])
    ratios = {
        n: {
            "wall": med["ours"]["wall"] / med[n]["wall"],
            "cpu": med["ours"]["cpu"] / med[n]["cpu"],
            "paired_wall": median(
                [o / t for o, t in zip(samples["ours"]["wall"], samples[n]["wall"], strict=True)]
            ),
        }
        for n in anchors
    }
    return {
        "median_s": med,
        "ratios": ratios,
        "fastest_anchor": best,
        "target": target,
        "met": {n: ratios[n]["wall"] <= target for n in anchors},
    }


# ----------------------------------------------------------------------------------------------
# Reports


def verdict_row(label: str, name: str, summary: dict) -> str:
    """The targets-table row of anchor `name` in a `summarise()` summary."""
    r = summary["ratios"][name]
    fastest = " (the faster here)" if name == summary["fastest_anchor"] else ""
    verdict = "met" if summary["met"][name] else "**not met**"
    return (
        f"| {label} | {name}{fastest} | {r['wall']:.2f}x ({r['paired_wall']:.2f}x; CPU "
        f"{r['cpu']:.2f}x) | {verdict} |"
    )


def timing_rows(summary: dict, wall_digits: int = 3) -> list[str]:
    """Rows `| name | wall | CPU | cores used | ours / this, wall | ours / this, CPU |` of a
    `summarise()` summary; ours leaves the ratio cells empty."""
    rows = []
    for name, m in summary["median_s"].items():
        r = summary["ratios"].get(name)
        cells = ("", "") if r is None else (f"{r['wall']:.2f}", f"{r['cpu']:.2f}")
        rows.append(
            f"| {name} | {m['wall']:.{wall_digits}f} | {m['cpu']:.{wall_digits}f} | "
            f"{m['cpu'] / m['wall']:.2f} | {cells[0]} | {cells[1]} |"
        )
    return rows


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table's lines."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def header(info: dict, libraries: Sequence[str], round_loads: list[float]) -> dict[str, str]:
    """The fields every benchmark template opens with: command, machine (with the versions of
    python and `libraries`), date, load note and run time."""
    return {
        "command": info["command"],
        "machine": f"{info['cpu']}, {info['cores']} cores; {versions_text(info, libraries)}",
        "date": info["date"],
        "load_note": load_note(info, round_loads),
        "run_time": f"{info['run_time_s']:.0f}",
    }


def section(template: Path, marks: tuple[str, str], **fields: object) -> str:
    """`render(template)` with `$start` and `$end` the section's `marks`."""
    return render(template, start=marks[0], end=marks[1], **fields)


def arguments(description: str, repeats: str) -> argparse.ArgumentParser:
    """A benchmark's command line: --quick, --repeats (help `repeats`), --results, --json."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a short smoke run: fewer rounds")
    parser.add_argument("--repeats", type=int, help=repeats)
    parser.add_argument("--results", type=Path, help="RESULTS.md to update")
    parser.add_argument("--json", type=Path, help="where the measurements go")
    return parser


def finish(info: dict, start: float) -> None:
    """Records the load average at the end and the run time since `start` (perf_counter)."""
    info["load_average_end"] = os.getloadavg()
    info["run_time_s"] = time.perf_counter() - start


def render(template: Path, **fields: object) -> str:
    """The text of `template` (string.Template syntax, `$name` / `${name}`) with every field
    filled; a field the template names but the call does not give is a KeyError."""
    return string.Template(template.read_text()).substitute(fields)


def marks(name: str) -> tuple[str, str]:
    """The comments that open and close section `name` of RESULTS.md."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_section(path: Path, start: str, end: str, section: str) -> None:
    """Replaces the text between the markers start/end of `path`, keeping everything else;
    appends the section when the markers are absent, creates the file when it is."""
    section = section.strip("\n")
    if path.exists():
        text = path.read_text()
        if start in text and end in text:
            head, rest = text.split(start, 1)
            text = head + section + rest.split(end, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
    else:
        text = "# Benchmark results\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def measured_cells(json_path: Path | None) -> dict:
    """The cells of a resumable benchmark's JSON file (`{"machine": ..., "cells": {key: cell}}`),
    {} when there is none."""
    if json_path is None or not json_path.exists():
        return {}
    return json.loads(json_path.read_text())["cells"]


def keep_cell(cells: dict, key: str, cell: dict, info: dict, json_path: Path | None) -> None:
    """Adds `cell`, stamped with the date and the load average, to `cells` as `key`, and writes
    every cell with the machine's facts `info` to `json_path` at once (when given): a run that
    stops keeps what it measured, and the next one skips it."""
    cell["date"], cell["load_average"] = utc_now(), list(os.getloadavg())
    cells[key] = cell
    if json_path:
        json_path.write_text(json.dumps({"machine": info, "cells": cells}, indent=2) + "\n")


def publish_cells(
    report: Callable[[dict, dict], str],
    info: dict,
    cells: dict,
    start: float,
    json_path: Path | None,
    results: Path | None,
    marks: tuple[str, str],
) -> None:
    """Ends a resumable benchmark's run begun at `start` (`finish`) and publishes
    `report(info, cells)` and every cell (`publish`)."""
    finish(info, start)
    publish(report(info, cells), {"machine": info, "cells": cells}, json_path, results, marks)


def cells_span(cells: dict) -> dict[str, str]:
    """A report's `dates` ("first to last") and `max_load` (the highest load average) of the
    stamped cells, "-" where none is."""
    dates = sorted(cell["date"] for cell in cells.values() if "date" in cell)
    loads = [max(cell["load_average"]) for cell in cells.values() if "load_average" in cell]
    return {
        "dates": f"{dates[0]} to {dates[-1]}" if dates else "-",
        "max_load": f"{max(loads):.1f}" if loads else "-",
    }


def output_paths(args, json_name: str) -> tuple[Path | None, Path | None]:
    """(RESULTS.md, the JSON file) a run writes: --results / --json, else RESULTS.md and
    `json_name` in benchmarks/; a --quick run writes neither unless asked."""
    results = args.results or (None if args.quick else RESULTS)
    return results, args.json or (None if args.quick else RESULTS.parent / json_name)


def publish(
    section: str,
    out: dict,
    json_path: Path | None,
    results: Path | None,
    marks: tuple[str, str],
    log: Callable[[str], None] = print,
) -> None:
    """Prints the report section, writes the measurements `out` as JSON to `json_path` and the
    section between `marks` into `results` (RESULTS.md), each where a path is given."""
    print(section)
    if json_path:
        json_path.write_text(json.dumps(out, indent=2) + "\n")
        log(f"wrote {json_path}")
    if results:
        write_section(results, *marks, section)
        log(f"updated {results}")
