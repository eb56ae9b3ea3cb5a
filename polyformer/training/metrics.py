"""Metrics out of a run: JSONL and TensorBoard event files, model FLOP utilisation, a loss plot."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

# Dense bfloat16 peak FLOP/s per chip, from the vendors' data sheets, by jax `device_kind` prefix.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def measured_peak_flops(size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a float32 matmul on the default device: the practical peak on a CPU, where no
    data sheet applies. Takes about a second."""
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        matmul(a).block_until_ready()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def peak_flops_per_device() -> tuple[float, str]:
    """(peak FLOP/s of one device, where the figure comes from)."""
    kind = jax.devices()[0].device_kind
    for prefix, flops in PEAK_FLOPS.items():
        if kind.startswith(prefix):
            return flops, f"{kind} data sheet (bfloat16)"
    return measured_peak_flops(), f"{kind}: measured float32 matmul"


def transformer_train_flops_per_token(
    non_embedding_params: int, n_layer: int, n_ctx: int, d_model: int
) -> float:
    """Kaplan et al. (2020): 6N for the weights, forward and backward, plus the attention
    scores, 6 * n_layer * n_ctx * d_model."""
    return 6 * non_embedding_params + 6 * n_layer * n_ctx * d_model


def _summary_writer_class() -> type:
    """tensorboardX's SummaryWriter, imported without importing torch. tensorboardX imports
    torch where it is installed, only to accept torch tensors (this module writes floats), and
    that import is more than a second of every `polyformer train` start on a machine with torch
    (benchmarks/RESULTS.md). While sys.modules maps "torch" to None, `import torch` raises
    ImportError, which tensorboardX takes for torch's absence; the entry goes afterwards, so a
    later `import torch` works."""
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    """Appends one JSON object per record to `metrics.jsonl` and mirrors scalars to TensorBoard
    event files in the same directory."""

    def __init__(self, directory: str | Path):
        SummaryWriter = _summary_writer_class()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "metrics.jsonl"
        self._jsonl = self.path.open("a")
        self._tensorboard = SummaryWriter(str(self.directory / "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        record = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for name, value in metrics.items():
            self._tensorboard.add_scalar(f"{split}/{name}", float(value), int(step))

    def close(self) -> None:
        self._jsonl.close()
        self._tensorboard.close()


def read_metrics(path: str | Path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_losses(metrics_path: str | Path, png_path: str | Path) -> Path:
    """Train and eval loss against step, from a metrics.jsonl, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for split, style in (("train", "-"), ("eval", "o-")):
        points = [(r["step"], r["loss"]) for r in records if r["split"] == split and "loss" in r]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=f"{split} loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return Path(png_path)
