"""A tiny training run in its own process, for the tests that need fresh JAX runtimes: several
simulated devices, several processes (jax.distributed over CPU collectives), or a SIGKILL.

    python tests/training/worker.py OUT_DIR [--devices N] [--mesh D,F,T] [--steps N]
        [--process-id I --num-processes P --port PORT] [--kill-at-step K]
        [--term-at-step K]
"""

import argparse
import os
import signal
import sys
import time


def dying_data_class():
    import dataclasses

    from polyformer.training import data

    @dataclasses.dataclass(frozen=True)
    class DyingData(data.LMData):
        """Sends its own process `signum` (SIGKILL or SIGTERM) when asked for the batch of step
        `kill_at`; after a SIGTERM, the batch takes 2 s to arrive. A tiny step takes
        milliseconds, and in a run of several processes JAX's preemption service needs a moment
        to tell the others: on a loaded machine they agreed on the run's last step instead."""

        kill_at: int = 0
        signum: int = signal.SIGKILL

        def train_iterator(self, *args):
            inner = super().train_iterator(*args)
            kill_at, signum = self.kill_at, self.signum

            class Dying:
                def __next__(self):
                    if inner.get_state()["next_index"] == kill_at:
                        os.kill(os.getpid(), signum)
                        time.sleep(2)
                    return next(inner)

                get_state, set_state = inner.get_state, inner.set_state

            return Dying()

    return DyingData


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--mesh", default="-1,1,1")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--kill-at-step", type=int, default=None)
    parser.add_argument("--term-at-step", type=int, default=None)
    args = parser.parse_args()
    import jax

    jax.config.update("jax_num_cpu_devices", args.devices)

    if args.num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            f"127.0.0.1:{args.port}", num_processes=args.num_processes, process_id=args.process_id
        )

    import dataclasses

    import numpy as np

    from polyformer.models.gpt import GPT2Config
    from polyformer.training import data, trainer
    from polyformer.training.config import RunConfig
    from polyformer.training.data import TextData
    from polyformer.training.optim import OptimizerConfig
    from polyformer.training.sharding import MeshConfig

    DyingData = dying_data_class()
    tokens = np.random.default_rng(0).integers(0, 256, 40_000).astype(np.uint16)
    corpus = data.LMCorpus(
        data.byte_tokenizer(), None, {"train": tokens, "validation": tokens[:4000]}
    )
    lm = data.LMData(corpus, seq_len=16)
    data_fraction, fsdp, tensor = (int(x) for x in args.mesh.split(","))
    config = RunConfig(
        model=dataclasses.replace(
            GPT2Config.tiny(), n_positions=16, n_embd=32, n_head=4, n_layer=2, resid_pdrop=0.1
        ),
        data=TextData(seq_len=16),
        optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=2, accumulation_steps=2),
        mesh=MeshConfig(data=data_fraction, fsdp=fsdp, tensor=tensor),
        steps=args.steps,
        batch_size=8,
        eval_every=4,
        eval_batches=2,
        checkpoint_every=2,
        log_every=1,
        out_dir=args.out_dir,
    )
    if args.kill_at_step is not None:
        lm = DyingData(lm.corpus, lm.seq_len, kill_at=args.kill_at_step)
    if args.term_at_step is not None:
        lm = DyingData(lm.corpus, lm.seq_len, kill_at=args.term_at_step, signum=signal.SIGTERM)
    job = trainer.Trainer(config, lm)
    job.run(progress=False)
    if jax.process_index() == 0:
        from flax import nnx

        flat = nnx.to_flat_state(nnx.state(job.model(), nnx.Param))
        arrays = {".".join(map(str, path)): np.asarray(v.get_value()) for path, v in flat}
        np.savez(os.path.join(args.out_dir, "params.npz"), **arrays)


if __name__ == "__main__":
    sys.exit(main())
