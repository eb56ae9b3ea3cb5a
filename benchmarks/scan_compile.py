"""Compile time of a run's train step on this host's CPU against depth, with and without
scan_layers.

    python -m benchmarks.scan_compile [CONFIG] [--layers 12 48] [--set KEY=VALUE ...]

For each depth (`model.n_layer`) and scan_layers off and on, compiles the train step the trainer
runs (`training.step.make_train_step`: the run's model, objective, optimizer and precision, state
donated) for one CPU device from abstract inputs, as `polyformer compile` does for a TPU or GPU
target, and prints the seconds in a markdown table with the ratio of each depth's time to the
first depth's. CONFIG defaults to experiments/configs/gpt2_124m.py; `--set batch_size=1` keeps
the step small (compile time does not depend on the batch). Targets: `polyformer compile` gives
the TPU and GPU figures; benchmarks/RESULTS.md "scan_layers: compile time against depth" has both.
"""

from __future__ import annotations

import argparse
import time

import jax
from flax import nnx

from polyformer.training import compile as compiling
from polyformer.training import config as run_config
from polyformer.training import objectives, trainer
from polyformer.training.optim import make_optimizer
from polyformer.training.step import init_state, make_train_step

CONFIG = "experiments/configs/gpt2_124m.py"


def compile_seconds(config: run_config.RunConfig) -> float:
    """Seconds to lower and compile `config`'s train step for the host CPU."""
    data = compiling.data_shapes(config)
    model_config = trainer.model_config(config, dict(data.model_overrides))
    optimizer = make_optimizer(config.optimizer, config.steps)

    def build():
        return trainer.build_model(config, model_config)

    model = nnx.eval_shape(build)
    model.train()
    state = jax.eval_shape(lambda: init_state(nnx.state(build()), optimizer, jax.random.key(0)))
    batch = {
        a.name: jax.ShapeDtypeStruct((config.batch_size, *a.shape), a.dtype) for a in data.arrays
    }
    step = make_train_step(
        nnx.graphdef(model),
        objectives.OBJECTIVES[config.objective_name],
        optimizer,
        config.optimizer.accumulation_steps,
    )
    start = time.perf_counter()
    jax.jit(step, donate_argnums=0).lower(state, batch).compile()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=CONFIG)
    parser.add_argument("--layers", type=int, nargs="+", default=[12, 48])
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    base = run_config.apply_overrides(run_config.load(args.config), args.set)
    print("| n_layer | scan_layers | compile s | x first depth |")
    print("|---|---|---|---|")
    for scan in (False, True):
        first = None
        for n_layer in args.layers:
            config = run_config.apply_overrides(
                base, [f"model.n_layer={n_layer}", f"model.scan_layers={scan}"]
            )
            seconds = compile_seconds(config)
            first = first or seconds
            print(f"| {n_layer} | {scan} | {seconds:.1f} | {seconds / first:.2f} |", flush=True)


if __name__ == "__main__":
    main()
