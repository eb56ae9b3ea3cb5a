"""The training loop: mesh, sharded initialisation, restore, steps, evaluation, checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from polyformer import hub, lora
from polyformer.models import FAMILIES
from polyformer.models.layers import unrolled_layers
from polyformer.training import checkpoint, metrics, objectives, sharding
from polyformer.training.config import ATTENTION, RunConfig
from polyformer.training.data import TrainData
from polyformer.training.optim import make_optimizer, schedule
from polyformer.training.step import TrainState, init_state, make_eval_step, make_train_step


class TrainingDiverged(ValueError):
    """The loss or the gradient stopped being finite: a run config to change (a lower learning
    rate, more warm-up, gradient clipping, float32), so the CLI reports it in one line."""


@contextlib.contextmanager
def sigterm_flag():
    """Yields a function saying whether SIGTERM has arrived since entering; the previous handler
    is back on exit. Off the main thread (where Python cannot install handlers) it never fires,
    nor in a multi-host run, whose SIGTERM handler is JAX's preemption notifier's."""
    received = threading.Event()
    if threading.current_thread() is not threading.main_thread() or jax.process_count() > 1:
        yield received.is_set
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.set())
    try:
        yield received.is_set
    finally:
        signal.signal(signal.SIGTERM, previous)


class BadStepRange(ValueError):
    """A `--profile-steps` range that is not `FIRST:LAST` with 1 <= FIRST <= LAST."""


def parse_step_range(text: str) -> tuple[int, int]:
    """`"A:B"` as the 1-based inclusive step range (A, B)."""
    first, sep, last = text.partition(":")
    try:
        if not sep:
            raise ValueError
        steps = int(first), int(last)
    except ValueError:
        raise BadStepRange(f"step range {text!r}: expected FIRST:LAST, e.g. 5:8") from None
    if not 1 <= steps[0] <= steps[1]:
        raise BadStepRange(f"step range {text!r}: expected 1 <= FIRST <= LAST, e.g. 5:8")
    return steps


@dataclasses.dataclass
class TrainResult:
    """What a finished run left behind."""

    out_dir: Path
    final_step: int
    train_loss: float
    eval_loss: float | None
    metrics_path: Path
    plot_path: Path | None


def model_config(config: RunConfig, overrides: dict[str, Any]) -> Any:
    """The run's model config: what the data decides (`overrides`: vocabulary, labels), the
    attention kernel and the precision."""
    compute = jnp.bfloat16 if config.precision == "bfloat16" else jnp.float32
    fields = {f.name for f in dataclasses.fields(config.model)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"the data sets {unknown}, which {type(config.model).__name__} does not have"
        )
    return dataclasses.replace(
        config.model,
        **overrides,
        attention=ATTENTION[config.attention],
        dtype=compute,
        param_dtype=jnp.float32,
    )


def build_model(
    config: RunConfig, model_config: Any, start: nnx.Module | None = None
) -> nnx.Module:
    """The run's model: `start` (a model `config.model_init` loaded), else `model_config` (from
    `model_config()`) initialised from `config.seed`; with `config.lora`, LoRA adapters on it,
    initialised from a seed of their own."""
    model = start
    if model is None:
        model = FAMILIES[model_config.model_type].build(model_config, rngs=nnx.Rngs(config.seed))
    if config.lora is not None:
        lora.apply(model, config.lora, rngs=nnx.Rngs(config.seed + 2))
    return model


def trainable(config: RunConfig) -> nnx.filterlib.Filter:
    """The variables a run trains: every parameter, or with `config.lora` the adapters alone."""
    return nnx.Param if config.lora is None else lora.LoRAParam


def _path_key(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def non_embedding_params(params: nnx.State) -> int:
    """Parameters less the lookup tables (`nnx.Embed`'s `embedding`), which cost no FLOPs, as
    Kaplan et al. count N."""
    total = sum(x.size for x in jax.tree.leaves(params))
    tables = sum(
        leaf.size
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        if "embedding" in _path_key(path)[-2:]
    )
    return total - tables


def flops_per_example(
    graphdef: nnx.GraphDef,
    params: Any,
    loss_fn,
    example: dict,
    trainable: nnx.filterlib.Filter = nnx.Param,
) -> float:
    """FLOPs of the forward and backward pass of one example, as XLA counts them in the lowered
    (not compiled) gradient computation: any model, whatever its towers, convolutions or
    attention kernel, and recomputation under `jax.checkpoint` included. 0 where the backend
    has no cost model (the MFU then reads 0).

    `params` may be abstract; `example`: a batch whose first row is taken; `trainable`: the
    variables differentiated, as the train step does (a LoRA run's adapters).
    """

    def loss(params, frozen, batch):
        model = nnx.merge(graphdef, params, frozen, copy=True)  # as the train step does
        return loss_fn(model, batch, nnx.Rngs(dropout=jax.random.key(0)))[0]

    one = {
        k: jax.ShapeDtypeStruct((1, *np.shape(v)[1:]), np.asarray(v).dtype)
        for k, v in example.items()
    }
    trained, frozen = nnx.split_state(params, trainable, ...)
    with unrolled_layers():  # a scan's body would count once
        cost = jax.jit(jax.grad(loss)).lower(trained, frozen, one).cost_analysis()
    return float((cost or {}).get("flops", 0.0))


def check_writable(out_dir: Path) -> None:
    """Creates `out_dir` and refuses one this process cannot write, before anything compiles:
    the checkpointer would otherwise fail with an OSError traceback after the first steps."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as e:
        raise ValueError(
            f"out_dir={str(out_dir)!r} cannot be written ({e.strerror or e}); give a directory "
            "this process may create files in (--set out_dir=...)"
        ) from e


class Trainer:
    """Builds everything a run needs from a RunConfig and its data, then `run()`s it.

    `data` is what `config.data.load()` returns: a `polyformer.training.data.TrainData`.
    The model is the class `polyformer.models.FAMILIES[config.model.model_type]` builds, the
    objective `config.objective_name`. With `config.lora` the model gets LoRA adapters
    (`lora.apply`) and only they train: the optimizer holds state for them alone, the base
    weights get no gradient and pass through each step unchanged in `TrainState.params`.
    """

    def __init__(self, config: RunConfig, data: TrainData):
        check_writable(Path(config.out_dir))
        if not isinstance(data, TrainData):
            raise ValueError(
                f"data must be a TrainData (train_iterator, eval_batches, model_overrides, "
                f"tokens_per_example, save), got {type(data).__name__}"
            )
        self.config = config
        self.data = data
        self.out_dir = Path(config.out_dir)
        self.mesh = sharding.make_mesh(config.mesh)
        self.rules = config.mesh.rules
        if config.batch_size % jax.process_count():
            raise ValueError(
                f"batch_size={config.batch_size} does not split over {jax.process_count()} hosts"
            )
        self.model_config = model_config(config, dict(data.model_overrides))
        self.optimizer = make_optimizer(config.optimizer, config.steps)
        self.learning_rate = schedule(config.optimizer, config.steps)
        self.trainable = trainable(config)

        def build():
            return build_model(config, self.model_config)

        abstract_model = nnx.eval_shape(build)
        abstract_model.train()
        self.graphdef = nnx.graphdef(abstract_model)
        abstract_model.eval()
        self.eval_graphdef = nnx.graphdef(abstract_model)
        rng = jax.random.key(config.seed + 1)
        # model_init's start is loaded (and given its adapters) once, outside the traced init.
        loaded = config.model_init and config.model_init.load(self.model_config)
        start = None if loaded is None else build_model(config, self.model_config, loaded)

        def init():
            model = build() if start is None else start
            return init_state(nnx.state(model), self.optimizer, rng, self.trainable)

        abstract_state = jax.eval_shape(init)
        self.state_shardings = sharding.state_shardings(
            abstract_state, self.optimizer, self.mesh, self.rules, self.trainable
        )
        self._init = jax.jit(init, out_shardings=self.state_shardings)
        self.abstract_state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract_state,
            self.state_shardings,
        )
        self.objective = objectives.OBJECTIVES[config.objective_name]
        loss_fn = self.objective
        self.batch_sharding = sharding.batch_sharding(self.mesh, self.rules)
        self.train_step = jax.jit(
            sharding.constrained(
                make_train_step(
                    self.graphdef,
                    loss_fn,
                    self.optimizer,
                    config.optimizer.accumulation_steps,
                    self.trainable,
                ),
                self.mesh,
                self.rules,
            ),
            in_shardings=(self.state_shardings, self.batch_sharding),
            out_shardings=(self.state_shardings, None),
            donate_argnums=0,
        )
        self.eval_step = jax.jit(
            sharding.constrained(
                make_eval_step(self.eval_graphdef, loss_fn), self.mesh, self.rules
            ),
            in_shardings=(self.state_shardings.params, self.batch_sharding),
        )
        self.checkpointer = checkpoint.Checkpointer(
            self.out_dir / "checkpoints",
            keep=config.keep_checkpoints,
            every=config.checkpoint_every,
        )
        self.loss_fn = loss_fn
        self.flops_per_example: float | None = None  # counted on the first training batch

    def global_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return {
            k: jax.make_array_from_process_local_data(self.batch_sharding, v)
            for k, v in local.items()
        }

    def initial_state(self) -> tuple[TrainState, Any]:
        """A fresh state, or the latest checkpoint's; and the matching train iterator."""
        c = self.config
        iterator = self.data.train_iterator(
            c.batch_size // jax.process_count(), c.seed, jax.process_index(), jax.process_count()
        )
        if self.checkpointer.latest_step() is None:
            return self._init(), iterator
        state, data_state = self.checkpointer.restore(self.abstract_state)
        iterator.set_state(data_state)
        return state, iterator

    def evaluate(self, params) -> dict[str, float]:
        c = self.config
        totals: dict[str, float] = {}
        batches = self.data.eval_batches(c.batch_size // jax.process_count(), c.eval_batches)
        for local in batches:
            for k, v in jax.device_get(self.eval_step(params, self.global_batch(local))).items():
                totals[k] = totals.get(k, 0.0) + float(v) / len(batches)
        return totals | self.objective.derived(totals)

    def run(
        self, *, progress: bool = True, profile_steps: tuple[int, int] | None = None
    ) -> TrainResult:
        """Trains to `config.steps`, resuming from the latest checkpoint. On SIGTERM (maintenance
        events, schedulers) it finishes the current step, saves a checkpoint and exits with 0;
        processes of a multi-host run agree on the step through JAX's preemption service.

        profile_steps: (first, last), 1-based and inclusive: a `jax.profiler` trace of those steps
          in `out_dir/profile`, which TensorBoard's profile plugin opens.
        """
        if profile_steps and not 1 <= profile_steps[0] <= profile_steps[1] <= self.config.steps:
            raise BadStepRange(
                f"profile_steps {profile_steps}: expected 1 <= first <= last <= "
                f"{self.config.steps} (the run's steps)"
            )
        with sigterm_flag() as sigterm_received:
            try:
                return self._run(progress, sigterm_received, profile_steps or (0, -1))
            finally:
                if self._tracing:
                    jax.profiler.stop_trace()
                    self._tracing = False

    def preempted(self, step: int, sigterm_received) -> bool:
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return sigterm_received()

    _tracing = False

    def _run(self, progress: bool, sigterm_received, profile_steps: tuple[int, int]) -> TrainResult:
        c = self.config
        state, iterator = self.initial_state()
        start = int(jax.device_get(state.step))
        writer = metrics.MetricsWriter(self.out_dir) if jax.process_index() == 0 else None
        peak, _ = metrics.peak_flops_per_device()
        bar = tqdm(
            total=c.steps, initial=start, unit="step", disable=not progress or jax.process_index()
        )
        train_loss, eval_loss, window_start, window_steps = math.nan, None, time.perf_counter(), 0
        for step in range(start, c.steps):
            if step + 1 == profile_steps[0]:
                jax.profiler.start_trace(str(self.out_dir / "profile"))
                self._tracing = True
            local = next(iterator)
            if self.flops_per_example is None:
                self.flops_per_example = flops_per_example(
                    self.graphdef, self.abstract_state.params, self.loss_fn, local, self.trainable
                )
            state, step_metrics = self.train_step(state, self.global_batch(local))
            step_metrics = jax.device_get(step_metrics)
            if step + 1 == profile_steps[1]:
                jax.profiler.stop_trace()
                self._tracing = False
            if not step_metrics.pop("finite"):
                self.checkpointer.wait()
                last = self.checkpointer.latest_step()
                saved = (
                    f"Last good checkpoint: step {last} in {self.checkpointer.directory}"
                    if last is not None
                    else "No checkpoint was saved before it"
                )
                raise TrainingDiverged(
                    f"loss or gradient not finite at step {step + 1} (loss "
                    f"{step_metrics['loss']}, gradient norm {step_metrics['grad_norm']}); the "
                    f"parameters were not updated. {saved}; lower the learning rate or raise "
                    f"warm-up or clipping (--set optimizer.learning_rate=...)"
                )
            train_loss = float(step_metrics["loss"])
            window_steps += 1
            done = step + 1
            if done % c.log_every == 0 or done == c.steps:
                elapsed = time.perf_counter() - window_start
                examples_per_s = window_steps * c.batch_size / elapsed
                tokens_per_s = examples_per_s * self.data.tokens_per_example
                flops_per_s = examples_per_s * self.flops_per_example
                step_metrics.update(
                    learning_rate=float(self.learning_rate(step)),
                    tokens_per_s=tokens_per_s,
                    mfu=flops_per_s / (peak * jax.device_count()),
                )
                if writer:
                    writer.write(done, "train", step_metrics)
                bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
                window_start, window_steps = time.perf_counter(), 0
            if done % c.eval_every == 0 or done == c.steps:
                eval_metrics = self.evaluate(state.params)
                eval_loss = eval_metrics["loss"]
                if writer:
                    writer.write(done, "eval", eval_metrics)
            preempted = self.preempted(done, sigterm_received)
            self.checkpointer.save(
                done, state, iterator.get_state(), force=done == c.steps or preempted
            )
            bar.update(1)
            if preempted and done < c.steps:
                bar.close()
                self.checkpointer.close()
                if writer:
                    writer.close()
                print(
                    f"SIGTERM: saved the checkpoint of step {done} in "
                    f"{self.checkpointer.directory}; the same command resumes from it",
                    flush=True,
                )
                raise SystemExit(0)
        bar.close()
        self.checkpointer.close()
        self.state = state
        plot = None
        if writer:
            writer.close()
            plot = metrics.plot_losses(writer.path, self.out_dir / "loss.png")
        return TrainResult(
            self.out_dir, c.steps, train_loss, eval_loss, self.out_dir / "metrics.jsonl", plot
        )

    def model(self) -> nnx.Module:
        """The trained model (after `run`), in evaluation mode, gathered onto this host; with
        its LoRA adapters in a LoRA run."""
        # Only the parameters: LoRA dropout's rng streams hold keys, which cannot be gathered
        # (and which evaluation mode never draws from).
        params, rest = nnx.split_state(self.state.params, nnx.Param, ...)
        params = multihost_utils.process_allgather(params, tiled=True)
        return nnx.merge(self.eval_graphdef, params, rest)


ADAPTER_DIR = "adapter"


def export(trainer: Trainer, directory: str | Path) -> Path:
    """The trained model with its tokenizer or processor files as a Hugging Face checkpoint
    directory, which polyformer's pipelines, `pf.from_pretrained` and transformers all read.

    A LoRA run's checkpoint is the merged model (`lora.merge`), and its adapter goes to
    `directory/adapter` in PEFT's format (`lora.save_adapter`), which `lora.load_adapter` and
    `peft.PeftModel.from_pretrained` read on top of the base model."""
    directory = Path(directory)
    model = trainer.model()
    hub.save_pretrained(model if trainer.config.lora is None else lora.merge(model), directory)
    if trainer.config.lora is not None:
        lora.save_adapter(model, directory / ADAPTER_DIR)
    trainer.data.save(directory)
    return directory
