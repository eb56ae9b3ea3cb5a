"""Scaling laws (Kaplan et al. 2020; the chapter's figure 11-1): loss against model size and
against compute, for a ladder of GPTs trained on the Python standard library's source.

    python -m experiments.scaling_laws [--quick | --full] [--out DIR] [--results PATH]
                                       [--set KEY=VALUE ...] [--fresh] [--dry-run]

Protocol. Every size of the ladder is the run config experiments/configs/scaling_laws.py with
its depth and width replaced, Kaplan et al.'s learning rate for its size,
LR(N) = 0.003239 - 0.0001395 ln N, and the ladder's steps and batch shape: the same tokens, the
same schedule shape and the same order of batches for every size. `--set` overrides apply to
every size last (e.g. `--set precision=bfloat16`). N is the non-embedding parameter count
(token and position embeddings excluded, as in the paper); compute is C = 6 N D with D the
tokens seen, which leaves out the embeddings, the output projection and attention's own
FLOPs, as the paper's C does. Each run evaluates on the same first `eval_batches` batches of
the validation split every `eval_every` steps.

Fits, all by least squares on log loss:
  L(N) = (N_c / N)^alpha_N       on the final evaluation loss of each size;
  L(C) = (C_c / C)^alpha_C       on the compute-efficient frontier: the lower envelope of every
                                 size's evaluation curve against C, read on a log-spaced grid
                                 of C, leaving out each run's first `--frontier-from` of steps
                                 (warm-up and the initial transient, which is no power law);
and each again with an irreducible loss, L = E + (X_c / X)^alpha. 95% confidence intervals come
from a bootstrap (resampling sizes, or frontier points, with replacement; 1000 resamples).

Outputs in --out (default runs/scaling_laws): runs/<size>/ (each run's metrics.jsonl,
TensorBoard files, loss.png, final checkpoint, rung.json), scaling_laws.json (every curve and
fit), loss_vs_compute.png, loss_vs_params.png and scaling_laws.md. --results PATH also writes
the report to PATH with the figures beside it in PATH's stem folder. A size whose rung.json
matches its config is not trained again (--fresh retrains); an unfinished one resumes from its
last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from benchmarks import harness
from experiments.fits import PowerLaw, fit_all, frontier, local_exponents

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BASE_CONFIG = HERE / "configs" / "scaling_laws.py"
TEMPLATE = HERE / "templates" / "scaling_laws.md"
# What the report quotes of the protocol as it is.
PROTOCOL_FIELDS = (
    "steps", "batch_size", "seq_len", "warmup_steps", "dropout", "precision", "vocab_size",
    "eval_every",
)  # fmt: skip

# Kaplan et al. (2020), eqs. 1.1 and 1.3 (WebText2, GPT-2's 50257-token BPE, converged models):
# L(N) = (N_c / N)^0.076 with N_c = 8.8e13; L(C_min) = (C_c / C_min)^0.050 with C_c = 3.1e8
# PF-days (1 PF-day = 8.64e19 FLOPs).
KAPLAN = {"alpha_N": 0.076, "N_c": 8.8e13, "alpha_C": 0.050, "C_c": 3.1e8 * 8.64e19}


# ----------------------------------------------------------------------------------------------
# The ladder


@dataclasses.dataclass(frozen=True)
class Size:
    n_layer: int
    n_embd: int
    n_head: int

    @property
    def name(self) -> str:
        return f"L{self.n_layer}_d{self.n_embd}"


def non_embedding_params(n_layer: int, n_embd: int, n_inner: int | None = None) -> int:
    """GPT-2's parameters less the token and position embeddings (the output projection is tied
    to the token embedding): per block two layer norms, c_attn, attn c_proj, c_fc and mlp c_proj
    with their biases, 12 d^2 + 13 d for n_inner = 4d; plus the final layer norm."""
    d, inner = n_embd, 4 * n_embd if n_inner is None else n_inner
    block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * inner + inner) + (inner * d + d)
    return n_layer * block + 2 * d


@dataclasses.dataclass(frozen=True)
class Ladder:
    """The sizes and the shared training budget: every size sees the same `steps * batch_size *
    seq_len` tokens."""

    sizes: tuple[Size, ...]
    steps: int
    batch_size: int
    seq_len: int
    eval_every: int
    eval_batches: int
    warmup_steps: int
    checkpoint_every: int

    @classmethod
    def quick(cls) -> Ladder:
        """Six sizes, 12.8k to 447k non-embedding parameters (35x), 300 steps of 16 x 64 tokens
        (307k tokens, 9% of an epoch): 10 minutes on 2 CPU cores shared with other jobs
        (load average ~8), about 5 when they are idle."""
        sizes = (Size(1, 32, 2), Size(2, 32, 2), Size(2, 48, 2), Size(2, 64, 4), Size(3, 80, 4))
        return cls(
            sizes=(*sizes, Size(4, 96, 4)),
            steps=300,
            batch_size=16,
            seq_len=64,
            eval_every=20,
            eval_batches=8,
            warmup_steps=15,
            checkpoint_every=300,
        )

    @classmethod
    def full(cls) -> Ladder:
        """Seven sizes, 12.8k to 10.6M non-embedding parameters (830x), 1500 steps of 32 x 256
        tokens (12.3M tokens, 3.7 epochs of the corpus): for an accelerator."""
        sizes = (Size(1, 32, 2), Size(2, 48, 2), Size(2, 96, 4), Size(3, 128, 4))
        return cls(
            sizes=(*sizes, Size(4, 192, 6), Size(6, 256, 8), Size(6, 384, 8)),
            steps=1500,
            batch_size=32,
            seq_len=256,
            eval_every=25,
            eval_batches=16,
            warmup_steps=100,
            checkpoint_every=500,
        )


def kaplan_learning_rate(n: int) -> float:
    """Kaplan et al. (2020) eq. D.1: the learning rate that worked for N non-embedding params."""
    return 0.003239 - 0.0001395 * math.log(n)


def rung_config(base, ladder: Ladder, size: Size, out: Path, overrides: Sequence[str] = ()):
    """The RunConfig of one size: `base` resized, with the ladder's budget; `overrides` last."""
    from polyformer.training import config as run_config

    n = non_embedding_params(size.n_layer, size.n_embd)
    model = dataclasses.replace(
        base.model,
        n_layer=size.n_layer,
        n_embd=size.n_embd,
        n_head=size.n_head,
        n_positions=ladder.seq_len,
    )
    config = dataclasses.replace(
        base,
        model=model,
        data=dataclasses.replace(base.data, seq_len=ladder.seq_len),
        optimizer=dataclasses.replace(
            base.optimizer,
            learning_rate=round(kaplan_learning_rate(n), 6),
            warmup_steps=ladder.warmup_steps,
        ),
        steps=ladder.steps,
        batch_size=ladder.batch_size,
        eval_every=ladder.eval_every,
        eval_batches=ladder.eval_batches,
        checkpoint_every=ladder.checkpoint_every,
        keep_checkpoints=1,
        log_every=ladder.eval_every,
        out_dir=str(out / "runs" / size.name),
    )
    return run_config.apply_overrides(config, list(overrides))


def _describe(config) -> str:
    """The run config as stable text, to tell whether a finished run is still the one asked for."""
    return json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)


def _curves(metrics_path: Path) -> dict[str, list[tuple[int, float]]]:
    """Loss against step per split; a step logged twice (a resumed run) keeps its last record."""
    from polyformer.training import metrics

    by_split: dict[str, dict[int, float]] = {}
    for record in metrics.read_metrics(metrics_path):
        if "loss" in record:
            by_split.setdefault(record["split"], {})[record["step"]] = record["loss"]
    return {split: sorted(points.items()) for split, points in by_split.items()}


def train_rung(config, data, size: Size, fresh: bool, log: Callable[[str], None]) -> dict:
    """Trains one size (or reads back the finished run) and returns its record."""
    import jax

    from polyformer.training import trainer

    out_dir = Path(config.out_dir)
    record_path, config_path = out_dir / "rung.json", out_dir / "config.json"
    described = _describe(config)
    if not fresh and record_path.exists():
        record = json.loads(record_path.read_text())
        if record.get("config") == described:
            log(f"{size.name}: finished before, read back from {record_path}")
            return record
    if fresh or not config_path.exists() or config_path.read_text() != described:
        shutil.rmtree(out_dir, ignore_errors=True)  # another config's run: start it over
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(described)

    start = time.perf_counter()
    job = trainer.Trainer(config, data)
    n = trainer.non_embedding_params(job.abstract_state.params)
    total = sum(math.prod(x.shape) for x in jax.tree.leaves(job.abstract_state.params))
    resumed = job.checkpointer.latest_step()
    log(
        f"{size.name}: N = {n:,} non-embedding ({total:,} in all), lr "
        f"{config.optimizer.learning_rate:.2e}"
        + (f", resuming at step {resumed}" if resumed else "")
    )
    result = job.run(progress=False)
    wall = time.perf_counter() - start
    tokens_per_step = config.batch_size * config.data.seq_len
    curves = _curves(result.metrics_path)
    evals = [
        {
            "step": s,
            "tokens": s * tokens_per_step,
            "compute": 6.0 * n * s * tokens_per_step,
            "loss": v,
        }
        for s, v in curves.get("eval", [])
    ]
    record = {
        "name": size.name,
        "n_layer": size.n_layer,
        "n_embd": size.n_embd,
        "n_head": size.n_head,
        "non_embedding_params": n,
        "params": total,
        "learning_rate": config.optimizer.learning_rate,
        "steps": config.steps,
        "batch_size": config.batch_size,
        "seq_len": config.data.seq_len,
        "tokens_per_step": tokens_per_step,
        "tokens": config.steps * tokens_per_step,
        "final_eval_loss": evals[-1]["loss"],
        "final_train_loss": result.train_loss,
        "wall_s": wall,
        "eval": evals,
        "train": [{"step": s, "loss": v} for s, v in curves.get("train", [])],
        "out_dir": str(out_dir),
        "config": described,
    }
    record_path.write_text(json.dumps(record, indent=1))
    log(f"{size.name}: eval loss {record['final_eval_loss']:.4f} after {wall:.0f} s")
    return record


# ----------------------------------------------------------------------------------------------
# Fits over the runs


def analyse(records: list[dict], frontier_from: float, points: int, resamples: int, seed: int):
    """The L(N) and L(C) fits and the frontier, as JSON."""
    n = np.array([r["non_embedding_params"] for r in records], np.float64)
    final = np.array([r["final_eval_loss"] for r in records], np.float64)
    curves = []
    for r in records:
        kept = [e for e in r["eval"] if e["step"] >= frontier_from * r["steps"]]
        curves.append((np.array([e["compute"] for e in kept]), np.array([e["loss"] for e in kept])))
    compute, loss, owner = frontier(curves, points)
    return {
        "loss_vs_params": fit_all(n, final, resamples, seed),
        "loss_vs_compute": fit_all(compute, loss, resamples, seed),
        "local_alpha_N": local_exponents(n, final),
        "local_alpha_C": local_exponents(compute, loss),
        "frontier": [
            {"compute": float(c), "loss": float(v), "size": records[i]["name"]}
            for c, v, i in zip(compute, loss, owner, strict=True)
        ],
        "frontier_from": frontier_from,
        "frontier_grid": points,
        "frontier_sizes": list(dict.fromkeys(records[i]["name"] for i in owner)),
    }


# ----------------------------------------------------------------------------------------------
# Figures and report


def _log_axes(ax) -> None:
    from matplotlib.ticker import LogLocator, ScalarFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.grid(alpha=0.3, which="both")


def _law_text(fit: dict, symbol: str) -> str:
    if "error" in fit:
        return "n/a"
    lo, hi = fit["alpha_ci"]
    base = f"({symbol}_c/{symbol})^{fit['alpha']:.3f}"
    offset = f"{fit['irreducible']:.2f} + " if fit["irreducible"] else ""
    return f"L = {offset}{base}  [{lo:.3f}, {hi:.3f}], R² {fit['r2']:.3f}"


def plot(records: list[dict], fits: dict, out: Path) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    sizes = np.array([r["non_embedding_params"] for r in records], np.float64)
    norm = colors.LogNorm(sizes.min(), sizes.max())
    cmap = plt.get_cmap("viridis")

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for r in records:
        ax.plot(
            [e["compute"] for e in r["eval"]],
            [e["loss"] for e in r["eval"]],
            color=cmap(norm(r["non_embedding_params"])),
            lw=1.2,
            alpha=0.85,
        )
    compute_fits = fits["loss_vs_compute"]
    compute = np.array([p["compute"] for p in fits["frontier"]])
    ax.plot(compute, [p["loss"] for p in fits["frontier"]], "k.", ms=5, label="frontier (envelope)")
    span = np.geomspace(compute.min(), compute.max(), 100)
    for key, style in (("power_law", "r--"), ("with_irreducible", "m:")):
        if "error" not in compute_fits[key]:
            law = PowerLaw(*(compute_fits[key][f] for f in ("alpha", "scale", "irreducible", "r2")))
            ax.plot(span, law(span), style, lw=2, label=_law_text(compute_fits[key], "C"))
    bar = fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax)
    bar.set_label("non-embedding parameters N")
    _log_axes(ax)
    ax.set_xlabel("compute C = 6 N D (FLOPs)")
    ax.set_ylabel("validation loss (nats / token)")
    ax.set_title("Loss against compute, every size; the frontier and its fit")
    ax.legend(fontsize=8)
    fig.tight_layout()
    compute_png = out / "loss_vs_compute.png"
    fig.savefig(compute_png, dpi=130)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.5, 5))
    final = [r["final_eval_loss"] for r in records]
    ax.scatter(sizes, final, c=[cmap(norm(s)) for s in sizes], s=40, zorder=3, label="final loss")
    span = np.geomspace(sizes.min() / 1.5, sizes.max() * 1.5, 100)
    for key, style in (("power_law", "r--"), ("with_irreducible", "m:")):
        fit = fits["loss_vs_params"][key]
        if "error" not in fit:
            law = PowerLaw(*(fit[f] for f in ("alpha", "scale", "irreducible", "r2")))
            ax.plot(span, law(span), style, lw=2, label=_law_text(fit, "N"))
    _log_axes(ax)
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("validation loss after the last step (nats / token)")
    ax.set_title(f"Loss against size, {records[0]['tokens']:,} tokens each")
    ax.legend(fontsize=8)
    fig.tight_layout()
    params_png = out / "loss_vs_params.png"
    fig.savefig(params_png, dpi=130)
    plt.close(fig)
    return compute_png, params_png


def machine_info() -> dict:
    """The machine as the report describes it: CPU model, cores, devices, python and jax."""
    import jax

    info = harness.machine_info()
    return {
        "cpu": info["cpu_name"],
        "cores": info["cores"],
        "devices": [str(d.device_kind) for d in jax.devices()],
        "python": info["versions"]["python"],
        "jax": info["versions"]["jax"],
        "date": info["date"],
    }


def _ci(fit: dict, key: str = "alpha_ci", digits: int = 3) -> str:
    lo, hi = fit[key]
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def _fit_rows(name: str, fits: dict, symbol: str, kaplan: float) -> list[str]:
    rows = []
    for key, label in (("power_law", "pure"), ("with_irreducible", "with E")):
        fit = fits[key]
        if "error" in fit:
            rows.append(f"| {name} | {label} | {fit['error']} | | | | | |")
            continue
        e = (
            f"{fit['irreducible']:.3f} {_ci(fit, 'irreducible_ci', 2)}"
            if key != "power_law"
            else "0"
        )
        rows.append(
            f"| {name} | {label} | **{fit['alpha']:.3f}** | {_ci(fit)} | {fit['scale']:.3g} | {e} "
            f"| {fit['r2']:.4f} | {kaplan} |"
        )
    return rows


def _offset_sentence(fit: dict, runs: list[dict]) -> str:
    if "error" in fit:
        return f"no fit ({fit['error']})"
    if fit["irreducible"] < 1e-3:
        return (
            f"E sits at its bound 0 (bootstrap {_ci(fit, 'irreducible_ci', 2)}): these points do "
            "not pin down a floor, and the fit is the pure law"
        )
    lowest = min(r["final_eval_loss"] for r in runs)
    where = (
        " (near its bound, the lowest loss measured)" if fit["irreducible"] > 0.97 * lowest else ""
    )
    return (
        f"E = {fit['irreducible']:.2f} {_ci(fit, 'irreducible_ci', 2)} nats{where} and "
        f"alpha = {fit['alpha']:.3f} {_ci(fit)}, R² {fit['r2']:.3f}"
    )


def late_fall(run: dict) -> float:
    """How much the evaluation loss fell over the last quarter of a run's steps (nats)."""
    evals = run["eval"]
    quarter = [e for e in evals if e["step"] <= 0.75 * run["steps"]] or evals[:1]
    return quarter[-1]["loss"] - evals[-1]["loss"]


def report(result: dict, figures: str) -> str:
    """The markdown summary; `figures` is the PNGs' folder relative to the markdown file."""
    runs, fits, info = result["runs"], result["fits"], result["machine"]
    protocol = result["protocol"]
    n = [r["non_embedding_params"] for r in runs]
    tokens = runs[0]["tokens"]
    pn, pc = fits["loss_vs_params"]["power_law"], fits["loss_vs_compute"]["power_law"]
    on, oc = fits["loss_vs_params"]["with_irreducible"], fits["loss_vs_compute"]["with_irreducible"]
    epoch = result["train_tokens"]
    near_n = abs(pn["alpha"] - KAPLAN["alpha_N"]) < 0.2 * KAPLAN["alpha_N"]
    near_c = abs(pc["alpha"] - KAPLAN["alpha_C"]) < 0.2 * KAPLAN["alpha_C"]
    falls = [late_fall(r) for r in runs]
    run_rows = [
        f"| {r['name']} | {r['n_layer']} | {r['n_embd']} | {r['n_head']} | "
        f"{r['non_embedding_params']:,} | {r['params']:,} | {r['learning_rate']:.2e} | "
        f"{r['tokens'] / r['non_embedding_params']:.1f} | {r['final_eval_loss']:.4f} | "
        f"{fall:.3f} | {r['wall_s']:.0f} |"
        for r, fall in zip(runs, falls, strict=True)
    ]
    fit_rows = [
        *_fit_rows("L(N) = E + (N_c/N)^alpha_N", fits["loss_vs_params"], "N", KAPLAN["alpha_N"]),
        *_fit_rows("L(C) = E + (C_c/C)^alpha_C", fits["loss_vs_compute"], "C", KAPLAN["alpha_C"]),
    ]
    refit = result.get("refit")
    frontier_points = fits["frontier"]
    return harness.render(
        TEMPLATE,
        command=result["command"],
        **{k: info[k] for k in ("cpu", "cores", "python", "jax", "date")},
        devices=", ".join(info["devices"]),
        load_start=f"{result['load_average_start'][0]:.1f}",
        load_end=f"{result['load_average_end'][0]:.1f}",
        wall_min=f"{result['wall_s'] / 60:.1f}",
        train_min=f"{sum(r['wall_s'] for r in runs) / 60:.1f}",
        refit=""
        if refit is None
        else f"  \nFits and figures recomputed from its runs by `{refit['command']}` "
        f"({refit['date']}; no training).",
        sizes=len(runs),
        n_min=f"{min(n):,}",
        n_max=f"{max(n):,}",
        n_ratio=f"{max(n) / min(n):.0f}",
        **{k: protocol[k] for k in PROTOCOL_FIELDS},
        tokens=f"{tokens:,}",
        epoch_share=f"{tokens / epoch:.1%}",
        epoch=f"{epoch:,}",
        end_lr=f"{protocol['end_lr_ratio']:.0%}",
        eval_tokens=f"{protocol['eval_batches'] * protocol['batch_size'] * protocol['seq_len']:,}",
        run_rows="\n".join(run_rows),
        resamples=pn["resamples"],
        fit_rows="\n".join(fit_rows),
        grid=fits["frontier_grid"],
        dominated=fits["frontier_grid"] - len(frontier_points),
        points=len(frontier_points),
        c_low=f"{frontier_points[0]['compute']:.2e}",
        c_high=f"{frontier_points[-1]['compute']:.2e}",
        frontier_from=f"{fits['frontier_from']:.0%}",
        frontier_sizes=", ".join(fits["frontier_sizes"]),
        figures=figures,
        alpha_n=f"{pn['alpha']:.3f}",
        alpha_n_ci=_ci(pn),
        alpha_c=f"{pc['alpha']:.3f}",
        alpha_c_ci=_ci(pc),
        tokens_per_n_min=f"{tokens / max(n):.1f}",
        tokens_per_n_max=f"{tokens / min(n):.0f}",
        falling=sum(f > 0 for f in falls),
        fall_min=f"{min(falls):.3f}",
        fall_max=f"{max(falls):.3f}",
        offset_n=_offset_sentence(on, runs),
        offset_c=_offset_sentence(oc, runs),
        local_n=" and ".join(f"{p['alpha']:.3f}" for p in fits["local_alpha_N"]),
        local_c=" and ".join(f"{p['alpha']:.3f}" for p in fits["local_alpha_C"]),
        coincidence=f", so alpha_{'N' if near_n else 'C'} landing near Kaplan's value is a "
        "coincidence of the range fitted, not an agreement."
        if near_n or near_c
        else ".",
        data_min=f"{5e3 * min(n) ** 0.74:,.0f}",
        data_max=f"{5e3 * max(n) ** 0.74:,.0f}",
        data_limited=sum(5e3 * x**0.74 > epoch for x in n),
        decades=f"{math.log10(frontier_points[-1]['compute'] / frontier_points[0]['compute']):.1f}",
    )


# ----------------------------------------------------------------------------------------------
# Entry point


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the CPU ladder (the default)")
    mode.add_argument("--full", action="store_true", help="bigger sizes, longer runs")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "scaling_laws")
    p.add_argument("--results", type=Path, default=None, help="also write the report here")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--frontier-from", type=float, default=0.1, help="fraction of steps left out")
    p.add_argument("--frontier-points", type=int, default=40)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="of the bootstrap")
    p.add_argument("--fresh", action="store_true", help="retrain sizes that finished before")
    p.add_argument("--dry-run", action="store_true", help="print the ladder and stop")
    p.add_argument(
        "--refit",
        action="store_true",
        help="no training: redo the fits, figures and report from --out's scaling_laws.json",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    start, load_start = time.perf_counter(), os.getloadavg()
    args = parse_args(argv)
    command = harness.command_line("experiments.scaling_laws", argv, python="python")
    if args.refit:
        result = json.loads((args.out / "scaling_laws.json").read_text())
        result["refit"] = {"command": command, "date": machine_info()["date"]}
        return write_outputs(result, args, print)

    from polyformer.training import config as run_config

    ladder = Ladder.full() if args.full else Ladder.quick()
    base = run_config.load(BASE_CONFIG)
    configs = [rung_config(base, ladder, s, args.out, args.set) for s in ladder.sizes]
    print(f"{'size':>8} {'N':>10} {'lr':>9} {'tokens':>12}  C = 6ND (FLOPs)")
    for size, c in zip(ladder.sizes, configs, strict=True):
        n = non_embedding_params(c.model.n_layer, c.model.n_embd, c.model.n_inner)
        tokens = c.steps * c.batch_size * c.data.seq_len
        print(
            f"{size.name:>8} {n:>10,} {c.optimizer.learning_rate:>9.2e} {tokens:>12,}  "
            f"{6 * n * tokens:.2e}"
        )
    if args.dry_run:
        return {}

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {message}", flush=True)

    data = configs[0].data.load()
    records = [
        train_rung(c, data, s, args.fresh, log) for s, c in zip(ladder.sizes, configs, strict=True)
    ]
    result = {
        "command": command,
        "mode": "full" if args.full else "quick",
        "machine": machine_info(),
        "ladder": dataclasses.asdict(ladder),
        # What every size ran, after --set: the report describes these, not the ladder's defaults.
        "protocol": {
            "steps": configs[0].steps,
            "batch_size": configs[0].batch_size,
            "seq_len": configs[0].data.seq_len,
            "eval_every": configs[0].eval_every,
            "eval_batches": configs[0].eval_batches,
            "warmup_steps": configs[0].optimizer.warmup_steps,
            "end_lr_ratio": configs[0].optimizer.end_lr_ratio,
            "vocab_size": data.vocab_size,
            "precision": configs[0].precision,
            "dropout": configs[0].model.resid_pdrop,
        },
        "train_tokens": int(len(data.corpus.tokens["train"])),
        "validation_tokens": int(len(data.corpus.tokens["validation"])),
        "kaplan": KAPLAN,
        "runs": records,
        "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()),
    }
    return write_outputs(result, args, log, start)


def write_outputs(
    result: dict, args: argparse.Namespace, log: Callable[[str], None], start: float | None = None
) -> dict:
    """Fits `result["runs"]`, then writes the JSON, the figures and the report(s)."""
    records = result["runs"]
    fits = analyse(records, args.frontier_from, args.frontier_points, args.resamples, args.seed)
    result["fits"] = fits
    if start is not None:
        result["wall_s"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling_laws.json").write_text(json.dumps(result, indent=1))
    plot(records, fits, args.out)
    (args.out / "scaling_laws.md").write_text(report(result, "."))
    if args.results is not None:
        figures = args.results.parent / args.results.stem
        figures.mkdir(parents=True, exist_ok=True)
        for name in ("loss_vs_compute.png", "loss_vs_params.png"):
            shutil.copyfile(args.out / name, figures / name)
        args.results.write_text(report(result, args.results.stem))
    for law in ("loss_vs_params", "loss_vs_compute"):
        for form, fit in fits[law].items():
            if "error" not in fit:
                log(f"{law} ({form}): alpha {fit['alpha']:.4f} {_ci(fit)}, R² {fit['r2']:.4f}")
    log(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
