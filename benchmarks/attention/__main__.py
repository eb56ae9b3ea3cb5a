"""The attention benchmark's command line: `python -m benchmarks.attention --help`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import attention, harness
from benchmarks.attention import cells, profile, report, runner
from benchmarks.attention.cells import (
    FULL_BACKWARD_LENGTHS,
    FULL_LENGTHS,
    QUICK_BACKWARD_LENGTHS,
    QUICK_LENGTHS,
)

ROOT = harness.RESULTS.parent.parent
DESCRIPTION = attention.__doc__.split("\n\n")[0]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=DESCRIPTION)
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
    p.add_argument("--threads", type=int, default=harness.cores())
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
        print(profile.dense_profile(lengths, args.k or 5, args.threads))
        return {}
    load_start = os.getloadavg()
    lengths = args.lengths or ",".join(map(str, QUICK_LENGTHS if args.quick else FULL_LENGTHS))
    bwd = args.backward_lengths or ",".join(
        map(str, QUICK_BACKWARD_LENGTHS if args.quick else FULL_BACKWARD_LENGTHS)
    )
    config = runner.Config(
        lengths=tuple(sorted(int(x) for x in lengths.split(","))),
        backward_lengths=tuple(sorted(int(x) for x in bwd.split(","))),
        budget_s=args.budget or (270.0 if args.quick else 1500.0),
        start=start,
        mem_cap_bytes=int(args.mem_cap_gib * 2**30),
        k_max=args.k or (3 if args.quick else 5),
        threads=args.threads,
        quick=args.quick,
    )
    selected = cells.cells(full=not args.quick)
    if args.cells:
        wanted = [x.strip() for x in args.cells.split(",")]
        unknown = [w for w in wanted if w not in {c.name for c in selected}]
        if unknown:
            raise SystemExit(f"unknown cells {unknown}; known: {[c.name for c in selected]}")
        selected = [c for c in selected if c.name in wanted]
    command = harness.command_line("benchmarks.attention", argv, python="python")
    records, info = runner.run(config, selected, log=lambda s: print(s, flush=True))
    info["load_average_start"] = load_start
    info["wall_s"] = time.perf_counter() - start
    names = [c.name for c in selected]
    section = report.report(records, info, config, command, names)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "command": command,
        "machine": info,
        "config": dataclasses.asdict(config),
        "records": [r.as_json() for r in records],
        "targets": [
            dict(zip(("target", "measured", "verdict"), t, strict=True))
            for t in report.targets(report.Table(records), config)
        ],
    }
    (args.out / "attention_benchmark.json").write_text(json.dumps(result, indent=1))
    (args.out / "attention_benchmark.md").write_text(section)
    report.plot(records, names, args.out / "attention_benchmark.png")
    # Only a full run on the standard grid replaces the committed figures by default.
    standard = not args.quick and args.lengths is None and args.cells is None
    results_path = args.results or (harness.RESULTS if standard else None)
    if results_path is not None:
        harness.write_section(results_path, *report.MARKS, section)
    print(section)
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s", flush=True)
    return result


if __name__ == "__main__":
    main()
